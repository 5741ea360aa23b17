"""`Choice`: the base of the lab's enums, so that a choice reads as its value."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A value taken from a fixed set (a config key's choices, a run's status). It prints as its
    value: `${data.unseen_exemplars}` in a condition reads `train`, an error message says
    `model.positional=rope`, never `Positional.rope`."""

    def __str__(self) -> str:
        return str(self.value)

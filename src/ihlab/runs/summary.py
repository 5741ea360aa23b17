"""A run's record, `summary.json` (an ensemble job's: `ensemble.json`): how it ended (`Status`)
and what it measured. Written atomically, with NaN and infinities as null so that any JSON reader
accepts it; read by `read_summary` alone."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from ihlab.choices import Choice
from ihlab.runs.atomic import write_text_atomic


class Status(Choice):
    """How a run ended: the `status` of its summary.json."""

    completed = "completed"  # trained to trainer.max_steps
    diverged = "diverged"  # the training loss exploded; no learning time is read off it
    interrupted = "interrupted"  # a signal stopped it at a step boundary; it resumes
    failed = "failed"  # an error; its files stand, a rerun resumes
    config_error = "config_error"  # a bad value, caught before any work

    @property
    def finished(self) -> bool:
        """Whether a rerun has nothing left to do (at the same trainer.max_steps)."""
        return self in (Status.completed, Status.diverged)


# What a reader says of a run directory with no summary.json (still training, or killed before it
# could write one), and of one whose files cannot be read.
UNFINISHED = "unfinished"
UNREADABLE = "unreadable"


class UnreadableRecord(ValueError):
    """A summary.json (or ensemble.json) that is not a JSON object; the message names it."""


def read_summary(path: Path) -> dict[str, Any] | None:
    """The record at `path` as a dict; None if there is none; UnreadableRecord naming the file
    if it cannot be read as a JSON object."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UnreadableRecord(f"{path}: {type(err).__name__}: {err}") from None
    if not isinstance(summary, dict):
        raise UnreadableRecord(f"{path}: not a JSON object.")
    return summary


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """The record at `path`, written atomically, NaN/inf as null and enums as their values."""
    write_text_atomic(path, json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""The Lightning side of a signal: stop training at the first step boundary after one
(`ihlab.runs.signals` records it; this callback acts on it)."""

from __future__ import annotations

from typing import Any

import lightning as L

from ihlab.runs.checkpoints import evaluates_after
from ihlab.runs.signals import GUARD, Interrupted, SignalGuard


class StopOnSignal(L.Callback):
    """Raise `Interrupted` at the first step boundary after a signal: after the step's update,
    or, on an evaluation step, after its evaluation. Resuming from either point redoes nothing
    and skips nothing (tested against uninterrupted runs at every kind of step).

    The guard is installed again at train start because Lightning replaces the SIGTERM handler
    when fit begins; Lightning's own handler would stop mid-evaluation, whose partial state a
    resume cannot redo.
    """

    def __init__(self, eval_every: int, guard: SignalGuard = GUARD) -> None:
        self.eval_every, self.guard = eval_every, guard

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.guard.install()
        self.check(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not evaluates_after(trainer, self.eval_every):
            self.check(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if self.guard.received is not None:
            raise Interrupted(self.guard.received, trainer.global_step)

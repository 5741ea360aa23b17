"""How one process's work on a run ended: the `Outcome`, built once when training stops, and the
one function that writes a run's (or an ensemble job's) record from it.

A run's record (`summary.json`) is its measurements (train/summary.py) plus its outcome: the
status, why it stopped early (`interruption`, `error` or `divergence`), the checkpoint it resumed
from, and the segments: one per process that worked on the run (`from_step`, `to_step`, `status`,
`wall_time_s`), the earlier ones read from the record the previous process left.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ihlab.runs.ownership import RunPlan
from ihlab.runs.summary import Status, write_summary


@dataclass(frozen=True)
class Outcome:
    """The end of one process's work on a run (or an ensemble job).

    `steps`: optimizer steps the run has taken; `start_step`: where this process began (0, or
    the step of the checkpoint it resumed); `stop`: why it stopped early, as the record's keys
    (`interruption`, `error` or `divergence`); `started`, `ended`: `time.perf_counter()` at the
    start and the end of this process's work; `fit_seconds`: the time inside training (NaN if
    training never started).
    """

    status: Status
    steps: int
    start_step: int
    plan: RunPlan | None  # None: no process worked on the run (its config was refused)
    started: float
    fit_seconds: float = math.nan
    stop: Mapping[str, Any] = field(default_factory=dict)
    ended: float = field(default_factory=time.perf_counter)

    @classmethod
    def refused(cls, error: str) -> Outcome:
        """The outcome of a run whose config was refused before any work."""
        now = time.perf_counter()
        return cls(Status.config_error, 0, 0, None, now, stop={"error": error}, ended=now)

    def diverged(self, step: int, divergence: Mapping[str, Any]) -> Outcome:
        """This outcome for an ensemble member that diverged at `step` while the job went on."""
        return dataclasses.replace(
            self, status=Status.diverged, steps=step, stop={"divergence": dict(divergence)}
        )

    @property
    def steps_per_sec(self) -> float:
        return (self.steps - self.start_step) / self.fit_seconds

    def segments(self) -> list[dict[str, Any]]:
        """The earlier segments of a resumed run, then this process's."""
        assert self.plan is not None, "a refused run has no segments"
        segment = {
            "from_step": self.start_step,
            "to_step": self.steps,
            "status": self.status.value,
            "wall_time_s": self.ended - self.started,
        }
        return [*(self.plan.previous or {}).get("segments", []), segment]

    def record(self) -> dict[str, Any]:
        """The record's outcome keys (a refused run's: its status and error alone)."""
        if self.plan is None:
            return {"status": self.status.value, **self.stop}
        segments = self.segments()
        return {
            "status": self.status.value,
            **self.stop,
            "resumed_from": _path(self.plan.checkpoint),
            "segments": segments,
            "wall_time_s": sum(s["wall_time_s"] for s in segments),
        }


def write_record(path: Path, measured: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
    """Write a run's summary.json (or a job's ensemble.json): what the run measured and its
    outcome. Returns the record as written."""
    record = {**measured, **outcome.record()}
    write_summary(path, record)
    return record


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None

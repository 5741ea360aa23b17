"""The run's W&B logger: offline by default, grouped by condition, steps on every x-axis, one W&B
run per run directory (a resume continues it), and the run summary's headline keys.

Every W&B call is made by the W&B writer process beside the training process (wandb_writer.py
says why and how): the training loop hands each call over, in order, and goes on.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger

from ihlab.choices import Choice
from ihlab.runs.atomic import write_text_atomic
from ihlab.runs.files import RunFiles
from ihlab.tracking.wandb_writer import STEP_KEY, writer

AGENT_RUN_ID = "WANDB_RUN_ID"  # set by a sweep agent for the run it starts


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class WandbConfig:
    """`wandb.*`: where a run's W&B run goes (offline by default: no account, no network)."""

    mode: WandbMode = WandbMode.offline
    project: str = "ihlab"
    entity: str | None = None
    job_type: str = "train"
    tags: list[str] = field(default_factory=list)


class WandbRun(Logger):
    """One run directory's W&B run as a Lightning logger, its calls made by the W&B writer.

    `init` holds `wandb.init`'s arguments (the run id among them, so the id is known, and
    written to the run directory, before W&B has started); `saved` is a file saved with the run.
    """

    def __init__(self, init: dict[str, Any], saved: Path | None = None) -> None:
        super().__init__()
        self.init, self.key = init, f"{init['id']}@{init['dir']}"
        self.writer = writer()
        self.writer.send(("init", self.key, init, str(saved) if saved is not None else None))

    def wait_started(self) -> None:
        """Wait until W&B has started the run (RuntimeError if it could not)."""
        self.writer.wait(self.writer.started, self.key)

    @property
    def name(self) -> str:
        return "wandb"

    @property
    def version(self) -> str:
        return str(self.init["id"])

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is the run's config from the start (`init`)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row: dict[str, float | int] = {k: float(v) for k, v in metrics.items()}
        if step is not None:
            row[STEP_KEY] = step
        self.writer.send(("log", self.key, row))

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str) -> None:
        """An RGB array (height, width, 3) as a W&B image at `step` (encoded by the writer)."""
        self.writer.send(("image", self.key, key, image, step, caption))

    def finish(self, summary: Mapping[str, Any] | None = None, exit_code: int = 0) -> None:
        """Add `summary` to the run's summary, end the run, and wait until W&B has made all of
        its calls; RuntimeError with the first W&B error of the run, if there was one."""
        self.writer.finish(self.key, dict(summary or {}), exit_code)


def previous_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run an earlier segment of this run logged to, if any. A run directory
    that was replaced or started over has its wandb/ folder moved aside, so it starts a new one."""
    path = RunFiles(run_dir).wandb_run_id
    return path.read_text().strip() or None if path.is_file() else None


def new_run_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits, like wandb's own."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def make_wandb_logger(
    w: WandbConfig,
    run_dir: Path,
    resolved: dict[str, Any],
    name: str,
    group: str,
    sweep_run: bool = True,
) -> WandbRun:
    """The run's W&B logger, every metric on the optimizer-step axis. A run resumed in its own
    directory continues its W&B run (same id, resume="allow"), so its curves stay in one run; a
    fresh one gets a new id, or, if it is the `sweep_run`, a sweep agent's (WANDB_RUN_ID). A
    sweep agent starts one W&B run per command: in an ensemble job it launched, the first member
    is that run, reporting to the sweep, and the other members are runs of their own in the same
    group (they would otherwise all claim the agent's id). `name` and `group` are the run's W&B
    name and group (<experiment>-<condition>-s<seed>, <experiment>/<condition>)."""
    files = RunFiles(run_dir)
    fresh = os.environ.get(AGENT_RUN_ID) if sweep_run else None
    run_id = previous_run_id(run_dir) or fresh or new_run_id()
    files.wandb.mkdir(parents=True, exist_ok=True)
    write_text_atomic(files.wandb_run_id, run_id + "\n")
    init = {
        "name": name,
        "group": group,
        "job_type": w.job_type,
        "project": w.project,
        "entity": w.entity,
        "tags": list(w.tags),
        "dir": str(run_dir),
        "mode": w.mode.value,
        "config": builtins_only(resolved),
        "id": run_id,
        "resume": "allow",
        "reinit": "create_new",  # an ensemble job logs one W&B run per seed, side by side
    }
    return WandbRun(init, files.resolved)


def builtins_only(value: Any) -> Any:
    """`value` with every enum replaced by its value: what reaches the W&B writer must unpickle
    there without importing the lab (an enum would import its module, and with it torch)."""
    if isinstance(value, Mapping):
        return {k: builtins_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [builtins_only(v) for v in value]
    return value.value if isinstance(value, Enum) else value


def wandb_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The W&B run summary's headline keys: status, learning time, phase change, best
    accuracies, final ICL score, speed."""
    phase = summary["phase_change"]
    out = {
        "status": summary["status"],
        "learning_time": summary["learning_time"]["step"],
        "steps_per_sec": summary["steps_per_sec"],
        "phase_change/detected": phase["detected"],
        **{f"phase_change/{k}": phase.get(k) for k in ("onset", "steepest", "end")},
        **{f"best/{k}": v for k, v in summary["best"].items()},
    }
    if "eval/icl_score" in summary["final"]:
        out["final/icl_score"] = summary["final"]["eval/icl_score"]
    return out

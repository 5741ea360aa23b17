"""The run's W&B logger: offline by default, grouped by condition, steps on every x-axis, one W&B
run per run directory (a resume continues it), and the run summary's headline keys."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from ihlab.atomic import write_text_atomic
from ihlab.config import TrainConfig

RUN_ID = Path("wandb") / "ihlab-run-id"  # in the run directory: the id of its W&B run
AGENT_RUN_ID = "WANDB_RUN_ID"  # set by a sweep agent for the run it starts


def previous_run_id(run_dir: Path) -> str | None:
    """The id of the W&B run an earlier segment of this run logged to, if any. A run directory
    that was replaced or started over has its wandb/ folder moved aside, so it starts a new one."""
    path = run_dir / RUN_ID
    return path.read_text().strip() or None if path.is_file() else None


def new_run_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits, like wandb's own."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def make_wandb_logger(
    config: TrainConfig, run_dir: Path, resolved: dict[str, Any], sweep_run: bool = True
) -> Any:
    """A Lightning WandbLogger for the run, with every metric on the optimizer-step axis. A run
    resumed in its own directory continues its W&B run (same id, resume="allow"), so its curves
    stay in one run; a fresh one gets a new id, or, if it is the `sweep_run`, a sweep agent's
    (WANDB_RUN_ID). A sweep agent starts one W&B run per command: in an ensemble job
    it launched, the first member is that run, reporting to the sweep, and the other members are
    runs of their own in the same group (they would otherwise all claim the agent's id)."""
    from lightning.pytorch.loggers import WandbLogger

    w = config.wandb
    fresh = os.environ.get(AGENT_RUN_ID) if sweep_run else new_run_id()
    run_id = previous_run_id(run_dir) or fresh
    logger = WandbLogger(
        name=config.run_name,
        group=config.group,
        job_type=w.job_type,
        project=w.project,
        entity=w.entity,
        tags=list(w.tags),
        save_dir=str(run_dir),
        mode=w.mode.value,
        config=resolved,
        id=run_id,
        resume="allow",
        reinit="create_new",  # an ensemble job logs one W&B run per seed, side by side
    )
    run = logger.experiment
    write_text_atomic(run_dir / RUN_ID, run.id + "\n")
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step")  # every panel's x-axis: steps
    resolved_yaml = run_dir / ".hydra" / "resolved.yaml"
    if resolved_yaml.exists():
        run.save(str(resolved_yaml), base_path=str(resolved_yaml.parent), policy="now")
    return logger


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

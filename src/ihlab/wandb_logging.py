"""The run's W&B logger: offline by default, grouped by condition, steps on every x-axis, and the
run summary's headline keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ihlab.config import TrainConfig


def make_wandb_logger(config: TrainConfig, run_dir: Path, resolved: dict[str, Any]) -> Any:
    """A Lightning WandbLogger for the run, with every metric on the optimizer-step axis."""
    from lightning.pytorch.loggers import WandbLogger

    w = config.wandb
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
    )
    run = logger.experiment
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

"""`ihlab-train`: the Hydra app that trains one run (or one job of a multirun).

    ihlab-train                                # experiment=induction_2l, W&B offline, CPU
    ihlab-train experiment=fewshot_fast seed=3
    ihlab-train -m experiment=smeared_1l,plain_1l seed=0,1,2
    ihlab-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume

The config root is the repository's `conf/` (or the copy packaged with ihlab), whatever the current
directory. Each run writes `.hydra/`, `metrics.csv`, `summary.json`, `checkpoints/` and the W&B run
folder to its Hydra run directory. A run that fails still leaves its log, its metrics so far, a
`summary.json` saying why, and a checkpoint; in a multirun, a failed job does not stop the others.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from ihlab.clamps import build_clamp_set
from ihlab.config import TrainConfig, WandbMode, register_configs, to_train_config
from ihlab.data import FewShotConfig, make_datamodule
from ihlab.dynamics import detect_phase_change, learning_time, per_token_loss_pca
from ihlab.errors import ConfigError
from ihlab.module import LabModule
from ihlab.outputs import MetricsCSV, StepTable, read_metrics, read_step_table, write_summary
from ihlab.seeding import derive_seed

log = logging.getLogger("ihlab.train")


def config_dir() -> str:
    """conf/ packaged inside ihlab (wheel installs) or at the repository root (source checkouts)."""
    packaged = Path(__file__).resolve().parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


class CheckpointOnException(Callback):
    """Save the state at the moment training fails, beside the periodic and last checkpoints.

    (Lightning's OnExceptionCheckpoint would also make every later `fit` resume from "last".)
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, err: BaseException
    ) -> None:
        trainer.save_checkpoint(self.path)


def build_trainer(config: TrainConfig, run_dir: Path, loggers: list[Any]) -> L.Trainer:
    t = config.trainer
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step_{step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=t.checkpoint_every,
            save_top_k=-1,
            save_last=True,
        ),
        CheckpointOnException(run_dir / "checkpoints" / "on_exception.ckpt"),
    ]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=t.progress_refresh))
    return L.Trainer(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,
        val_check_interval=t.eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every,
        gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        logger=loggers,
        default_root_dir=run_dir,
    )


def make_wandb_logger(config: TrainConfig, run_dir: Path, resolved: dict[str, Any]) -> Any:
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


PCA_EXAMPLES = 256


def run_tables(config: TrainConfig, run_dir: Path, n_ctx: int) -> dict[str, StepTable]:
    """The per-evaluation vector tables of a run: per-example losses (for the loss PCA) and, for
    token data, loss by context position."""
    n_examples = min(PCA_EXAMPLES, config.data.eval_size)
    tables = {
        "per_token_loss": StepTable(
            run_dir / "per_token_loss.csv", [f"ex{i}" for i in range(n_examples)]
        )
    }
    if not isinstance(config.data, FewShotConfig):
        names = [f"pos{i}" for i in range(n_ctx - 1)]
        tables["loss_by_position"] = StepTable(run_dir / "loss_by_position.csv", names)
    return tables


def write_loss_pca(run_dir: Path) -> dict[str, Any] | None:
    """loss_pca.csv (step, pc1, pc2) from per_token_loss.csv; None with fewer than 3 evaluations."""
    path = run_dir / "per_token_loss.csv"
    if not path.exists():
        return None
    steps, _, losses = read_step_table(path)
    if len(steps) < 3:
        return None
    coords, explained = per_token_loss_pca(losses)
    with (run_dir / "loss_pca.csv").open("w") as f:
        f.write("step,pc1,pc2\n")
        for step, (pc1, pc2) in zip(steps, coords, strict=True):
            f.write(f"{step},{pc1},{pc2}\n")
    return {"file": "loss_pca.csv", "explained_variance": explained.tolist()}


def checkpoint_step(path: str) -> int:
    """The optimizer step a Lightning checkpoint was saved at."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def summarize(config: TrainConfig, run_dir: Path, steps: int, seconds: float) -> dict[str, Any]:
    """Final, best and learning-time metrics read back from metrics.csv."""
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    final: dict[str, float] = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if not k.startswith("heads/")})
    best = {k: max(r[k] for r in rows if k in r) for k in final if k.endswith("/acc")}
    if isinstance(config.data, FewShotConfig):
        metric, threshold = "eval/train/loss", 0.4 * math.log(2)
    else:
        metric, threshold = "eval/loss_repeat", 0.1 * math.log(config.data.vocab_size)
    curve = [(int(r["step"]), r[metric]) for r in rows if metric in r]
    return {
        "name": config.name,
        "condition": config.condition,
        "seed": config.seed,
        "run_dir": str(run_dir),
        "steps": steps,
        "sequences": steps * config.data.batch_size,
        "wall_time_s": seconds,
        "final": final,
        "best": best,
        "learning_time": {
            "metric": metric,
            "threshold": threshold,
            "step": learning_time([s for s, _ in curve], [v for _, v in curve], threshold),
        },
        "phase_change": {
            "metric": metric,
            **detect_phase_change([s for s, _ in curve], [v for _, v in curve]).to_dict(),
        },
        "loss_pca": write_loss_pca(run_dir),
    }


def train(config: TrainConfig, run_dir: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """Train one run into `run_dir` and return its summary (also written to summary.json)."""
    started = time.perf_counter()
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = make_datamodule(config.data, config.seed)
    clamps = build_clamp_set(config.clamps, config.model, datamodule.io)
    tables = run_tables(config, run_dir, datamodule.io.n_ctx)
    torch.manual_seed(derive_seed(config.seed, "init"))
    icl = (config.trainer.icl_early, config.trainer.icl_late)
    module = LabModule(
        config.model,
        config.optim,
        datamodule.io,
        eval_splits=datamodule.eval_splits,
        max_steps=config.trainer.max_steps,
        batch_size=config.data.batch_size,
        score_every=config.trainer.score_every,
        log_every=config.trainer.log_every,
        icl_positions=None if None in icl else icl,
        clamps=clamps,
        eval_unclamped=config.trainer.eval_unclamped,
        tables=tables,
        pca_examples=len(tables["per_token_loss"].names),
    )
    csv_logger = MetricsCSV(run_dir / "metrics.csv", config.data.batch_size)
    start_step = 0
    if config.ckpt_path is not None:
        start_step = checkpoint_step(config.ckpt_path)
        csv_logger.truncate_after(start_step)
        for table in tables.values():
            table.truncate_after(start_step)
    loggers: list[Any] = [csv_logger]
    if config.wandb.mode != WandbMode.disabled:
        loggers.append(make_wandb_logger(config, run_dir, resolved))
    trainer = build_trainer(config, run_dir, loggers)
    fit_started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=config.ckpt_path)
    finally:
        csv_logger.save()
        for table in tables.values():
            table.save()
    fit_seconds = time.perf_counter() - fit_started
    summary = summarize(config, run_dir, trainer.global_step, time.perf_counter() - started)
    summary.update(
        status="completed",
        resumed_from=config.ckpt_path,
        steps_per_sec=(trainer.global_step - start_step) / fit_seconds,
    )
    write_summary(run_dir / "summary.json", summary)
    for logger in loggers[1:]:
        logger.experiment.summary.update(wandb_summary(summary))
        logger.experiment.finish()
    return summary


def wandb_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The W&B run summary's headline keys: learning time, phase change, best accuracies, final ICL
    score, speed."""
    phase = summary["phase_change"]
    out = {
        "learning_time": summary["learning_time"]["step"],
        "steps_per_sec": summary["steps_per_sec"],
        "phase_change/detected": phase["detected"],
        **{f"phase_change/{k}": phase[k] for k in ("onset", "steepest", "end")},
        **{f"best/{k}": v for k, v in summary["best"].items()},
    }
    if "eval/icl_score" in summary["final"]:
        out["final/icl_score"] = summary["final"]["eval/icl_score"]
    return out


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """Validate, train, and record failures; in a multirun a failure is logged, not raised."""
    try:
        config = to_train_config(cfg)
    except ConfigError as err:
        log.error("config error: %s", err)
        write_summary(run_dir / "summary.json", {"status": "config_error", "error": str(err)})
        if multirun:
            return None
        raise SystemExit(f"ihlab-train: config error: {err}") from None
    try:
        return train(config, run_dir, OmegaConf.to_container(cfg, resolve=True))
    except Exception as err:
        log.exception("run failed")
        write_summary(
            run_dir / "summary.json",
            {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "name": config.name,
                "condition": config.condition,
                "seed": config.seed,
                "run_dir": str(run_dir),
            },
        )
        if multirun:
            return None
        raise


register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    hydra_cfg = HydraConfig.get()
    return run_job(
        cfg, Path(hydra_cfg.runtime.output_dir), multirun=hydra_cfg.mode == RunMode.MULTIRUN
    )


if __name__ == "__main__":
    main()

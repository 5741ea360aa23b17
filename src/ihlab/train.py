"""`ihlab-train`: the Hydra app that trains one run (or one job of a multirun).

    ihlab-train                                # experiment=induction_2l, W&B offline, CPU
    ihlab-train experiment=fewshot_fast seed=3
    ihlab-train -m experiment=smeared_1l,plain_1l seed=0,1,2
    ihlab-train ckpt_path=outputs/.../checkpoints/step_000500.ckpt   # resume, in that run's dir

The config root is the repository's `conf/` (or the copy packaged with ihlab), whatever the current
directory. Each run writes `.hydra/`, `train.log`, `metrics.csv`, `summary.json`, `checkpoints/` and
the W&B run folder to its run directory, which belongs to that run alone (rundir.py): a start in a
directory holding another run is refused, one holding this same run resumes or skips it.

Every run ends with a `summary.json` whose `status` says how: `completed`, `diverged` (the training
loss exploded; no learning time or phase change is read off it), `interrupted` (SIGTERM/SIGINT or
preemption: a checkpoint was saved, the process exits as killed), `failed` (an error; the run keeps
its log, metrics and checkpoints) or `config_error`. In a multirun a failed job does not stop the
others; an interrupted one stops the multirun, and rerunning it with the same `hydra.sweep.dir`
skips the finished jobs and resumes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import RunningStage
from omegaconf import DictConfig, OmegaConf

from ihlab.atomic import write_text_atomic
from ihlab.checkpoints import (
    FAILURE_CHECKPOINT,
    AtomicCheckpointIO,
    CheckpointError,
    PeriodicCheckpoint,
    checkpoint_step,
    latest_checkpoint,
)
from ihlab.clamps import build_clamp_set
from ihlab.confdir import config_dir
from ihlab.config import TrainConfig, WandbMode, register_configs, to_train_config
from ihlab.data import LearningTime, Task, make_datamodule
from ihlab.dynamics import detect_phase_change, learning_time, per_token_loss_pca
from ihlab.errors import ConfigError
from ihlab.interrupts import GUARD, Interrupted, StopOnSignal, exit_as_signalled
from ihlab.members import MemberData
from ihlab.module import Diverged, LabModule, Member
from ihlab.outputs import MetricsCSV, StepTable, read_metrics, read_step_table, write_summary
from ihlab.rundir import JOB_RECORD, SUMMARY, RunDirError, RunLock, RunPlan, contents, plan_run
from ihlab.wandb_logging import WandbRun, make_wandb_logger, wandb_summary

log = logging.getLogger("ihlab.train")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class CheckpointOnStop(Callback):
    """Save the state when training stops early: `interrupted.ckpt` on a signal (always at a step
    boundary, see StopOnSignal), `on_exception.ckpt` on an error. Nothing on divergence (those
    weights are broken) or on an error during an evaluation (a resume cannot redo half an
    evaluation: the last periodic checkpoint stays the resume point).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, err: BaseException
    ) -> None:
        if isinstance(err, Interrupted):
            trainer.save_checkpoint(self.folder / "interrupted.ckpt")
        elif not isinstance(err, Diverged) and trainer.state.stage != RunningStage.VALIDATING:
            trainer.save_checkpoint(self.folder / FAILURE_CHECKPOINT)


def build_trainer(config: TrainConfig, run_dir: Path) -> L.Trainer:
    """The Lightning trainer of a job (its members log through their own loggers)."""
    t = config.trainer
    callbacks: list[Any] = [
        StopOnSignal(t.eval_every),
        PeriodicCheckpoint(run_dir / "checkpoints", t.checkpoint_every, t.eval_every),
        CheckpointOnStop(run_dir / "checkpoints"),
    ]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=t.progress_refresh))
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # preemption is submitit's job (requeue + resume=auto)
        plugins.append(SLURMEnvironment(auto_requeue=False))
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
        enable_checkpointing=False,  # PeriodicCheckpoint saves them
        callbacks=callbacks,
        plugins=plugins,
        logger=False,
        default_root_dir=run_dir,
    )


def run_tables(task: Task, run_dir: Path) -> dict[str, StepTable]:
    """The run's per-evaluation vector tables (the task says which: per-example losses for the
    loss PCA, loss by context position for token data, ...)."""
    return {
        name: StepTable(run_dir / f"{name}.csv", cols)
        for name, cols in task.table_columns().items()
    }


def write_loss_pca(run_dir: Path) -> dict[str, Any] | None:
    """loss_pca.csv (step, pc1, pc2) from the finite rows of per_token_loss.csv; None with fewer
    than 3 of them."""
    path = run_dir / "per_token_loss.csv"
    if not path.exists():
        return None
    steps, _, losses = read_step_table(path)
    finite = np.isfinite(losses).all(axis=1)
    steps, losses = steps[finite], losses[finite]
    if len(steps) < 3:
        return None
    coords, explained = per_token_loss_pca(losses)
    lines = ["step,pc1,pc2"] + [f"{s},{a},{b}" for s, (a, b) in zip(steps, coords, strict=True)]
    write_text_atomic(run_dir / "loss_pca.csv", "\n".join(lines) + "\n")
    return {"file": "loss_pca.csv", "explained_variance": explained.tolist()}


def summarize(
    config: TrainConfig,
    run_dir: Path,
    steps: int,
    learning: LearningTime | None,
    status: str = "completed",
) -> dict[str, Any]:
    """Final, best and learning-time metrics read back from metrics.csv (the whole run's rows).
    A diverged run gets no learning time and no phase change: its curve is broken; neither does
    a run that failed before its task existed (`learning` None)."""
    rows = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    final: dict[str, float] = {}
    for row in rows:
        final.update({k: v for k, v in row.items() if not k.startswith("heads/")})
    best = {
        k: max((r[k] for r in rows if k in r and math.isfinite(r[k])), default=math.nan)
        for k in final
        if k.endswith("/acc")
    }
    metric, threshold = (learning.metric, learning.threshold) if learning else (None, None)
    curve = [(int(r["step"]), r[metric]) for r in rows if metric in r]
    steps_, values = [s for s, _ in curve], [v for _, v in curve]
    if status == "diverged" or learning is None:
        learned = None
        why = "the run diverged" if learning else "the run failed before training"
        phase = {"detected": False, "method": "peak-slope", "reason": why}
    else:
        learned = learning_time(steps_, values, learning.threshold)
        phase = detect_phase_change(steps_, values, smooth_frac=learning.smooth_frac).to_dict()
    return {
        "name": config.name,
        "condition": config.condition,
        "seed": config.seed,
        "run_dir": str(run_dir),
        "steps": steps,
        "sequences": steps * config.data.batch_size,
        "final": final,
        "best": best,
        "learning_time": {"metric": metric, "threshold": threshold, "step": learned},
        "phase_change": {"metric": metric, **phase},
        "loss_pca": write_loss_pca(run_dir),
    }


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Send this process's log records (Lightning's too) to `<run dir>/train.log` meanwhile."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(), logging.getLogger("lightning.pytorch")]
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def quarantine_checkpoints(folder: Path, from_step: int) -> list[str]:
    """Move the checkpoints saved at or after `from_step` (a diverged run's broken weights) to
    `folder/diverged/`, so that no resume picks them; returns their new paths."""
    moved = []
    for path in sorted(folder.glob("*.ckpt")):
        if checkpoint_step(path) >= from_step:
            target = folder / "diverged" / path.name
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(path), str(target))
            moved.append(str(target))
    return moved


def train(
    config: TrainConfig,
    run_dir: Path,
    resolved: dict[str, Any],
    hydra_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train one run into `run_dir` and return its summary (also written to summary.json).

    The directory is claimed first (rundir.py): locked, and checked to be empty or to hold this
    same run, which is then resumed or, if finished, returned as it is. `hydra_files` (name ->
    YAML) are written to `.hydra/` when the run starts fresh. Raises RunDirError if the run
    cannot start there, Interrupted after a signal (its summary written), or the error of a
    failed run (its summary written); a diverged run returns its summary.
    """
    run_dir = Path(run_dir)
    runs = member_runs(config, run_dir, resolved)
    with RunLock(run_dir), GUARD.deferring():
        plan = plan_run(
            run_dir,
            resolved,
            resume=config.resume.value,
            replace=config.replace,
            ckpt_path=config.ckpt_path,
            max_steps=config.trainer.max_steps,
            record=JOB_RECORD if config.seeds else SUMMARY,
            members=[str(r.run_dir.relative_to(run_dir)) for r in runs],
        )
        if plan.done is not None:
            log.info(
                "%s already holds this run, %s at step %s: nothing to do (replace=true to start "
                "over).",
                run_dir,
                plan.done["status"],
                plan.done["steps"],
            )
            return plan.done
        with run_log(run_dir):
            return _train(config, run_dir, resolved, runs, plan, hydra_files or {})


@dataclass
class MemberRun:
    """Where one seed of a job writes: for a single run the job's own directory, for an
    ensemble one directory per seed inside the job's, each with the single run's config."""

    seed: int
    config: TrainConfig
    run_dir: Path
    resolved: dict[str, Any]


def member_runs(config: TrainConfig, run_dir: Path, resolved: dict[str, Any]) -> list[MemberRun]:
    if not config.seeds:
        return [MemberRun(config.seed, config, run_dir, resolved)]
    return [
        MemberRun(
            seed,
            dataclasses.replace(config, seed=seed, seeds=None),
            run_dir / f"{config.condition}_s{seed}",
            {**resolved, "seed": seed, "seeds": None},
        )
        for seed in config.seeds
    ]


def _train(
    config: TrainConfig,
    run_dir: Path,
    resolved: dict[str, Any],
    runs: list[MemberRun],
    plan: RunPlan,
    hydra_files: Mapping[str, str],
) -> dict[str, Any]:
    started = time.perf_counter()
    if plan.replaced is not None:
        log.info("moved what %s held to %s", run_dir, plan.replaced)
    if plan.checkpoint is None:
        for name, text in hydra_files.items():
            write_text_atomic(run_dir / ".hydra" / name, text)
    write_text_atomic(run_dir / ".hydra" / "resolved.yaml", OmegaConf.to_yaml(resolved))
    ensemble = len(runs) > 1
    start_step = checkpoint_step(plan.checkpoint) if plan.checkpoint is not None else 0
    status, stop, error = "completed", {}, None
    trainer: L.Trainer | None = None
    members: list[Member] = []
    fit_seconds = math.nan
    try:
        for run in runs:
            if ensemble:
                write_text_atomic(
                    run.run_dir / ".hydra" / "resolved.yaml", OmegaConf.to_yaml(run.resolved)
                )
            sweep_run = run is runs[0]  # a sweep agent's run id goes to the first member
            members.append(make_member(run, plan, start_step, ensemble, sweep_run))
        what = f"{len(runs)} seeds of " if ensemble else ""
        log.info(
            "%s %s%s in %s",
            "resuming" if start_step else "starting",
            what,
            config.run_name,
            run_dir,
        )
        module = build_module(config, members)
        trainer = build_trainer(config, run_dir)
        for member in members:  # W&B starts meanwhile; training waits for it, not beside it
            for logger in member.loggers:
                if isinstance(logger, WandbRun):
                    logger.wait_started()
        fit_started = time.perf_counter()
        ckpt = str(plan.checkpoint) if plan.checkpoint is not None else None
        data = MemberData([m.task for m in members])
        trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
        fit_seconds = time.perf_counter() - fit_started
    except Diverged as err:  # every member diverged
        status = "diverged"
        log.error("diverged: %s", err)
    except Interrupted as err:
        status, error = "interrupted", err
        stop = {"interruption": {"signal": signal.Signals(err.signum).name, "step": err.step}}
    except Exception as err:
        status, error = "failed", err
        stop = {"error": f"{type(err).__name__}: {err}"}
        log.exception("run failed")
    finally:
        for member in members:
            for logger in member.loggers[:1]:
                logger.save()
            for table in member.tables.values():
                table.save()
    step = trainer.global_step if trainer is not None else start_step
    summaries = []
    for index, run in enumerate(runs):
        member = members[index] if index < len(members) else None
        summaries.append(
            finish_member(
                run,
                member,
                status,
                stop,
                plan,
                step,
                start_step,
                started,
                fit_seconds,
                config.seeds,
            )
        )
    result = summaries[0]
    if ensemble:
        result = job_record(
            config, run_dir, summaries, status, stop, plan, step, start_step, started
        )
    if error is not None:
        raise error
    return result


def with_segment(
    plan: RunPlan, start_step: int, step: int, status: str, started: float
) -> list[dict[str, Any]]:
    """The record's segments: the earlier ones of a resumed run, then this process's."""
    segment = {
        "from_step": start_step,
        "to_step": step,
        "status": status,
        "wall_time_s": time.perf_counter() - started,
    }
    return [*(plan.previous or {}).get("segments", []), segment]


def job_record(
    config: TrainConfig,
    run_dir: Path,
    summaries: list[dict[str, Any]],
    status: str,
    stop: dict[str, Any],
    plan: RunPlan,
    step: int,
    start_step: int,
    started: float,
) -> dict[str, Any]:
    """An ensemble job's own record, `ensemble.json` (not summary.json: the job directory is not
    a run, so ihlab-compare looks inside it for its members' run directories)."""
    segments = with_segment(plan, start_step, step, status, started)
    record = {
        "name": config.name,
        "condition": config.condition,
        "seeds": config.seeds,
        "status": status,
        **stop,
        "steps": step,
        "members": [
            {"seed": s["seed"], "run_dir": s["run_dir"], "status": s["status"]} for s in summaries
        ],
        "resumed_from": str(plan.checkpoint) if plan.checkpoint is not None else None,
        "segments": segments,
        "wall_time_s": sum(seg["wall_time_s"] for seg in segments),
    }
    write_summary(run_dir / JOB_RECORD, record)
    return record


def make_member(
    run: MemberRun, plan: RunPlan, start_step: int, ensemble: bool, sweep_run: bool
) -> Member:
    """A seed's task, loggers and tables; on a resume its rows after the checkpoint are dropped
    (they are redone). `sweep_run`: this member's W&B run may be a sweep agent's."""
    cfg = run.config
    task = make_datamodule(cfg.data, run.seed)
    tables = run_tables(task, run.run_dir)
    csv_logger = MetricsCSV(run.run_dir / "metrics.csv", cfg.data.batch_size)
    if plan.checkpoint is not None:
        for table in [csv_logger, *tables.values()]:
            table.truncate_after(start_step)
    loggers: list[Any] = [csv_logger]
    if cfg.wandb.mode != WandbMode.disabled:
        loggers.append(make_wandb_logger(cfg, run.run_dir, run.resolved, sweep_run))
    checkpoints = run.run_dir / "checkpoints" if ensemble else None
    return Member(run.seed, task, loggers, tables, checkpoints)


def finish_member(
    run: MemberRun,
    member: Member | None,
    status: str,
    stop: dict[str, Any],
    plan: RunPlan,
    step: int,
    start_step: int,
    started: float,
    fit_seconds: float,
    job_seeds: list[int] | None,
) -> dict[str, Any]:
    """A seed's summary.json (its own status if it diverged), and its W&B run closed."""
    ensemble = job_seeds is not None
    diverged = member.diverged if member is not None else None
    if diverged is not None:  # its checkpoints from then on are quarantined
        status, step = "diverged", diverged.step
        stop = {"divergence": divergence_record(run.run_dir / "checkpoints", diverged)}
    learning = member.task.learning_time() if member is not None else None
    summary = finish(
        run.config, run.run_dir, step, learning, status, stop, plan, started, start_step
    )
    summary["steps_per_sec"] = (step - start_step) / fit_seconds
    if ensemble:
        summary["ensemble"] = {"job_dir": str(run.run_dir.parent), "seeds": job_seeds}
    for logger in member.loggers[1:] if member is not None else []:  # W&B
        try:
            logger.finish(wandb_summary(summary), exit_code=0 if status == "completed" else 1)
        except RuntimeError as err:  # the numbers on disk stand; the W&B run is incomplete
            log.error("seed %d: %s", run.seed, err)
            summary["wandb_error"] = str(err)
    write_summary(run.run_dir / "summary.json", summary)
    return summary


def build_module(config: TrainConfig, members: list[Member]) -> LabModule:
    """The seeded module of a job's members: the one way to build it."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    clamps = build_clamp_set(config.clamps, config.model, members[0].task.io)
    return LabModule(config.model, config.optim, config.trainer, members, clamps)


def divergence_record(folder: Path, err: Diverged) -> dict[str, Any]:
    """Where and how a run diverged; its checkpoints from that step on are quarantined."""
    moved = quarantine_checkpoints(folder, err.step)
    good = latest_checkpoint(folder)
    return {
        "step": err.step,
        "loss": err.loss,
        "limit": err.limit,
        "last_good_checkpoint": str(good[0]) if good else None,
        "quarantined": moved,
    }


def finish(
    config: TrainConfig,
    run_dir: Path,
    step: int,
    learning: LearningTime | None,
    status: str,
    stop: dict[str, Any],
    plan: RunPlan,
    started: float,
    start_step: int,
) -> dict[str, Any]:
    """The run's summary, the earlier segments of a resumed run included."""
    summary = summarize(config, run_dir, step, learning, status)
    segments = with_segment(plan, start_step, step, status, started)
    summary.update(
        status=status,
        **stop,
        resumed_from=str(plan.checkpoint) if plan.checkpoint is not None else None,
        history_from=str(plan.history_from) if plan.history_from is not None else None,
        segments=segments,
        wall_time_s=sum(s["wall_time_s"] for s in segments),
    )
    log.info("status %s at step %d", status, step)
    return summary


def hydra_config_files(cfg: DictConfig) -> dict[str, str]:
    """What Hydra would write to `.hydra/` (config, hydra config, overrides), written by `train`
    once the run directory is known to be this run's (conf/train.yaml sets output_subdir null)."""
    if not HydraConfig.initialized():
        return {"config.yaml": OmegaConf.to_yaml(cfg)}
    hydra_cfg = HydraConfig.instance().cfg
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def record_config_error(run_dir: Path, cfg: DictConfig, err: ConfigError) -> None:
    """Leave a `config_error` summary and log line, unless the directory holds a run (or is in
    use): a bad command must not touch another run's files."""
    try:
        with RunLock(run_dir):
            if contents(run_dir):
                return
            for name, text in hydra_config_files(cfg).items():
                write_text_atomic(run_dir / ".hydra" / name, text)
            with run_log(run_dir):
                log.error("config error: %s", err)
            write_summary(run_dir / "summary.json", {"status": "config_error", "error": str(err)})
    except RunDirError:
        return


def resume_hint(run_dir: Path, multirun: bool) -> str:
    """How to continue an interrupted run or study."""
    if multirun:
        sweep = run_dir.parent
        return f"rerun the same command with hydra.sweep.dir={sweep} to resume the study"
    return f"rerun the same command with hydra.run.dir={run_dir} to resume it"


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """Validate and train one run, and turn its outcome into the process's: a failure is raised
    (single run) or logged (multirun); an interruption ends the process as the signal would."""
    GUARD.install()
    try:
        config = to_train_config(cfg)
    except ConfigError as err:
        log.error("config error: %s", err)
        record_config_error(run_dir, cfg, err)
        if multirun:
            return None
        raise SystemExit(f"ihlab-train: config error: {err}") from None
    try:
        summary = train(
            config, run_dir, OmegaConf.to_container(cfg, resolve=True), hydra_config_files(cfg)
        )
    except (RunDirError, CheckpointError) as err:
        if multirun:
            log.error("%s", err)
            return None
        raise SystemExit(f"ihlab-train: {err}") from None
    except Interrupted as err:
        log.error(
            "interrupted by %s at step %s; checkpoint and summary saved in %s; %s.",
            signal.Signals(err.signum).name,
            err.step,
            run_dir,
            resume_hint(run_dir, multirun),
        )
        exit_as_signalled(err.signum)
    except Exception:
        if multirun:
            return None
        raise
    if GUARD.received is not None:  # a signal during the run's final bookkeeping
        exit_as_signalled(GUARD.received)
    if summary["status"] == "diverged" and not multirun:
        divergence = summary["divergence"]
        raise SystemExit(
            f"ihlab-train: the run diverged at step {divergence['step']} (training loss "
            f"{divergence['loss']:.6g}); summary.json says status diverged. Lower optim.lr, or "
            "use warm-up or gradient clipping."
        )
    return summary


register_configs()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    hydra_cfg = HydraConfig.get()
    return run_job(
        cfg, Path(hydra_cfg.runtime.output_dir), multirun=hydra_cfg.mode == RunMode.MULTIRUN
    )


def main() -> None:
    """`ihlab-train`: Hydra's app, with signals between runs (e.g. while a parallel multirun's
    workers train) stopping the workers first and then the process, as killed."""
    GUARD.install()
    try:
        hydra_main()
    except Interrupted as err:
        exit_as_signalled(err.signum)


if __name__ == "__main__":
    main()

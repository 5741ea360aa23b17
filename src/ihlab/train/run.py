"""`train()`: one run, or one seed-ensemble job, into its run directory.

The directory belongs to that run alone (runs/ownership.py): a start in a directory holding
another run is refused, one holding this same run resumes or skips it. The run writes `.hydra/`,
`train.log`, `metrics.csv`, its tables, `summary.json`, `checkpoints/` and its W&B run folder
(runs/files.py names them all); an ensemble job writes `ensemble.json` and one such directory per
seed.

Every run ends with a record whose `status` says how (runs/summary.py): `completed`, `diverged`
(the training loss exploded; no learning time or phase change is read off it), `interrupted` (a
signal: a checkpoint was saved and `Interrupted` is raised), `failed` (an error; the run keeps its
log, metrics and checkpoints, and the error is raised) or `config_error` (ihlab.apps.train).
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

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import RunningStage
from omegaconf import OmegaConf

from ihlab.clamps.engine import build_clamp_set
from ihlab.data import make_family
from ihlab.data.base import DataFamily
from ihlab.errors import ConfigError
from ihlab.model import from_shape_state
from ihlab.runs.atomic import write_text_atomic
from ihlab.runs.checkpoints import (
    AtomicCheckpointIO,
    PeriodicCheckpoint,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
)
from ihlab.runs.files import DIVERGED, FAILURE, INTERRUPTED, JOB_RECORD, SUMMARY, RunFiles
from ihlab.runs.ownership import RunLock, RunPlan, plan_run
from ihlab.runs.signals import GUARD, Interrupted
from ihlab.runs.summary import Status
from ihlab.runs.tables import StepTable
from ihlab.tracking.loggers import MetricsCSV
from ihlab.tracking.wandb_run import WandbMode, WandbRun, make_wandb_logger, wandb_summary
from ihlab.train.interrupts import StopOnSignal
from ihlab.train.members import MemberBatches
from ihlab.train.module import Diverged, LabModule, Member
from ihlab.train.outcome import Outcome, write_record
from ihlab.train.schema import TrainConfig
from ihlab.train.summary import measure

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
            trainer.save_checkpoint(self.folder / INTERRUPTED)
        elif not isinstance(err, Diverged) and trainer.state.stage != RunningStage.VALIDATING:
            trainer.save_checkpoint(self.folder / FAILURE)


def build_trainer(config: TrainConfig, run_dir: Path) -> L.Trainer:
    """The Lightning trainer of a job (its members log through their own loggers)."""
    t = config.trainer
    checkpoints = RunFiles(run_dir).checkpoints
    callbacks: list[Any] = [
        StopOnSignal(t.eval_every),
        PeriodicCheckpoint(checkpoints, t.checkpoint_every, t.eval_every),
        CheckpointOnStop(checkpoints),
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


def run_tables(family: DataFamily, run_dir: Path) -> dict[str, StepTable]:
    """The run's per-evaluation vector tables (the family says which: per-example losses for the
    loss PCA, loss by context position for token data, ...)."""
    files = RunFiles(run_dir)
    return {
        name: StepTable(files.table(name), cols) for name, cols in family.table_columns().items()
    }


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Send this process's log records (Lightning's too) to `<run dir>/train.log` meanwhile."""
    handler = logging.FileHandler(RunFiles(run_dir).train_log)
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
            target = folder / DIVERGED / path.name
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(path), str(target))
            moved.append(str(target))
    return moved


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


@dataclass
class MemberRun:
    """Where one seed of a job writes: for a single run the job's own directory, for an
    ensemble one directory per seed inside the job's, each with the single run's config.
    `job_seeds`: the ensemble's seeds (None for a single run)."""

    seed: int
    config: TrainConfig
    run_dir: Path
    resolved: dict[str, Any]
    job_seeds: list[int] | None = None


def member_runs(config: TrainConfig, run_dir: Path, resolved: dict[str, Any]) -> list[MemberRun]:
    if not config.seeds:
        return [MemberRun(config.seed, config, run_dir, resolved)]
    return [
        MemberRun(
            seed,
            dataclasses.replace(config, seed=seed, seeds=None),
            run_dir / f"{config.condition}_s{seed}",
            {**resolved, "seed": seed, "seeds": None},
            config.seeds,
        )
        for seed in config.seeds
    ]


def train(
    config: TrainConfig,
    run_dir: Path,
    resolved: dict[str, Any],
    hydra_files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train one run into `run_dir` and return its record (also written to summary.json; an
    ensemble job's to ensemble.json).

    The directory is claimed first: locked, and checked to be empty or to hold this same run,
    which is then resumed or, if finished, returned as it is. `hydra_files` (name -> YAML) are
    written to `.hydra/` when the run starts fresh. Raises RunDirError if the run cannot start
    there, Interrupted after a signal (its record written), or the error of a failed run (its
    record written); a diverged run returns its record.
    """
    run_dir = Path(run_dir)
    runs = member_runs(config, run_dir, resolved)
    # the data first: a bad corpus, file or tokenizer fails here, before the directory is touched
    families = [make_family(run.config.data, run.seed) for run in runs]
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
        if plan.checkpoint is not None:
            check_checkpoint_io(plan.checkpoint, families[0])
        with run_log(run_dir):
            return _train(config, run_dir, resolved, runs, families, plan, hydra_files or {})


def check_checkpoint_io(checkpoint: Path, family: DataFamily) -> None:
    """Refuse to resume a model whose input or output sizes differ from what the data now gives
    (a tokenizer file replaced since the run started: its vocabulary no longer fits the
    checkpoint's embedding)."""
    saved = load_checkpoint(checkpoint).get("ihlab_model")
    if saved is None:
        return
    _, io = from_shape_state(saved)
    if io != family.io:
        raise ConfigError(
            f"{checkpoint}: its model was built for {io}, the data now gives {family.io} (a "
            "tokenizer or data file changed since the run started?). Fix: restore the data the "
            "run trained on, or start a new run."
        )


def _train(
    config: TrainConfig,
    run_dir: Path,
    resolved: dict[str, Any],
    runs: list[MemberRun],
    families: list[DataFamily],
    plan: RunPlan,
    hydra_files: Mapping[str, str],
) -> dict[str, Any]:
    started = time.perf_counter()
    files = RunFiles(run_dir)
    if plan.replaced is not None:
        log.info("moved what %s held to %s", run_dir, plan.replaced)
    if plan.checkpoint is None:
        for name, text in hydra_files.items():
            write_text_atomic(files.hydra / name, text)
    write_text_atomic(files.resolved, OmegaConf.to_yaml(resolved))
    ensemble = bool(config.seeds)  # a one-seed ensemble is still a job with one member
    start_step = checkpoint_step(plan.checkpoint) if plan.checkpoint is not None else 0
    status, stop, error = Status.completed, {}, None
    trainer: L.Trainer | None = None
    members: list[Member] = []
    fit_seconds = math.nan
    try:
        for run, family in zip(runs, families, strict=True):
            if ensemble:
                write_text_atomic(RunFiles(run.run_dir).resolved, OmegaConf.to_yaml(run.resolved))
            sweep_run = run is runs[0]  # a sweep agent's run id goes to the first member
            members.append(make_member(run, family, plan, start_step, ensemble, sweep_run))
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
        data = MemberBatches([m.family for m in members])
        trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
        fit_seconds = time.perf_counter() - fit_started
    except Diverged as err:  # every member diverged
        status = Status.diverged
        log.error("diverged: %s", err)
    except Interrupted as err:
        status, error = Status.interrupted, err
        stop = {"interruption": {"signal": signal.Signals(err.signum).name, "step": err.step}}
    except Exception as err:
        status, error = Status.failed, err
        stop = {"error": f"{type(err).__name__}: {err}"}
        log.exception("run failed")
    finally:
        for member in members:
            for logger in member.loggers[:1]:
                logger.save()
            for table in member.tables.values():
                table.save()
    step = trainer.global_step if trainer is not None else start_step
    outcome = Outcome(status, step, start_step, plan, started, fit_seconds, stop)
    records = [
        finish_member(run, members[i] if i < len(members) else None, outcome)
        for i, run in enumerate(runs)
    ]
    result = finish_job(config, run_dir, records, outcome) if ensemble else records[0]
    if error is not None:
        raise error
    return result


def make_member(
    run: MemberRun,
    family: DataFamily,
    plan: RunPlan,
    start_step: int,
    ensemble: bool,
    sweep_run: bool,
) -> Member:
    """A seed's member of the job: its data family, loggers and tables; on a resume its rows
    after the checkpoint are dropped (they are redone). `sweep_run`: this member's W&B run may
    be a sweep agent's."""
    cfg = run.config
    tables = run_tables(family, run.run_dir)
    csv_logger = MetricsCSV(RunFiles(run.run_dir).metrics, cfg.data.batch_size)
    if plan.checkpoint is not None:
        for table in [csv_logger, *tables.values()]:
            table.truncate_after(start_step)
    loggers: list[Any] = [csv_logger]
    if cfg.wandb.mode != WandbMode.disabled:
        loggers.append(
            make_wandb_logger(
                cfg.wandb, run.run_dir, run.resolved, cfg.run_name, cfg.group, sweep_run
            )
        )
    checkpoints = RunFiles(run.run_dir).checkpoints if ensemble else None
    return Member(run.seed, family, loggers, tables, checkpoints)


def finish_member(run: MemberRun, member: Member | None, outcome: Outcome) -> dict[str, Any]:
    """A seed's summary.json (its own outcome if it diverged alone), its W&B run closed."""
    files, cfg = RunFiles(run.run_dir), run.config
    if member is not None and member.diverged is not None:  # its checkpoints are quarantined
        divergence = divergence_record(files.checkpoints, member.diverged)
        outcome = outcome.diverged(member.diverged.step, divergence)
    learning = member.family.learning_time() if member is not None else None
    measured = {
        "name": cfg.name,
        "condition": cfg.condition,
        "seed": cfg.seed,
        "run_dir": str(run.run_dir),
        "steps": outcome.steps,
        "sequences": outcome.steps * cfg.data.batch_size,
        **measure(run.run_dir, outcome.steps, learning, outcome.status),
        "data": member.family.summary() if member is not None else {},
        "eval_set": member.family.eval_fingerprint() if member is not None else None,
        "history_from": str(outcome.plan.history_from) if outcome.plan.history_from else None,
        "steps_per_sec": outcome.steps_per_sec,
    }
    if run.job_seeds is not None:
        measured["ensemble"] = {"job_dir": str(run.run_dir.parent), "seeds": run.job_seeds}
    for logger in member.loggers[1:] if member is not None else []:  # W&B
        exit_code = 0 if outcome.status == Status.completed else 1
        try:
            logger.finish(wandb_summary({**measured, **outcome.record()}), exit_code=exit_code)
        except RuntimeError as err:  # the numbers on disk stand; the W&B run is incomplete
            log.error("seed %d: %s", run.seed, err)
            measured["wandb_error"] = str(err)
    log.info("status %s at step %d", outcome.status.value, outcome.steps)
    return write_record(files.summary, measured, outcome)


def finish_job(
    config: TrainConfig, run_dir: Path, records: list[dict[str, Any]], outcome: Outcome
) -> dict[str, Any]:
    """An ensemble job's own record, `ensemble.json` (not summary.json: the job directory is not
    a run, so ihlab-compare looks inside it for its members' run directories)."""
    measured = {
        "name": config.name,
        "condition": config.condition,
        "seeds": config.seeds,
        "steps": outcome.steps,
        "members": [
            {"seed": r["seed"], "run_dir": r["run_dir"], "status": r["status"]} for r in records
        ],
    }
    return write_record(RunFiles(run_dir).job_record, measured, outcome)


def build_module(config: TrainConfig, members: list[Member]) -> LabModule:
    """The seeded module of a job's members: the one way to build it."""
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    clamps = build_clamp_set(config.clamps, config.model, members[0].family.io)
    return LabModule(config.model, config.optim, config.trainer, members, clamps)

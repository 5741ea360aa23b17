"""`ihlab-train`: the Hydra app that trains one run (or one job of a multirun).

    ihlab-train                                # experiment=induction_2l, W&B offline, CPU
    ihlab-train experiment=fewshot_fast seed=3
    ihlab-train -m experiment=smeared_1l,plain_1l seed=0,1,2
    ihlab-train ckpt_path=outputs/.../checkpoints/step_000500.ckpt   # resume, in that run's dir

The run itself is `ihlab.train.run.train`; this app turns its outcome into the process's. A
single run exits 0 when it completed, 1 when its config was refused (`config_error`, recorded in
its directory), it failed or it diverged, and as killed by the signal that interrupted it. A
multirun validates every sweep point first (multirun.py), runs its jobs (a failed job does not
stop the others; an interrupted one stops the multirun, and rerunning it with the same
`hydra.sweep.dir` skips the finished jobs and resumes the rest), prints a table of each job's
status and exits non-zero when any job did not complete.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ihlab.apps.hydra_entry import hydra_app
from ihlab.apps.multirun import REPORT
from ihlab.errors import ConfigError
from ihlab.runs.atomic import write_text_atomic
from ihlab.runs.checkpoints import CheckpointError
from ihlab.runs.files import RunFiles
from ihlab.runs.ownership import RunDirError, RunLock, contents
from ihlab.runs.signals import GUARD, Interrupted, exit_as_signalled
from ihlab.runs.summary import Status
from ihlab.train.outcome import Outcome, write_record
from ihlab.train.routes import seed_route
from ihlab.train.run import run_log, train
from ihlab.train.schema import SeedRoute, TrainConfig, register_configs, to_train_config

log = logging.getLogger("ihlab.train")


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
    """Leave a `config_error` record and log line, unless the directory holds a run (or is in
    use): a bad command must not touch another run's files."""
    files = RunFiles(run_dir)
    try:
        with RunLock(run_dir):
            if contents(run_dir):
                return
            for name, text in hydra_config_files(cfg).items():
                write_text_atomic(files.hydra / name, text)
            with run_log(run_dir):
                log.error("config error: %s", err)
            write_record(files.summary, {}, Outcome.refused(str(err)))
    except RunDirError:
        return


def resume_hint(run_dir: Path, multirun: bool) -> str:
    """How to continue an interrupted run or study."""
    if multirun:
        sweep = run_dir.parent
        return f"rerun the same command with hydra.sweep.dir={sweep} to resume the study"
    return f"rerun the same command with hydra.run.dir={run_dir} to resume it"


def single_command_route(config: TrainConfig) -> None:
    """A single command (no -m) trains its `seeds` as one batched job: refuse
    `seed_route=separate`, which only a multirun can honour, and say so where batching was
    measured slower than separate runs."""
    if config.seed_route == SeedRoute.separate:
        raise ConfigError(
            f"seed_route=separate trains seeds={config.seeds} as one run per seed, which takes a "
            "multirun. Fix: add -m (ihlab-train -m ...), or drop seed_route."
        )
    route = seed_route(config)
    if not route.batched:
        log.warning(
            "seeds=%s trained as one batched job, as asked, though %s; ihlab-train -m trains "
            "them as one run per seed (docs/speed.md#routes).",
            config.seeds,
            route.reason.split(";")[0],
        )


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> dict[str, Any] | None:
    """Validate and train one run, and turn its outcome into the process's: a failure is raised
    (single run) or logged (multirun); an interruption ends the process as the signal would."""
    GUARD.install()
    try:
        config = to_train_config(cfg)
        if config.seeds and not multirun:
            single_command_route(config)
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
    if summary["status"] == Status.diverged and not multirun:
        divergence = summary["divergence"]
        raise SystemExit(
            f"ihlab-train: the run diverged at step {divergence['step']} (training loss "
            f"{divergence['loss']:.6g}); summary.json says status diverged. Lower optim.lr, or "
            "use warm-up or gradient clipping."
        )
    return summary


register_configs()


@hydra_app("train", "train")
def hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    hydra_cfg = HydraConfig.get()
    return run_job(
        cfg, Path(hydra_cfg.runtime.output_dir), multirun=hydra_cfg.mode == RunMode.MULTIRUN
    )


def main() -> None:
    """`ihlab-train`: Hydra's app, with signals between runs (e.g. while a parallel multirun's
    workers train) stopping the workers first and then the process, as killed; a multirun whose
    jobs did not all complete exits 1."""
    GUARD.install()
    REPORT.reset()
    try:
        hydra_main()
    except Interrupted as err:
        exit_as_signalled(err.signum)
    if REPORT.incomplete:
        raise SystemExit(
            f"ihlab-train: {len(REPORT.incomplete)} of {REPORT.n_jobs} jobs did not complete "
            "(the table above says which and why); ihlab-compare reads the ones that did."
        )


if __name__ == "__main__":
    main()

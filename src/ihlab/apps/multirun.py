"""A multirun that says how it went (`ihlab-train -m ...`).

`SweepCheck` is a Hydra callback (conf/train.yaml registers it) that runs in the process that
launches the jobs:
- before the first job starts, it composes and validates every sweep point's config as its job
  would (Hydra's own expansion of the sweep, the job's own composition), so a typo in point 10
  does not cost the hour of points 0-9: any refused point stops the multirun before it runs
  anything, with a line per refused point naming the key and the fix;
- after the last job, it prints a table of every job's status read from the job's record
  (summary.json, or ensemble.json for a seed-ensemble job), and `REPORT` holds the jobs that did
  not complete, so that `ihlab-train` exits non-zero (apps/train.py): a script that runs
  `ihlab-train -m ... && ihlab-compare ...` stops there. `ihlab-compare` still reads the jobs
  that completed.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ihlab.errors import ConfigError
from ihlab.runs.files import RunFiles
from ihlab.runs.summary import UNFINISHED, UNREADABLE, Status, UnreadableRecord, read_summary
from ihlab.train.schema import to_train_config

NOTE_CHARS = 120  # of an error message in the status table


@dataclass
class Job:
    """One sweep point: its job number, its overrides (`swept`: those of the swept keys, which
    tell the jobs apart), where it writes, and whether its config was refused (the message,
    naming the key)."""

    num: int
    overrides: list[str]
    swept: list[str]
    run_dir: Path | None = None
    error: str | None = None


@dataclass
class Report:
    """How the last multirun of this process went: its job count and the jobs that did not
    complete (job, status)."""

    n_jobs: int = 0
    incomplete: list[tuple[Job, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.n_jobs, self.incomplete = 0, []


REPORT = Report()


def sweep_points(config: DictConfig) -> tuple[list[list[str]], set[str]]:
    """Every job's overrides, expanded as Hydra's basic sweeper expands them, and the swept keys."""
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    return BasicSweeper.split_arguments(overrides, None)[0], swept


def check_job(config: DictConfig, num: int, overrides: Sequence[str], swept: set[str]) -> Job:
    """Compose one sweep point's config as its job will, find its run directory, and validate
    it with the train schema."""
    shown = [o for o in overrides if o.split("=", 1)[0] in swept]
    job = Job(num, list(overrides), shown)
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    try:
        point = loader.load_sweep_config(config, list(overrides))
        with open_dict(point):
            point.hydra.job.num = num
            point.hydra.job.id = num
        job.run_dir = Path(config.hydra.sweep.dir) / str(point.hydra.sweep.subdir)
        task = copy.deepcopy(point)
        with open_dict(task):
            del task["hydra"]
        to_train_config(task)
    except ConfigError as err:
        job.error = str(err)
    except (HydraException, OmegaConfBaseException) as err:  # composition, interpolation
        job.error = f"{type(err).__name__}: {err}"
    return job


def job_status(job: Job) -> tuple[str, str]:
    """A finished job's status and a note (the error, the divergence step), from its record."""
    assert job.run_dir is not None
    files = RunFiles(job.run_dir)
    path = files.summary if files.summary.is_file() else files.job_record
    try:
        record = read_summary(path)
    except UnreadableRecord as err:
        return UNREADABLE, str(err)
    if record is None:
        return UNFINISHED, "no record: the job stopped before it could write one"
    status = str(record.get("status"))
    note = ""
    if "error" in record:
        note = str(record["error"])
    elif "divergence" in record:
        note = f"diverged at step {record['divergence']['step']}"
    elif "members" in record:
        done = sum(m["status"] == Status.completed for m in record["members"])
        note = f"{done} of {len(record['members'])} seeds completed"
    return status, note


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as aligned text columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


class SweepCheck(Callback):
    """Validate every sweep point before the first job; report every job's status after the
    last (see the module doc)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        points, swept = sweep_points(config)
        self.jobs = [check_job(config, i, p, swept) for i, p in enumerate(points)]
        refused = [j for j in self.jobs if j.error is not None]
        if refused:
            lines = [f"  job {j.num} ({' '.join(j.swept)}): {j.error}" for j in refused]
            raise SystemExit(
                f"ihlab-train: config error in {len(refused)} of {len(self.jobs)} sweep points; "
                "no job was run:\n" + "\n".join(lines)
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        REPORT.n_jobs = len(self.jobs)
        rows = [["job", "status", "swept overrides", "run directory", "note"]]
        for job in self.jobs:
            status, note = job_status(job)
            if status != Status.completed:
                REPORT.incomplete.append((job, status))
            assert job.run_dir is not None
            rows.append(
                [str(job.num), status, " ".join(job.swept), job.run_dir.name, note[:NOTE_CHARS]]
            )
        done = REPORT.n_jobs - len(REPORT.incomplete)
        print(
            f"ihlab-train: {done} of {REPORT.n_jobs} jobs completed in {config.hydra.sweep.dir}\n"
            + table(rows),
            file=sys.stderr,
            flush=True,
        )

"""A multirun that says how it went (`ihlab-train -m ...`).

`SweepCheck` is a Hydra callback (conf/train.yaml registers it) that runs in the process that
launches the jobs:
- before the first job starts, it composes and validates every sweep point's config as its job
  would (Hydra's own expansion of the sweep, the job's own composition), so a typo in point 10
  does not cost the hour of points 0-9: any refused point stops the multirun before it runs
  anything, with a line per refused point naming the key and the fix; and it prints how the
  points' `seeds` are trained (one line per route, with the measured reason);
- after the last job, it prints a table of every job's status read from the job's record
  (summary.json, or ensemble.json for a seed-ensemble job), and `REPORT` holds the jobs that did
  not complete, so that `ihlab-train` exits non-zero (apps/train.py): a script that runs
  `ihlab-train -m ... && ihlab-compare ...` stops there. `ihlab-compare` still reads the jobs
  that completed.

The jobs themselves are the sweep points with their seeds routed (`routed_points`, train/routes.py):
a point with `seeds=[...]` is one batched job where batching pays, else one job per seed. Hydra's
sweeper runs exactly these jobs (hydra_plugins/ihlab_sweeper), and SweepCheck checks and reports
the same list.
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
from ihlab.train.routes import Route, seed_route
from ihlab.train.schema import TrainConfig, to_train_config

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


SEED_KEYS = ("seed", "seeds")


def sweep_points(config: DictConfig) -> tuple[list[list[str]], set[str]]:
    """Every point's overrides, expanded as Hydra's basic sweeper expands them, and the swept
    keys."""
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    return BasicSweeper.split_arguments(overrides, None)[0], swept


def compose_point(config: DictConfig, overrides: Sequence[str], num: int = 0) -> DictConfig:
    """A sweep point's config as its job will compose it (Hydra's node included)."""
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    point = loader.load_sweep_config(config, list(overrides))
    with open_dict(point):
        point.hydra.job.num = num
        point.hydra.job.id = num
    return point


def train_config(point: DictConfig) -> TrainConfig:
    """The validated train config of a composed point (ConfigError naming a bad key)."""
    task = copy.deepcopy(point)
    with open_dict(task):
        del task["hydra"]
    return to_train_config(task)


def with_seed(overrides: Sequence[str], seed: int) -> list[str]:
    """A point's overrides for one of its seeds alone: its own seed and seeds overrides dropped."""
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in SEED_KEYS]
    return [*kept, "seeds=null", f"seed={seed}"]


def routed_points(
    config: DictConfig, points: Sequence[Sequence[str]]
) -> tuple[list[list[str]], list[tuple[list[int], Route]]]:
    """The jobs of these sweep points: a point with `seeds=[...]` stays one (batched) job where its
    route batches them, else becomes one job per seed (train/routes.py); with each point's seeds
    and route. A point that does not compose or validate stays as it is (check_job reports it)."""
    jobs: list[list[str]] = []
    routes = []
    for overrides in points:
        try:
            config_of = train_config(compose_point(config, overrides))
        except (ConfigError, HydraException, OmegaConfBaseException):
            jobs.append(list(overrides))
            continue
        if not config_of.seeds:
            jobs.append(list(overrides))
            continue
        route = seed_route(config_of)
        routes.append((config_of.seeds, route))
        if route.batched:
            jobs.append(list(overrides))
        else:
            jobs += [with_seed(overrides, seed) for seed in config_of.seeds]
    return jobs, routes


def route_lines(routes: Sequence[tuple[list[int], Route]]) -> list[str]:
    """One line per distinct route of a study's points: how their seeds train, and why."""
    lines = []
    for seeds, route in routes:
        how = "one batched job per point" if route.batched else "one run per seed"
        line = f"ihlab-train: seeds {seeds} as {how}: {route.reason} (docs/speed.md#routes)"
        if line not in lines:
            lines.append(line)
    return lines


def check_job(config: DictConfig, num: int, overrides: Sequence[str], swept: set[str]) -> Job:
    """Compose one job's config as the job will, find its run directory, and validate it with
    the train schema."""
    shown = [o for o in overrides if o.split("=", 1)[0] in swept]
    job = Job(num, list(overrides), shown)
    try:
        point = compose_point(config, overrides, num)
        job.run_dir = Path(config.hydra.sweep.dir) / str(point.hydra.sweep.subdir)
        train_config(point)
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
        jobs, routes = routed_points(config, points)
        if len(jobs) > len(points):  # seeds split into runs: the seed tells those jobs apart
            swept |= {"seed"}
        self.jobs = [check_job(config, i, p, swept) for i, p in enumerate(jobs)]
        refused = [j for j in self.jobs if j.error is not None]
        if refused:
            lines = [f"  job {j.num} ({' '.join(j.swept)}): {j.error}" for j in refused]
            raise SystemExit(
                f"ihlab-train: config error in {len(refused)} of {len(self.jobs)} sweep points; "
                "no job was run:\n" + "\n".join(lines)
            )
        for line in route_lines(routes):
            print(line, file=sys.stderr, flush=True)

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

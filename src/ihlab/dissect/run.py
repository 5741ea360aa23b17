"""`dissect()`: plan and check (plan.py), evaluate every chosen checkpoint of every run
(evaluate.py), and write what a reader uses:

    dissection.csv     the tidy table (rows.py): run, seed, condition, step, intervention, family,
                       layer, head, split, metric, value, change, 95% interval, n
    across_seeds.csv   pooled over each condition's seeds (tables.py)
    dissection.md      remove-one and keep-one tables, wiring matrices
    attribution.png    per-head change of the metric over the dissected steps, phase change marked
    progress.png       the metric under each evaluation-time clamp over steps
    wiring.png         which earlier heads each later head reads from
    report.html        all of it in one self-contained page
    dissect.json       what was asked (a rerun with the same request resumes; another is refused)

The tidy table is written after every checkpoint, so a dissection stopped halfway resumes where
it stopped: a rerun with the same request skips the (run, step) pairs already in the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

from ihlab.compare.report import write_report
from ihlab.dissect.evaluate import INTACT, CheckpointEvaluation
from ihlab.dissect.plan import RunPlan, default_out, plan_runs
from ihlab.dissect.plots import plot_attribution, plot_progress, plot_wiring
from ihlab.dissect.rows import read_rows, split_rows, write_rows
from ihlab.dissect.spec import DissectConfig
from ihlab.dissect.tables import (
    across_seeds,
    family_table,
    wiring,
    wiring_lines,
    write_seed_rows,
)
from ihlab.errors import ConfigError
from ihlab.runs.atomic import write_text_atomic
from ihlab.runs.checkpoints import load_lab_model
from ihlab.tracking.wandb_run import WandbMode, WandbRun, make_wandb_logger

log = logging.getLogger("ihlab.dissect")
FILES = {
    "table": "dissection.csv",
    "seeds": "across_seeds.csv",
    "markdown": "dissection.md",
    "attribution": "attribution.png",
    "progress": "progress.png",
    "wiring": "wiring.png",
    "report": "report.html",
    "request": "dissect.json",
}


def request_of(config: DissectConfig) -> dict[str, Any]:
    """What decides the table's rows: everything but where it goes and how fast."""

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    request = plain(asdict(config))
    for key in ("out", "batched", "batch_rows", "wandb", "metric"):
        request.pop(key)
    return request


def resume_rows(out: Path, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows an earlier run of this same request left; ConfigError if `out` holds another."""
    path = out / FILES["request"]
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    if earlier != request:
        keys = sorted(
            k for k in request.keys() | earlier.keys() if request.get(k) != earlier.get(k)
        )
        raise ConfigError(
            f"out={out} holds another dissection (its {', '.join(keys)} differ). Fix: give this "
            "one another out, or remove that folder's dissect.json and dissection.csv."
        )
    table = out / FILES["table"]
    return read_rows(table) if table.is_file() else []


def default_metric(rows: Sequence[Mapping[str, Any]], asked: str | None) -> str:
    metrics = {r["metric"] for r in rows}
    if asked is not None:
        if asked not in metrics:
            scalars = sorted(m for m in metrics if not m.startswith("heads/"))
            raise ConfigError(f"metric={asked!r} is not one of the dissected metrics {scalars}.")
        return asked
    return "icl_score" if "icl_score" in metrics else "loss"


def phases(plans: Sequence[RunPlan]) -> dict[str, tuple[float, float]]:
    """Each condition's median phase-change onset and end over its runs (NaN: none detected)."""
    found: dict[str, list[tuple[float, float]]] = {}
    for plan in plans:
        phase = plan.record.get("phase_change") or {}
        if phase.get("detected"):
            found.setdefault(plan.condition, []).append((phase["onset"], phase["end"]))
    return {
        c: (statistics.median(p[0] for p in v), statistics.median(p[1] for p in v))
        for c, v in found.items()
    }


def wandb_logger(plan: RunPlan, config: DissectConfig, out: Path) -> WandbRun | None:
    """The run's `dissect` W&B run, in its training run's group (None with W&B disabled)."""
    if config.wandb == WandbMode.disabled:
        return None
    settings = dataclasses.replace(plan.config.wandb, mode=config.wandb, job_type="dissect")
    folder = out / "wandb_runs" / plan.name.replace("/", "_")
    resolved = {"dissect": request_of(config), "run_dir": str(plan.path)}
    name = f"{plan.config.run_name}-dissect"
    return make_wandb_logger(settings, folder, resolved, name, plan.config.group, False)


def log_step(logger: WandbRun, rows: Sequence[Mapping[str, Any]], step: int) -> None:
    """One checkpoint's scalar values and changes: `dissect/<intervention>/<split>/<metric>`."""
    scalars = {}
    for r in rows:
        if not r["metric"].startswith("heads/"):
            key = f"dissect/{r['intervention']}/{r['split']}/{r['metric']}"
            scalars[key] = r["value"] if r["intervention"] == INTACT else r["change"]
    logger.log_metrics(scalars, step=step)


def evaluate_run(
    plan: RunPlan,
    config: DissectConfig,
    done: set[tuple[str, int]],
    rows: list[dict[str, Any]],
    out: Path,
) -> None:
    """Every chosen checkpoint of one run not yet in the table, the table rewritten after each."""
    logger = wandb_logger(plan, config, out)
    for step, ckpt in plan.checkpoints.items():
        if (plan.name, step) in done:
            continue
        started = time.perf_counter()
        model = load_lab_model(ckpt)
        evaluation = CheckpointEvaluation(
            model, plan.family, plan.config.clamps, step, config.batch_rows
        )
        key = {
            "run": plan.name,
            "seed": plan.config.seed,
            "condition": plan.condition,
            "step": step,
        }
        new: list[dict[str, Any]] = []
        for split in plan.splits:
            measured = evaluation.run(split, plan.interventions, config.batched)
            new += split_rows(key, split, measured, plan.interventions)
        rows += new
        write_rows(out / FILES["table"], rows)
        if logger is not None:
            log_step(logger, new, step)
        log.info(
            "%s step %d: %d interventions x %d splits in %.1f s",
            plan.name,
            step,
            len(plan.interventions),
            len(plan.splits),
            time.perf_counter() - started,
        )
    if logger is not None:
        logger.finish()


def dissect(config: DissectConfig) -> dict[str, Any]:
    """The whole dissection (see the module doc); returns the paths written and the rows.
    ConfigError for bad input, before any model is evaluated."""
    plans = plan_runs(config)
    out = default_out(config)
    out.mkdir(parents=True, exist_ok=True)
    request = request_of(config)
    rows = resume_rows(out, request)
    write_text_atomic(out / FILES["request"], json.dumps(request, indent=2) + "\n")
    done = {(r["run"], r["step"]) for r in rows}
    files = {name: out / file for name, file in FILES.items()}
    for plan in plans:
        evaluate_run(plan, config, done, rows, out)
    seed_rows = across_seeds(rows)
    write_seed_rows(files["seeds"], seed_rows)
    metric = default_metric(rows, config.metric)
    table_metric = "acc" if metric == "loss" else metric
    split = rows[0]["split"] if rows else ""
    heads_family = f"heads/{config.heads[0].value}" if config.heads else ""
    matrices = wiring(seed_rows, heads_family)
    lines = [
        "# Dissection",
        "",
        f"{len({r['run'] for r in rows})} runs, {len({(r['run'], r['step']) for r in rows})} "
        f"checkpoints; metric `{metric}` on split `{split}` in the figures.",
        "",
        *family_table(seed_rows, heads_family, table_metric, "Remove one head"),
        *family_table(seed_rows, "keep_one", table_metric, "Keep one head per layer"),
        *family_table(seed_rows, "clamp", table_metric, "Evaluation-time clamps"),
        *wiring_lines(matrices),
    ]
    write_text_atomic(files["markdown"], "\n".join(lines) + "\n")
    plot_attribution(files["attribution"], seed_rows, heads_family, metric, split, phases(plans))
    plot_progress(files["progress"], seed_rows, metric, split)
    plot_wiring(files["wiring"], matrices)
    plots = {k: v for k, v in files.items() if v.suffix == ".png"}
    write_report(files["report"], files["markdown"], plots)
    return {
        "out": str(out),
        "files": {k: str(v) for k, v in files.items()},
        "rows": rows,
        "seed_rows": seed_rows,
        "metric": metric,
    }

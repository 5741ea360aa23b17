"""`ihlab-compare`'s study: compare conditions across run directories (seeds pooled per
condition).

    ihlab-compare runs=[outputs/multirun/fewshot_fast/<time>]
    ihlab-compare runs=[outputs/multirun/a/<time>,outputs/multirun/b/<time>] baseline=prev_token
    ihlab-compare runs=[outputs/multirun/fewshot_fast_labels/<time>] group_by=data.n_labels

Reads each run's `summary.json`, `metrics.csv` and `.hydra/` config, groups the completed runs by
their condition (or any dotted config key), tests every group against the baseline group and writes
`comparison.csv`, `comparison.md`, `learning_time.png`, `curves.png`, `onsets.png`, `heads.png`
and `report.html` (all of them in one self-contained page) to `out`. Learning times are
time-to-event data (Kaplan-Meier, log-rank; see compare_stats.py).
Runs that did not complete and runs with an unreadable file are listed in `comparison.md` and left
out of the statistics; runs of different experiments are never pooled into one group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import MISSING, DictConfig, OmegaConf

from ihlab.compare.loss_pca import (
    group_loss_profiles,
    joint_loss_pca,
    plot_loss_by_position,
    plot_loss_pca,
)
from ihlab.compare.plots import (
    final_head_scores,
    mean_grids,
    plot_curves,
    plot_heads,
    plot_learning_time,
    plot_onsets,
)
from ihlab.compare.report import write_report
from ihlab.compare.tables import TEST_COLUMNS, TESTED, write_csv, write_markdown
from ihlab.runs.discovery import find_runs, is_run_dir
from ihlab.runs.files import RunFiles
from ihlab.runs.summary import UNFINISHED, UNREADABLE, Status, UnreadableRecord, read_summary
from ihlab.runs.tables import read_metrics
from ihlab.stats.groups import (
    SAMPLE_STATS,
    benjamini_hochberg,
    compare_samples,
    holm,
    kaplan_meier,
    logrank,
    mean_ci,
    median_learning_time,
)

log = logging.getLogger("ihlab.compare")

TESTS = tuple(TEST_COLUMNS)  # logrank, mwu, welch
ICL_METRIC = "eval/icl_score"
FIX = "Fix: re-run that run, or leave its directory out of `runs`."


@dataclass
class CompareConfig:
    runs: list[str] = MISSING  # run directories and/or multirun folders
    group_by: str = "condition"  # the summary's condition, or a dotted config key (data.n_labels)
    baseline: str | None = None  # group tested against; None: "baseline" if present, else first
    metric: str | None = None  # curve in curves.png; None: the runs' learning-time metric
    out: str | None = None  # None: the first multirun folder in `runs`, else the current directory


@dataclass
class Run:
    """One run directory: its status (the summary's: completed, failed, diverged, interrupted,
    config_error, ...; or unfinished, unreadable), summary, group, metrics.csv rows (completed
    runs) and why it is left out (the others)."""

    path: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    metrics: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""


class UnreadableFile(ValueError):
    """A run's file that cannot be read; the message names the file."""


def _unreadable(file: Path, err: Exception) -> UnreadableFile:
    text = str(err)
    return UnreadableFile(text if str(file) in text else f"{file}: {type(err).__name__}: {text}")


def read_config(path: Path) -> DictConfig | None:
    """The run's `.hydra/resolved.yaml`, else `.hydra/config.yaml`, else None; UnreadableFile if
    the file is not a YAML mapping."""
    files = RunFiles(path)
    for file in (files.resolved, files.config):
        if file.is_file():
            try:
                cfg = OmegaConf.load(file)
            except (OSError, ValueError, yaml.YAMLError) as err:
                raise _unreadable(file, err) from None
            if not isinstance(cfg, DictConfig):
                raise UnreadableFile(f"{file}: not a YAML mapping of config keys.")
            return cfg
    return None


def group_value(path: Path, summary: Mapping[str, Any], key: str) -> str:
    """The run's group: the summary's condition for key "condition", else the config value at the
    dotted `key` ("None" where the run has no such key)."""
    if key == "condition" and "condition" in summary:
        return str(summary["condition"])
    cfg = read_config(path)
    value = (
        None
        if cfg is None
        else OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    )
    return str(value)


def read_run_summary(file: Path) -> dict[str, Any]:
    """A run's summary.json (runs.summary.read_summary), with the entries the statistics need
    checked on a completed run; UnreadableFile naming the file otherwise."""
    try:
        summary = read_summary(file)
    except UnreadableRecord as err:
        raise UnreadableFile(str(err)) from None
    if summary is None:
        raise UnreadableFile(f"{file}: missing.")
    if summary.get("status") == Status.completed:
        lt = summary.get("learning_time")
        if not isinstance(lt, dict) or not {"metric", "threshold", "step"} <= set(lt):
            raise UnreadableFile(f"{file}: no learning_time {{metric, threshold, step}} entry.")
        if not isinstance(summary.get("steps"), int):
            raise UnreadableFile(f"{file}: no integer `steps` (the run's last step).")
    return summary


def read_run_metrics(file: Path) -> list[dict[str, float]]:
    """metrics.csv rows; UnreadableFile naming the file if it cannot be parsed."""
    try:
        rows = read_metrics(file)
    except (OSError, ValueError, TypeError) as err:
        raise _unreadable(file, err) from None
    if not rows or any("step" not in row for row in rows):
        raise UnreadableFile(f"{file}: no rows with a `step` column.")
    return rows


def load_run(path: Path, group_by: str = "condition") -> Run:
    """Read a run directory. A run without summary.json is unfinished; a run with a file that
    cannot be read is unreadable, its reason naming the file."""
    files = RunFiles(path)
    run = Run(path, UNFINISHED)
    try:
        if files.summary.is_file():
            run.summary = read_run_summary(files.summary)
            run.status = str(run.summary.get("status"))
            run.reason = str(run.summary.get("error", ""))
        run.group = group_value(path, run.summary, group_by)
        if run.status in (Status.completed, UNFINISHED) and files.metrics.is_file():
            run.metrics = read_run_metrics(files.metrics)
        if run.status == Status.completed and not run.metrics:
            raise UnreadableFile(f"{files.metrics}: missing.")
    except UnreadableFile as err:
        log.warning("left out %s: %s", path, err)
        return Run(path, UNREADABLE, run.summary, run.group, reason=f"{err} {FIX}")
    if run.status == UNFINISHED:
        last = int(run.metrics[-1]["step"]) if run.metrics else 0
        run.reason = f"no summary.json yet (metrics.csv up to step {last})"
    return run


def check_experiments(runs: Sequence[Run], group_by: str) -> None:
    """Refuse to pool runs of different experiments (the summary's `name`) into one group."""
    for group in dict.fromkeys(r.group for r in runs):
        names: dict[str, list[Path]] = {}
        for r in runs:
            if r.group == group:
                names.setdefault(str(r.summary.get("name")), []).append(r.path)
        if len(names) > 1:
            found = "; ".join(f"{n}: {len(p)} runs, e.g. {p[0]}" for n, p in names.items())
            raise ValueError(
                f"group {group!r} of `{group_by}` would pool runs of different experiments "
                f"({found}). Fix: compare each experiment's runs on their own, or group by a key "
                f"that separates them (group_by=name)."
            )


def _number(values: Mapping[str, Any], key: str) -> float:
    value = values.get(key)
    return math.nan if value is None else float(value)  # summary.json writes NaN as null


def run_values(run: Run) -> dict[str, Any]:
    """The per-run numbers the comparison pools: learning time (the first step below the
    threshold, or the last step for a run that never crossed it: censored, `learned` False),
    phase-change onset, final loss, best accuracies, final ICL score."""
    s = run.summary
    lt = s["learning_time"]
    phase = s.get("phase_change") or {}
    final, best = s.get("final") or {}, s.get("best") or {}
    return {
        "dir": str(run.path),
        "group": run.group,
        "seed": s.get("seed"),
        "learned": lt["step"] is not None,
        "learning_time": lt["step"] if lt["step"] is not None else s["steps"],
        "onset": phase.get("onset") if phase.get("detected") else None,
        "final_loss": _number(final, lt["metric"]),
        "best": {k: v for k, v in best.items() if k.startswith("eval/") and k.endswith("/acc")},
        "icl_score": _number(final, ICL_METRIC),
    }


def group_sort_key(name: str) -> tuple[int, float, str]:
    """Numbers in numeric order first, then names alphabetically."""
    try:
        return 0, float(name), name
    except ValueError:
        return 1, 0.0, name


def with_adjusted(stats: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`stats` keyed `prefix + key`, with empty Holm and BH columns after every test's p."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        out[prefix + key] = value
        if any(key == f"{test}_p" for test in TESTS):
            out[f"{prefix}{key}_holm"] = out[f"{prefix}{key}_bh"] = math.nan
    return out


def learning_time_tests(
    vs: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Log-rank test of learning times against the baseline's; the complete-data tests and effect
    sizes only where no run of either group is censored."""
    stats = logrank(
        [v["learning_time"] for v in vs],
        [v["learned"] for v in vs],
        [v["learning_time"] for v in base],
        [v["learned"] for v in base],
    )
    censored = sum(not v["learned"] for v in vs), sum(not v["learned"] for v in base)
    if any(censored):
        notes = [
            f"censored runs ({censored[0]} here, {censored[1]} in the baseline): no Mann-Whitney, "
            "Welch or effect sizes",
            stats["note"],
        ]
        stats.update(dict.fromkeys(SAMPLE_STATS, math.nan), mwu_method="")
    else:
        complete = compare_samples(
            [v["learning_time"] for v in vs], [v["learning_time"] for v in base]
        )
        notes = [stats["note"], complete["note"]]
        stats.update(complete)
    stats["note"] = "; ".join(dict.fromkeys(n for n in notes if n))
    return stats


def learning_time_fits(
    values: Sequence[Mapping[str, Any]], groups: Sequence[str]
) -> dict[str, Any]:
    """Group -> Kaplan-Meier fit of its runs' learning times (censored: never learned)."""
    return {
        g: kaplan_meier(
            [v["learning_time"] for v in values if v["group"] == g],
            [v["learned"] for v in values if v["group"] == g],
            g,
        )
        for g in groups
    }


def summarize_groups(
    values: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    baseline: str,
    fits: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """One row per group (comparison.csv's columns), with the Kaplan-Meier median of `fits`;
    tests against `baseline` on the other rows, p-values adjusted over all tests of the
    comparison."""
    acc_metrics = sorted({k for v in values for k in v["best"]})
    has_icl = any(math.isfinite(v["icl_score"]) for v in values)
    members = {g: [v for v in values if v["group"] == g] for g in groups}
    rows = []
    for g in groups:
        vs = members[g]
        row: dict[str, Any] = {
            "condition": g,
            "n_runs": len(vs),
            "seeds": ",".join(str(v["seed"]) for v in sorted(vs, key=lambda v: v["seed"])),
        }
        row.update({f"learning_time_{k}": x for k, x in median_learning_time(fits[g]).items()})
        row["n_censored"] = sum(not v["learned"] for v in vs)
        complete = [v["learning_time"] for v in vs] if row["n_censored"] == 0 else []
        row.update({f"learning_time_{k}": x for k, x in mean_ci(complete).items()})
        onsets = [v["onset"] for v in vs if v["onset"] is not None]
        row.update({f"onset_{k}": x for k, x in mean_ci(onsets).items()})
        row["n_phase_change"] = len(onsets)
        row.update(
            {f"final_loss_{k}": x for k, x in mean_ci([v["final_loss"] for v in vs]).items()}
        )
        for m in acc_metrics:
            stats = mean_ci([v["best"].get(m, math.nan) for v in vs])
            row.update({f"best_{m}_{k}": x for k, x in stats.items()})
        if has_icl:
            stats = mean_ci([v["icl_score"] for v in vs])
            row.update({f"final_icl_score_{k}": x for k, x in stats.items()})
        if g != baseline:
            base = members[baseline]
            row.update(with_adjusted(learning_time_tests(vs, base), "learning_time_"))
            final_loss = compare_samples(
                [v["final_loss"] for v in vs], [v["final_loss"] for v in base]
            )
            row.update(with_adjusted(final_loss, "final_loss_"))
        rows.append(row)
    adjust_p_values(rows)
    return rows


def adjust_p_values(rows: list[dict[str, Any]]) -> None:
    """Fill every `<quantity>_<test>_p_holm` and `_p_bh` column: Holm's and Benjamini-Hochberg's
    adjustment over all the tests' p-values of the comparison (NaN p-values are not tests)."""
    cells = [(row, f"{q}_{t}_p") for row in rows for q in TESTED for t in TESTS]
    cells = [(row, key) for row, key in cells if key in row]
    p = [row[key] for row, key in cells]
    for (row, key), h, bh in zip(cells, holm(p), benjamini_hochberg(p), strict=True):
        row[f"{key}_holm"], row[f"{key}_bh"] = float(h), float(bh)


def compare(
    run_paths: Sequence[str | Path],
    group_by: str = "condition",
    baseline: str | None = None,
    metric: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Compare the completed runs under `run_paths`, grouped by `group_by`, against `baseline`.

    Writes comparison.csv, comparison.md, learning_time.png, curves.png, onsets.png, heads.png,
    loss_pca_joint.csv and loss_pca.png (the per-token-loss PCA fitted jointly over runs that
    scored the same examples, `loss_pca.py`; when the runs have per-token losses) and
    report.html to `out` (default: the first folder in `run_paths` that is not itself a run, else
    the current directory) and returns {"group_by", "baseline", "metric", "out", "rows"
    (comparison.csv's rows), "runs" (each completed run's pooled values), "skipped" ([{"dir",
    "status", "group", "reason"}]), "files"}. ValueError when a group would pool runs of
    different experiments.
    """
    paths = find_runs(run_paths)
    if not paths:
        raise ValueError(
            f"no run directories (summary.json or metrics.csv) under {list(run_paths)}"
        )
    if out is None:
        folders = [Path(p) for p in run_paths if not is_run_dir(Path(p))]
        out = folders[0] if folders else Path.cwd()
    out = Path(out)
    runs = [load_run(p, group_by) for p in paths]
    done = [r for r in runs if r.status == Status.completed]
    skipped = [r for r in runs if r.status != Status.completed]
    check_experiments(done, group_by)
    groups = sorted({r.group for r in done}, key=group_sort_key)
    if baseline is None:
        baseline = "baseline" if "baseline" in groups or not groups else groups[0]
    elif groups and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not a group of `{group_by}`: {groups}")
    groups = [g for g in groups if g == baseline] + [g for g in groups if g != baseline]
    lt_metrics = sorted({r.summary["learning_time"]["metric"] for r in done})
    if metric is None:
        metric = lt_metrics[0] if lt_metrics else "eval/train/loss"
    values = [run_values(r) for r in done]
    fits = learning_time_fits(values, groups)
    rows = summarize_groups(values, groups, baseline, fits)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("comparison.csv", "comparison.md")}
    files.update(
        {name: out / f"{name}.png" for name in ("learning_time", "curves", "onsets", "heads")}
    )
    write_csv(files["comparison.csv"], rows)
    write_markdown(
        files["comparison.md"],
        rows,
        skipped,
        group_by=group_by,
        baseline=baseline,
        lt_metrics=lt_metrics,
        out=out,
    )
    lt_thresholds = sorted({r.summary["learning_time"]["threshold"] for r in done})
    rule = f"< {lt_thresholds[0]:.3g}" if len(lt_thresholds) == 1 else "below its threshold"
    plot_learning_time(files["learning_time"], fits, f"{', '.join(lt_metrics)} {rule}")
    curves = {
        g: [
            {int(row["step"]): row[metric] for row in r.metrics if metric in row}
            for r in done
            if r.group == g
        ]
        for g in groups
    }
    thresholds = {
        r.summary["learning_time"]["threshold"]
        for r in done
        if r.summary["learning_time"]["metric"] == metric
    }
    plot_curves(files["curves"], curves, metric, thresholds.pop() if len(thresholds) == 1 else None)
    plot_onsets(files["onsets"], values, groups)
    heads: dict[str, dict[str, np.ndarray]] = {}
    for g in groups:
        finals = [final_head_scores(r.metrics) for r in done if r.group == g]
        kinds = dict.fromkeys(k for f in finals for k in f)
        heads[g] = {k: mean_grids([f[k] for f in finals if k in f]) for k in kinds}
    plot_heads(files["heads"], heads)
    pca_rows, explained = joint_loss_pca(done)
    if pca_rows:
        files["loss_pca_joint.csv"] = out / "loss_pca_joint.csv"
        files["loss_pca"] = out / "loss_pca.png"
        write_csv(files["loss_pca_joint.csv"], pca_rows)
        plot_loss_pca(files["loss_pca"], pca_rows, explained)
    profiles = group_loss_profiles(done, groups)
    if profiles:
        files["loss_by_position"] = out / "loss_by_position.png"
        plot_loss_by_position(files["loss_by_position"], profiles)
    files["report.html"] = out / "report.html"
    plots = {name: path for name, path in files.items() if path.suffix == ".png"}
    write_report(files["report.html"], files["comparison.md"], plots)
    return {
        "group_by": group_by,
        "baseline": baseline,
        "metric": metric,
        "out": str(out),
        "rows": rows,
        "runs": values,
        "skipped": [
            {"dir": str(r.path), "status": r.status, "group": r.group, "reason": r.reason}
            for r in skipped
        ],
        "files": {k: str(v) for k, v in files.items()},
    }

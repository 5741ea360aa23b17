"""`ihlab-compare`: compare conditions across run directories (seeds pooled per condition).

    ihlab-compare runs=[outputs/multirun/fewshot_fast/<time>]
    ihlab-compare runs=[outputs/multirun/a/<time>,outputs/multirun/b/<time>] baseline=prev_token
    ihlab-compare runs=[outputs/multirun/fewshot_fast_labels/<time>] group_by=data.n_labels

Reads each run's `summary.json`, `metrics.csv` and `.hydra/` config, groups the completed runs by
their condition (or any dotted config key), tests every group against the baseline group and writes
`comparison.csv`, `comparison.md`, `curves.png`, `onsets.png` and `heads.png` to `out`. Failed,
unfinished and config-error runs are listed in `comparison.md` and left out of the statistics.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from scipy.stats import mannwhitneyu, ttest_ind

from ihlab.compare_plots import (
    final_head_scores,
    mean_grids,
    mean_sd,
    plot_curves,
    plot_heads,
    plot_onsets,
)
from ihlab.config import register_configs
from ihlab.outputs import read_metrics
from ihlab.train import config_dir

log = logging.getLogger("ihlab.compare")

TESTED = ("learning_time", "final_loss")  # quantities tested against the baseline
STATS = ("mwu_u", "mwu_p", "welch_t", "welch_p", "cohen_d", "rank_biserial")
ICL_METRIC = "eval/icl_score"


@dataclass
class CompareConfig:
    runs: list[str] = MISSING  # run directories and/or multirun folders
    group_by: str = "condition"  # the summary's condition, or a dotted config key (data.n_labels)
    baseline: str | None = None  # group tested against; None: "baseline" if present, else first
    metric: str | None = None  # curve in curves.png; None: the runs' learning-time metric
    out: str | None = None  # None: the first multirun folder in `runs`, else the current directory


@dataclass
class Run:
    """One run directory: its status (completed, failed, config_error, unfinished, unreadable),
    summary and group."""

    path: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    group: str = ""


def is_run_dir(path: Path) -> bool:
    """A run directory has a summary.json (finished) or a metrics.csv (still going)."""
    return (path / "summary.json").is_file() or (path / "metrics.csv").is_file()


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among `paths`; a folder that is not a run is searched one and two levels
    down (a multirun folder, or the folder holding several). Hidden folders are skipped."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path}: no such directory.")
        if is_run_dir(path):
            found[path.resolve()] = None
            continue
        below = sorted(
            d
            for d in [*path.glob("*"), *path.glob("*/*")]
            if d.is_dir() and not any(p.startswith(".") for p in d.relative_to(path).parts)
        )
        found.update((d.resolve(), None) for d in below if is_run_dir(d))
    return list(found)


def read_config(path: Path) -> DictConfig | None:
    """The run's `.hydra/resolved.yaml`, else `.hydra/config.yaml`, else None."""
    for name in ("resolved.yaml", "config.yaml"):
        if (path / ".hydra" / name).is_file():
            cfg = OmegaConf.load(path / ".hydra" / name)
            return cfg if isinstance(cfg, DictConfig) else None
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


def load_run(path: Path, group_by: str = "condition") -> Run:
    """Read a run directory; a run without summary.json is unfinished."""
    if not (path / "summary.json").is_file():
        return Run(path, "unfinished", group=group_value(path, {}, group_by))
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        return Run(path, "unreadable", {"error": str(err)}, group_value(path, {}, group_by))
    return Run(path, str(summary.get("status")), summary, group_value(path, summary, group_by))


def compare_samples(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Two-sided Mann-Whitney U and Welch t tests of `x` against `y`, Cohen's d (pooled s.d.) and
    the rank-biserial correlation 2U/(n_x n_y) - 1; positive d and r mean `x` is larger.

    Non-finite values are dropped. Statistics that are undefined (fewer than 2 values in a sample,
    all values equal, zero variance in both samples) are NaN and `note` says why.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    result: dict[str, Any] = dict.fromkeys(STATS, math.nan)
    result["note"] = ""
    if len(a) < 2 or len(b) < 2:
        result["note"] = f"n={len(a)} vs {len(b)}: tests need at least 2 runs per group"
        return result
    if np.ptp(np.concatenate([a, b])) == 0:
        result["note"] = "all values equal: nothing to test"
        return result
    u, p = mannwhitneyu(a, b, alternative="two-sided")
    result.update(
        mwu_u=float(u), mwu_p=float(p), rank_biserial=2 * float(u) / (len(a) * len(b)) - 1
    )
    var_a, var_b = a.var(ddof=1), b.var(ddof=1)
    if var_a == 0 and var_b == 0:
        result["note"] = "zero variance in both groups: no t test or Cohen's d"
        return result
    t, p = ttest_ind(a, b, equal_var=False)
    pooled = math.sqrt(((len(a) - 1) * var_a + (len(b) - 1) * var_b) / (len(a) + len(b) - 2))
    result.update(welch_t=float(t), welch_p=float(p), cohen_d=float(a.mean() - b.mean()) / pooled)
    return result


def _number(values: Mapping[str, Any], key: str) -> float:
    value = values.get(key)
    return math.nan if value is None else float(value)  # summary.json writes NaN as null


def run_values(run: Run) -> dict[str, Any]:
    """The per-run numbers the comparison pools: learning time (the run's last step if it never
    crossed the threshold), phase-change onset, final loss, best accuracies, final ICL score."""
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


def summarize_groups(
    values: Sequence[Mapping[str, Any]], groups: Sequence[str], baseline: str
) -> list[dict[str, Any]]:
    """One row per group (comparison.csv's columns), tests against `baseline` on the other rows."""
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
        row["learning_time_mean"], row["learning_time_sd"] = mean_sd(
            [v["learning_time"] for v in vs]
        )
        row["n_not_learned"] = sum(not v["learned"] for v in vs)
        onsets = [v["onset"] for v in vs if v["onset"] is not None]
        row["onset_mean"], row["onset_sd"] = mean_sd(onsets)
        row["n_phase_change"] = len(onsets)
        row["final_loss_mean"], row["final_loss_sd"] = mean_sd([v["final_loss"] for v in vs])
        for m in acc_metrics:
            row[f"best_{m}_mean"], row[f"best_{m}_sd"] = mean_sd(
                [v["best"].get(m, math.nan) for v in vs]
            )
        if has_icl:
            row["final_icl_score_mean"], row["final_icl_score_sd"] = mean_sd(
                [v["icl_score"] for v in vs]
            )
        if g != baseline:
            for q in TESTED:
                stats = compare_samples([v[q] for v in vs], [v[q] for v in members[baseline]])
                row.update({f"{q}_{k}": stats[k] for k in (*STATS, "note")})
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """comparison.csv: floats at full precision, NaN as "nan", tests left empty on the baseline."""
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["condition"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def _pm(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.4g}" if not math.isfinite(sd) else f"{mean:.4g} ± {sd:.3g}"


def _num(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "NaN"


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _shown(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out.resolve()))
    except ValueError:
        return str(path)


def write_markdown(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    skipped: Sequence[Run],
    *,
    group_by: str,
    baseline: str,
    lt_metrics: Sequence[str],
    out: Path,
) -> None:
    """comparison.md: the groups as mean ± sd, the tests against the baseline, the runs left out."""
    acc = [
        k.removeprefix("best_").removesuffix("_mean")
        for k in (rows[0] if rows else {})
        if k.startswith("best_") and k.endswith("_mean")
    ]
    has_icl = any("final_icl_score_mean" in row for row in rows)
    header = ["condition", "runs", "seeds", "learning time", "phase-change onset", "final loss"]
    header += [f"best {m}" for m in acc] + (["final ICL score"] if has_icl else [])
    lines = [
        f"# Comparison grouped by `{group_by}`",
        "",
        f"Baseline: `{baseline}`. Mean ± sample s.d. over seeds; learning time in optimizer steps "
        f"(first evaluation of {', '.join(f'`{m}`' for m in lt_metrics) or 'the loss'} below the "
        "learning-time threshold). A run that never crossed the threshold counts as its last step "
        "in the learning-time statistics (the number of such runs is in brackets). Onsets are over "
        "the runs with a detected phase change (their number in brackets). Final loss: the "
        "learning-time metric at the last step.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            _cell(row["condition"]),
            str(row["n_runs"]),
            _cell(row["seeds"]),
            f"{_pm(row['learning_time_mean'], row['learning_time_sd'])} "
            f"[{row['n_not_learned']} not reached]",
            f"{_pm(row['onset_mean'], row['onset_sd'])} [{row['n_phase_change']}]",
            _pm(row["final_loss_mean"], row["final_loss_sd"]),
            *[
                _pm(row.get(f"best_{m}_mean", math.nan), row.get(f"best_{m}_sd", math.nan))
                for m in acc
            ],
        ]
        if has_icl:
            cells.append(_pm(row["final_icl_score_mean"], row["final_icl_score_sd"]))
        lines.append("| " + " | ".join(cells) + " |")
    tested = [row for row in rows if row["condition"] != baseline]
    if tested:
        lines += [
            "",
            f"## Tests against `{baseline}`",
            "",
            "Two-sided Mann-Whitney U and Welch's t test; Cohen's d with the pooled s.d. and the "
            "rank-biserial correlation 2U/(n1 n2) - 1 (positive: larger than the baseline).",
            "",
            "| condition | quantity | U | p (U) | Welch t | p (t) | Cohen's d | rank-biserial "
            "| note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in tested:
            for q in TESTED:
                stats = [_num(row[f"{q}_{k}"]) for k in STATS]
                note = _cell(row[f"{q}_note"])
                lines.append(
                    f"| {_cell(row['condition'])} | {q.replace('_', ' ')} | "
                    + " | ".join(stats)
                    + f" | {note} |"
                )
    lines += ["", "## Runs left out", ""]
    if skipped:
        lines += ["| run | status | group | reason |", "|---|---|---|---|"]
        for run in skipped:
            reason = run.summary.get("error", "")
            if run.status == "unfinished":
                rows_so_far = read_metrics(run.path / "metrics.csv")
                last = int(rows_so_far[-1]["step"]) if rows_so_far else 0
                reason = f"no summary.json yet (metrics.csv up to step {last})"
            lines.append(
                f"| {_cell(_shown(run.path, out))} | {run.status} | {_cell(run.group)} | "
                f"{_cell(reason)[:300]} |"
            )
    else:
        lines.append("None: every run completed.")
    path.write_text("\n".join(lines) + "\n")


def compare(
    run_paths: Sequence[str | Path],
    group_by: str = "condition",
    baseline: str | None = None,
    metric: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Compare the completed runs under `run_paths`, grouped by `group_by`, against `baseline`.

    Writes comparison.csv, comparison.md, curves.png, onsets.png and heads.png to `out` (default:
    the first folder in `run_paths` that is not itself a run, else the current directory) and
    returns {"group_by", "baseline", "metric", "out", "rows" (comparison.csv's rows), "runs" (each
    completed run's pooled values), "skipped" ([{"dir", "status", "group"}]), "files"}.
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
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p, group_by) for p in paths]
    done = [r for r in runs if r.status == "completed"]
    skipped = [r for r in runs if r.status != "completed"]
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
    rows = summarize_groups(values, groups, baseline)
    files = {name: out / name for name in ("comparison.csv", "comparison.md")}
    files.update({name: out / f"{name}.png" for name in ("curves", "onsets", "heads")})
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
    metrics = {r.path: read_metrics(r.path / "metrics.csv") for r in done}
    curves = {
        g: [
            {int(row["step"]): row[metric] for row in metrics[r.path] if metric in row}
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
        finals = [final_head_scores(metrics[r.path]) for r in done if r.group == g]
        kinds = dict.fromkeys(k for f in finals for k in f)
        heads[g] = {k: mean_grids([f[k] for f in finals if k in f]) for k in kinds}
    plot_heads(files["heads"], heads)
    return {
        "group_by": group_by,
        "baseline": baseline,
        "metric": metric,
        "out": str(out),
        "rows": rows,
        "runs": values,
        "skipped": [{"dir": str(r.path), "status": r.status, "group": r.group} for r in skipped],
        "files": {k: str(v) for k, v in files.items()},
    }


def register_compare_config() -> None:
    """Put CompareConfig where conf/compare.yaml finds it (and the train config's resolvers, which
    a run's unresolved `.hydra/config.yaml` uses)."""
    register_configs()
    ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


register_compare_config()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="compare")
def main(cfg: DictConfig) -> dict[str, Any]:
    if OmegaConf.is_missing(cfg, "runs"):
        raise SystemExit("ihlab-compare: runs is required, e.g. runs=[outputs/multirun/NAME/TIME]")
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, CompareConfig)
    try:
        result = compare(config.runs, config.group_by, config.baseline, config.metric, config.out)
    except ValueError as err:
        raise SystemExit(f"ihlab-compare: {err}") from None
    log.info(Path(result["files"]["comparison.md"]).read_text())
    log.info("wrote %s", ", ".join(result["files"].values()))
    return result


if __name__ == "__main__":
    main()

"""The tables of `ihlab-compare`: comparison.csv (every number, full precision) and comparison.md
(the groups with intervals, the tests with raw and adjusted p-values, the runs left out)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ihlab.stats.groups import N_RESAMPLES

TESTED = ("learning_time", "final_loss")  # quantities tested against the baseline
# test -> (name, statistic column, its symbol, effect-size column, its name); their p-values are
# adjusted together (Holm, Benjamini-Hochberg)
TEST_COLUMNS = {
    "logrank": ("log-rank", "logrank_chi2", "χ²", None, ""),
    "mwu": ("Mann-Whitney", "mwu_u", "U", "rank_biserial", "rank-biserial"),
    "welch": ("Welch's t", "welch_t", "t", "cohen_d", "Cohen's d"),
}


class LeftOut(Protocol):
    path: Path
    status: str
    group: str
    reason: str


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """comparison.csv: floats at full precision, NaN as "nan", tests left empty on the baseline."""
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["condition"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})


def _num(value: float, digits: int = 3) -> str:
    return "NaN" if math.isnan(value) else f"{value:.{digits}g}"


def _steps(value: float) -> str:
    """A median learning time: "not reached" for inf."""
    return "not reached" if math.isinf(value) else _num(value, 4)


def _interval(value: float, low: float, high: float, show: Callable[[float], str] = _num) -> str:
    """`value [low, high]`; "–" without a value; the value alone without an interval or where
    value and interval are all infinite."""
    if math.isnan(value):
        return "–"
    if math.isnan(low) or math.isnan(high) or (math.isinf(value) and math.isinf(low)):
        return show(value)
    return f"{show(value)} [{show(low)}, {show(high)}]"


def _mean(row: Mapping[str, Any], prefix: str) -> str:
    return _interval(
        row.get(f"{prefix}_mean", math.nan),
        row.get(f"{prefix}_ci_low", math.nan),
        row.get(f"{prefix}_ci_high", math.nan),
    )


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _shown(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out.resolve()))
    except ValueError:
        return str(path)


def group_lines(
    rows: Sequence[Mapping[str, Any]], baseline: str, lt_metrics: Sequence[str]
) -> list[str]:
    """The groups table with its legend."""
    acc = [
        k.removeprefix("best_").removesuffix("_mean")
        for k in (rows[0] if rows else {})
        if k.startswith("best_") and k.endswith("_mean")
    ]
    has_icl = any("final_icl_score_mean" in row for row in rows)
    header = ["condition", "runs", "seeds", "learning time: median [95% CI]", "censored"]
    header += ["phase-change onset", "final loss", *[f"best {m}" for m in acc]]
    header += ["final ICL score"] if has_icl else []
    metrics = ", ".join(f"`{m}`" for m in lt_metrics) or "the loss"
    lines = [
        f"Baseline: `{baseline}`. Learning time: optimizer steps to the first evaluation of "
        f"{metrics} below the learning-time threshold. A run that has not crossed it by its "
        "last step is censored there (it has not learned yet: its learning time is larger, not "
        "that step), so learning times are summarised by the Kaplan-Meier median with its 95% "
        "interval (exponential Greenwood; 'not reached': fewer than half the runs, or the "
        "interval's edge, got there) and tested with the log-rank test; `learning_time.png` "
        "draws the curves. Other columns: mean over seeds [percentile-bootstrap 95% interval, "
        f"{N_RESAMPLES} resamples, seeded; with 3 seeds about the range of the values]; s.d. in "
        "comparison.csv. Onsets over the runs with a detected phase change (their number in "
        "brackets). Final loss: the learning-time metric at the last step.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            _cell(row["condition"]),
            str(row["n_runs"]),
            _cell(row["seeds"]),
            _interval(
                row["learning_time_median"],
                row["learning_time_median_ci_low"],
                row["learning_time_median_ci_high"],
                _steps,
            ),
            str(row["n_censored"]),
            f"{_mean(row, 'onset')} ({row['n_phase_change']})",
            _mean(row, "final_loss"),
            *[_mean(row, f"best_{m}") for m in acc],
        ]
        if has_icl:
            cells.append(_mean(row, "final_icl_score"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def test_lines(rows: Sequence[Mapping[str, Any]], baseline: str) -> list[str]:
    """The tests against the baseline, one line per test, with the legend."""
    tested = [row for row in rows if row["condition"] != baseline]
    n_tests = sum(
        math.isfinite(row.get(f"{q}_{t}_p", math.nan))
        for row in tested
        for q in TESTED
        for t in TEST_COLUMNS
    )
    lines = [
        f"## Tests against `{baseline}`",
        "",
        "Two-sided. Log-rank and Mann-Whitney p-values are exact (every relabelling of the runs "
        "enumerated; Mann-Whitney without ties: scipy's exact null) or from "
        f"{N_RESAMPLES} seeded random relabellings, as the test column says; Welch's t uses the t "
        f"distribution. p (Holm), p (BH): adjusted over all {n_tests} tests of this table "
        "(family-wise error; false discovery rate). Effect sizes, positive where the group is "
        "larger than the baseline: rank-biserial correlation 2U/(n1 n2) - 1 and Cohen's d (pooled "
        "s.d.), with percentile-bootstrap 95% intervals.",
        "",
        "| condition | quantity | test | statistic | p | p (Holm) | p (BH) "
        "| effect size [95% CI] | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in tested:
        for q in TESTED:
            cells = []
            for test, (name, stat, symbol, effect, effect_name) in TEST_COLUMNS.items():
                p = row.get(f"{q}_{test}_p", math.nan)
                if not math.isfinite(p):
                    continue
                method = row.get(f"{q}_{test}_method", "")
                size = "–"
                if effect is not None:
                    value = row[f"{q}_{effect}"]
                    ci = row[f"{q}_{effect}_ci_low"], row[f"{q}_{effect}_ci_high"]
                    size = f"{effect_name} {_interval(value, *ci)}"
                cells.append(
                    [
                        f"{name} ({method})" if method else name,
                        f"{symbol} = {_num(row[f'{q}_{stat}'])}",
                        _num(p),
                        _num(row[f"{q}_{test}_p_holm"]),
                        _num(row[f"{q}_{test}_p_bh"]),
                        size,
                    ]
                )
            cells = cells or [["–"] * 6]
            for i, test_cells in enumerate(cells):
                note = _cell(row[f"{q}_note"]) if i == 0 else ""
                quantity = q.replace("_", " ")
                lines.append(
                    f"| {_cell(row['condition'])} | {quantity} | "
                    + " | ".join(test_cells)
                    + f" | {note} |"
                )
    return lines


def write_markdown(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    skipped: Sequence[LeftOut],
    *,
    group_by: str,
    baseline: str,
    lt_metrics: Sequence[str],
    out: Path,
) -> None:
    """comparison.md: the groups, the tests against the baseline, the runs left out."""
    lines = [f"# Comparison grouped by `{group_by}`", "", *group_lines(rows, baseline, lt_metrics)]
    if any(row["condition"] != baseline for row in rows):
        lines += ["", *test_lines(rows, baseline)]
    lines += ["", "## Runs left out", ""]
    if skipped:
        lines += ["| run | status | group | reason |", "|---|---|---|---|"]
        for run in skipped:
            lines.append(
                f"| {_cell(_shown(run.path, out))} | {run.status} | {_cell(run.group)} | "
                f"{_cell(run.reason)[:400]} |"
            )
    else:
        lines.append("None: every run completed.")
    path.write_text("\n".join(lines) + "\n")

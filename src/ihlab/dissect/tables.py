"""A dissection's summaries over seeds: `across_seeds.csv` and the markdown tables.

Across seeds, for every condition (`<experiment>/<condition>`), step, intervention, split and
metric: the mean value and the mean change over the condition's runs (seeds), a 95% t interval of
the change and the exact sign-flip p of "no change" (`stats.paired.seed_changes`; with one seed
the interval is the run's own, over its sequences, and p is empty).

The tables a reader asks for (Singh et al. Tables 2-3), at each condition's last dissected step:
- remove one: every head ablated alone (the `heads` family, first value), the table metric on
  every split;
- keep one: every head of a layer but one ablated (`keep_one`);
- the wiring matrix: for every earlier head ablated, the change of every later head's induction
  score (induction strength where the data defines it, else prefix matching).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ihlab.dissect.evaluate import INTACT
from ihlab.runs.atomic import open_atomic
from ihlab.sites import head_key, head_name
from ihlab.stats.paired import seed_changes

SEED_FIELDS = (
    "condition",
    "step",
    "intervention",
    "family",
    "layer",
    "head",
    "split",
    "metric",
    "n_runs",
    "value",
    "change",
    "ci_low",
    "ci_high",
    "p",
)
INDUCTION_SCORES = ("induction_strength", "prefix_matching")


def across_seeds(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per condition, step, intervention, split and metric, pooled over its runs."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        key = tuple(row[k] for k in ("condition", "step", "intervention", "split", "metric"))
        groups[key].append(row)
    out = []
    for (condition, step, intervention, split, metric), members in groups.items():
        first = members[0]
        values = [m["value"] for m in members]
        row = {
            "condition": condition,
            "step": step,
            "intervention": intervention,
            "family": first["family"],
            "layer": first["layer"],
            "head": first["head"],
            "split": split,
            "metric": metric,
            "n_runs": len(members),
            "value": float(np.mean(values)),
        }
        if intervention == INTACT:
            row.update(change=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan)
        elif len(members) == 1:  # one seed: the interval over its sequences
            row.update(change=first["change"], ci_low=first["ci_low"], ci_high=first["ci_high"])
            row["p"] = math.nan
        else:
            stats = seed_changes([m["change"] for m in members])
            row.update(change=stats["mean"], ci_low=stats["ci_low"], ci_high=stats["ci_high"])
            row["p"] = stats["p"]
        out.append(row)
    return out


def write_seed_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SEED_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row[k]) for k in SEED_FIELDS})


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def _num(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3g}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def last_steps(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each condition's last dissected step."""
    last: dict[str, int] = {}
    for row in rows:
        last[row["condition"]] = max(last.get(row["condition"], -1), row["step"])
    return last


def index(rows: Iterable[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    return {
        tuple(r[k] for k in ("condition", "step", "intervention", "split", "metric")): r
        for r in rows
    }


def family_table(
    seed_rows: Sequence[Mapping[str, Any]], family: str, metric: str, title: str
) -> list[str]:
    """A markdown table per condition: the intact model, then every intervention of `family`,
    `metric` on every split (value [interval of the change] p)."""
    found = index(seed_rows)
    lines: list[str] = []
    for condition, step in last_steps(seed_rows).items():
        members = sorted(
            {
                (r["layer"], r["head"], r["intervention"])
                for r in seed_rows
                if r["condition"] == condition and r["family"] == family and r["step"] == step
            },
            key=lambda t: (t[0] if t[0] is not None else -1, t[1] if t[1] is not None else -1),
        )
        if not members:
            continue
        splits = list(
            dict.fromkeys(
                r["split"]
                for r in seed_rows
                if r["condition"] == condition and r["metric"] == metric
            )
        )
        n = found.get((condition, step, INTACT, splits[0], metric), {}).get("n_runs", 0)
        lines += [
            f"### {title}: `{condition}`, step {step} ({n} run{'s' if n != 1 else ''})",
            "",
            f"`{metric}` per split: the value, then its change from the intact model [95% "
            "interval] and p (over seeds: t interval and exact sign-flip test; one seed: the "
            "interval over its evaluation sequences).",
            "",
            "| intervention | " + " | ".join(splits) + " |",
            "|---" * (len(splits) + 1) + "|",
        ]
        intact = [found.get((condition, step, INTACT, s, metric)) for s in splits]
        lines.append(
            f"| {INTACT} | " + " | ".join(_num(r["value"]) if r else "–" for r in intact) + " |"
        )
        for _, _, name in members:
            cells = []
            for split in splits:
                r = found.get((condition, step, name, split, metric))
                if r is None:
                    cells.append("–")
                    continue
                interval = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
                p = f" p {_p(r['p'])}" if not math.isnan(r["p"]) else ""
                cells.append(f"{_num(r['value'])} ({r['change']:+.3g} {interval}{p})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def wiring(
    seed_rows: Sequence[Mapping[str, Any]], family: str
) -> dict[str, tuple[str, list[str], list[str], np.ndarray]]:
    """Per condition, at its last step: (score, ablated heads, read heads, change matrix)."""
    out = {}
    found = index(seed_rows)
    for condition, step in last_steps(seed_rows).items():
        mine = [r for r in seed_rows if r["condition"] == condition and r["step"] == step]
        scores = {r["metric"].split("/")[1] for r in mine if r["metric"].startswith("heads/")}
        score = next((s for s in INDUCTION_SCORES if s in scores), None)
        ablated = sorted({(r["layer"], r["head"]) for r in mine if r["family"] == family})
        if score is None or not ablated:
            continue
        n_layers = max(layer for layer, _ in ablated) + 1
        n_heads = max(head for _, head in ablated) + 1
        split = mine[0]["split"]
        sources = [(layer, head) for layer, head in ablated if layer < n_layers - 1]
        readers = [(layer, head) for layer in range(1, n_layers) for head in range(n_heads)]
        matrix = np.full((len(sources), len(readers)), np.nan)
        names = {(r["layer"], r["head"]): r["intervention"] for r in mine if r["family"] == family}
        for i, (layer, head) in enumerate(sources):
            for j, (later, reader) in enumerate(readers):
                r = found.get(
                    (condition, step, names[(layer, head)], split, head_key(score, later, reader))
                )
                if r is not None and later > layer:
                    matrix[i, j] = r["change"]
        out[condition] = (
            score,
            [head_name(*h) for h in sources],
            [head_name(*h) for h in readers],
            matrix,
        )
    return out


def wiring_lines(matrices: Mapping[str, tuple[str, list[str], list[str], np.ndarray]]) -> list[str]:
    lines: list[str] = []
    for condition, (score, sources, readers, matrix) in matrices.items():
        lines += [
            f"### Wiring: `{condition}`",
            "",
            f"Change of each later head's `{score}` (columns) when an earlier head is ablated "
            "alone (rows), mean over seeds.",
            "",
            "| ablated | " + " | ".join(readers) + " |",
            "|---" * (len(readers) + 1) + "|",
        ]
        for name, row in zip(sources, matrix, strict=True):
            lines.append(f"| {name} | " + " | ".join(_num(v) for v in row) + " |")
        lines.append("")
    return lines

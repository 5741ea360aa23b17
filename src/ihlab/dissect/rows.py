"""The tidy table of a dissection: one row per run, step, setting, split and metric.

    run, seed, condition, step, intervention, family, layer, head, split, metric, value, change,
    ci_low, ci_high, n

`value` is the metric over the split's sequences; on an intervention's row, `change` is its value
minus the intact model's, and `ci_low`/`ci_high` the 95% interval of the change, paired over the
evaluation sequences (both forwards read the same sequences); on the intact row (`intervention`
"intact"), the interval is the value's own. Metrics: every scalar the run's data family logs per
evaluation split (loss, acc, icl_score, ...) and every head score (`heads/<score>/L<l>H<h>`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ihlab.data.base import Terms
from ihlab.dissect.evaluate import INTACT, Measured
from ihlab.dissect.spec import Intervention
from ihlab.runs.atomic import open_atomic
from ihlab.sites import head_key
from ihlab.stats.paired import ratio_interval

FIELDS = (
    "run",
    "seed",
    "condition",
    "step",
    "intervention",
    "family",
    "layer",
    "head",
    "split",
    "metric",
    "value",
    "change",
    "ci_low",
    "ci_high",
    "n",
)


def flat_terms(measured: Measured) -> dict[str, Terms]:
    """Every metric of a setting as (sums (n,), counts (n,)): head scores one per head."""
    scalars, heads = measured.joined()
    out = dict(scalars)
    for score, (sums, counts) in heads.items():
        for layer in range(sums.shape[1]):
            for head in range(sums.shape[2]):
                out[head_key(score, layer, head)] = (sums[:, layer, head], counts)
    return out


def split_rows(
    key: Mapping[str, Any],
    split: str,
    measured: Mapping[str, Measured],
    interventions: Sequence[Intervention],
) -> list[dict[str, Any]]:
    """The rows of one run, step and split: the intact model's, then every intervention's."""
    intact = flat_terms(measured[INTACT])
    rows = []
    for name, (sums, counts) in intact.items():
        value, half = ratio_interval(sums, counts)
        rows.append(
            {
                **key,
                "intervention": INTACT,
                "family": INTACT,
                "layer": None,
                "head": None,
                "split": split,
                "metric": name,
                "value": float(value),
                "change": math.nan,
                "ci_low": float(value - half),
                "ci_high": float(value + half),
                "n": len(sums),
            }
        )
    for i in interventions:
        terms = flat_terms(measured[i.name])
        for name, (base_sums, counts) in intact.items():
            sums = terms[name][0]
            value = float(sums.sum() / counts.sum())
            change, half = ratio_interval(sums - base_sums, counts)
            rows.append(
                {
                    **key,
                    "intervention": i.name,
                    "family": i.family,
                    "layer": i.layer,
                    "head": i.head,
                    "split": split,
                    "metric": name,
                    "value": value,
                    "change": float(change),
                    "ci_low": float(change - half),
                    "ci_high": float(change + half),
                    "n": len(sums),
                }
            )
    return rows


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """dissection.csv, atomically (floats at full precision, empty for None and NaN)."""
    with open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row[k]) for k in FIELDS})


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """dissection.csv back as rows with numbers as numbers; ValueError naming the file if its
    header is not the dissection's."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"{path} is not a dissection table (header {reader.fieldnames}).")
        rows = []
        for row in reader:
            parsed: dict[str, Any] = dict(row)
            for key in ("seed", "step", "layer", "head", "n"):
                parsed[key] = int(row[key]) if row[key] != "" else None
            for key in ("value", "change", "ci_low", "ci_high"):
                parsed[key] = float(row[key]) if row[key] != "" else math.nan
            rows.append(parsed)
    return rows

"""A run's outputs: `metrics.csv`, the per-evaluation tables, `summary.json`, and what goes to the
W&B run (the output contract in the README)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from ihlab.atomic import open_atomic, write_text_atomic
from ihlab.head_grids import colour, heads_image
from ihlab.sites import head_key
from ihlab.wandb_logging import WandbRun

FIRST_COLUMNS = ("step", "sequences")


class MetricsCSV(Logger):
    """Every logged scalar in one CSV: one row per logging step, columns `step`, `sequences` first.

    Rows are merged by step (train and eval metrics of the same step share a row) and the file is
    rewritten on every save, so new columns can appear at any step. An existing file in the run
    directory is read first, so a run resumed in place keeps its earlier rows (`truncate_after`).
    """

    def __init__(self, path: Path, batch_size: int) -> None:
        super().__init__()
        self.path, self.batch_size = Path(path), batch_size
        self.rows: dict[int, dict[str, float]] = {}
        if self.path.exists():
            self.rows = {int(row["step"]): row for row in read_metrics(self.path)}

    @property
    def name(self) -> str:
        return "metrics_csv"

    @property
    def version(self) -> str:
        return ""

    def truncate_after(self, step: int) -> None:
        """Drop rows after `step`: a resumed run rewrites them."""
        self.rows = {s: r for s, r in self.rows.items() if s <= step}

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters live in `.hydra/config.yaml`, not in the CSV."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            raise ValueError("MetricsCSV needs the step of every logged metric.")
        row = self.rows.setdefault(int(step), {})
        row.update({k: float(v) for k, v in metrics.items() if k != "epoch"})
        row["step"], row["sequences"] = int(step), int(step) * self.batch_size

    @rank_zero_only
    def save(self) -> None:
        keys = sorted({k for row in self.rows.values() for k in row} - set(FIRST_COLUMNS))
        columns = [*FIRST_COLUMNS, *keys]
        with open_atomic(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for step in sorted(self.rows):
                writer.writerow({k: _fmt(v) for k, v in self.rows[step].items()})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _fmt(value: float) -> str | int:
    return value if isinstance(value, int) else repr(float(value))


class StepTable:
    """A CSV holding one vector per step (loss by position, per-example losses): header
    `step,<names>`, rows ordered by step and rewritten on every save. An existing file is read
    first, so a resumed run keeps its earlier rows (`truncate_after` drops the ones it redoes)."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names = Path(path), list(names)
        self.rows: dict[int, list[float]] = {}
        if self.path.exists():
            steps, _, values = read_step_table(self.path)
            self.rows = {int(s): list(v) for s, v in zip(steps, values, strict=True)}

    def add(self, step: int, values: Sequence[float]) -> None:
        self.rows[step] = [float(v) for v in values]

    def truncate_after(self, step: int) -> None:
        self.rows = {s: r for s, r in self.rows.items() if s <= step}

    def save(self) -> None:
        with open_atomic(self.path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *self.names])
            for step in sorted(self.rows):
                writer.writerow([step, *self.rows[step]])


def read_step_table(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(steps (n,), column names, values (n, columns)) of a StepTable CSV; ValueError naming the
    file if it is not one."""
    try:
        with Path(path).open() as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [[float(x) for x in row] for row in reader]
        data = np.array(rows, dtype=float).reshape(len(rows), len(header))
    except (StopIteration, ValueError) as err:
        raise ValueError(f"{path} is not a readable step table ({err or 'empty file'}).") from None
    return data[:, 0].astype(int), header[1:], data[:, 1:]


def loss_by_position_image(losses: np.ndarray) -> np.ndarray:
    """Olsson et al.'s picture as an RGB image, coloured straight from the array: per-token loss
    over (training step down x context position across), magma from 0 to the largest loss."""
    top = float(np.nanmax(losses)) if np.isfinite(losses).any() else 1.0
    return colour(losses, 0.0, max(top, 1e-9), "magma").repeat(4, axis=0).repeat(4, axis=1)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (empty cells left out; `step` and `sequences`
    as ints); ValueError naming the file and line if it is not a metrics.csv."""
    rows = []
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames[:2]) != list(FIRST_COLUMNS):
            raise ValueError(
                f"{path} is not a metrics.csv: its header must start with step,sequences."
            )
        for row in reader:
            try:
                values: dict[str, float] = {
                    k: float(v) for k, v in row.items() if v not in ("", None) and k is not None
                }
                values["step"], values["sequences"] = int(values["step"]), int(values["sequences"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path}, line {reader.line_num}: not a metrics row ({err})."
                ) from None
            rows.append(values)
    return rows


def head_scalars(scores: Mapping[str, Tensor]) -> dict[str, float]:
    """`heads/{score}/L{layer}H{head}` -> value, for every head of every (layer, head) score map
    (NaN entries, such as layer 0's composition scores, are left out)."""
    return {
        head_key(name, layer, head): float(value)
        for name, grid in scores.items()
        for layer, row in enumerate(grid.tolist())
        for head, value in enumerate(row)
        if not math.isnan(value)
    }


def log_head_scores(
    loggers: Iterable[Logger], scores: Mapping[str, Tensor], step: int, prefix: str = ""
) -> None:
    """Per-head scalars to every logger, and the heatmap image to W&B (keys start with prefix):
    every score's (layers x heads) grid side by side, in the order of `scores`."""
    scalars = {prefix + k: v for k, v in head_scalars(scores).items()}
    for logger in loggers:
        logger.log_metrics(scalars, step=step)
        if isinstance(logger, WandbRun):
            image = heads_image({k: v.cpu().numpy() for k, v in scores.items()})
            caption = f"step {step}; layers down, heads across: {', '.join(scores)}"
            logger.log_image(f"{prefix}heads/heatmap", image, step, caption)


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """summary.json, written atomically, with NaN/inf as null so any JSON reader accepts it."""
    write_text_atomic(path, json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

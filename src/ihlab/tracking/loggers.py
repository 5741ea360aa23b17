"""The run's loggers: `MetricsCSV` (every logged scalar into metrics.csv, as a Lightning logger)
and the fan-out of per-head scores to every logger (scalars, and a heatmap image for W&B)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from ihlab.runs.tables import read_metrics, write_metrics
from ihlab.sites import head_key
from ihlab.tracking.pictures import heads_image
from ihlab.tracking.wandb_run import WandbRun


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
        write_metrics(self.path, self.rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


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

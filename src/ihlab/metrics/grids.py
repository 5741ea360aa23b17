"""Pictures of head scores: a (layers x heads) grid per score, drawn with one colour rule
everywhere (W&B heatmaps, ihlab-compare's heads.png, ihlab-probe's heads.png). Figures for files
are drawn with matplotlib (`draw_head_grid`); images logged during training are coloured straight
from the arrays (`colour`, used by ihlab.tracking.pictures)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

SIGNED_SCORES = frozenset({"ov_copying", "direct_copying", "induction_strength"})  # in [-1, 1]
TICKS_UP_TO = 16  # label every layer and head up to this many


def score_limits(score: str) -> tuple[float, float]:
    """The colour range of a score: its whole range, so pictures of different runs compare."""
    return (-1.0, 1.0) if score in SIGNED_SCORES else (0.0, 1.0)


def draw_head_grid(ax: Axes, grid: np.ndarray, score: str, title: str) -> AxesImage:
    """One score's grid, layers down and heads across; signed scores diverge around 0."""
    low, high = score_limits(score)
    cmap = "RdBu_r" if low < 0 else "viridis"
    image = ax.imshow(np.asarray(grid, dtype=float), vmin=low, vmax=high, cmap=cmap, aspect="auto")
    ax.set(title=title, xlabel="head", ylabel="layer")
    for axis, n in ((ax.xaxis, grid.shape[1]), (ax.yaxis, grid.shape[0])):
        if n <= TICKS_UP_TO:
            axis.set_ticks(range(n))
    return image


def colour(values: np.ndarray, low: float, high: float, cmap: str) -> np.ndarray:
    """RGB uint8 image of `values` on a colour map (NaN: white), without drawing a figure."""
    scaled = np.clip((np.asarray(values, dtype=float) - low) / (high - low), 0.0, 1.0)
    rgb = (colormaps[cmap](np.nan_to_num(scaled))[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(values)] = 255
    return rgb

"""Pictures of head scores: a (layers x heads) grid per score, drawn with one colour rule
everywhere (W&B heatmaps, ihlab-compare's heads.png, ihlab-probe's heads.png). Figures for files
are drawn with matplotlib; images logged during training are coloured straight from the arrays."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

SIGNED_SCORES = frozenset({"copying", "induction_strength"})  # in [-1, 1]; the others in [0, 1]
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


CELL_PIXELS = 12  # a head's square in the images logged during training
GAP_PIXELS = 4


def colour(values: np.ndarray, low: float, high: float, cmap: str) -> np.ndarray:
    """RGB uint8 image of `values` on a colour map (NaN: white), without drawing a figure."""
    scaled = np.clip((np.asarray(values, dtype=float) - low) / (high - low), 0.0, 1.0)
    rgb = (colormaps[cmap](np.nan_to_num(scaled))[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(values)] = 255
    return rgb


def grid_image(grid: np.ndarray, score: str) -> np.ndarray:
    """(layers x heads) scores as an RGB image, CELL_PIXELS per head, the score's colour rule."""
    low, high = score_limits(score)
    rgb = colour(grid, low, high, "RdBu_r" if low < 0 else "viridis")
    return rgb.repeat(CELL_PIXELS, axis=0).repeat(CELL_PIXELS, axis=1)


def heads_image(scores: dict[str, np.ndarray]) -> np.ndarray:
    """Every score's grid side by side (white gaps), as one RGB image: a W&B heatmap rendered
    straight from the arrays in well under a millisecond, so scoring stays off the hot path."""
    panels = [grid_image(grid, score) for score, grid in scores.items()]
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, GAP_PIXELS, 3), 255, dtype=np.uint8)
    padded = [
        np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate([part for p in padded for part in (p, gap)][:-1], axis=1)

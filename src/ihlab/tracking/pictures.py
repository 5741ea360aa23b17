"""Pictures logged during training, coloured straight from the arrays (no matplotlib figure, so
making them stays off the hot path): every head score's (layers x heads) grid side by side, and
Olsson et al.'s loss x context position x training step picture."""

from __future__ import annotations

import numpy as np

from ihlab.metrics.grids import colour, score_limits

CELL_PIXELS = 12  # a head's square
GAP_PIXELS = 4


def grid_image(grid: np.ndarray, score: str) -> np.ndarray:
    """(layers x heads) scores as an RGB image, CELL_PIXELS per head, the score's colour rule."""
    low, high = score_limits(score)
    rgb = colour(grid, low, high, "RdBu_r" if low < 0 else "viridis")
    return rgb.repeat(CELL_PIXELS, axis=0).repeat(CELL_PIXELS, axis=1)


def heads_image(scores: dict[str, np.ndarray]) -> np.ndarray:
    """Every score's grid side by side (white gaps), as one RGB image, in well under a
    millisecond."""
    panels = [grid_image(grid, score) for score, grid in scores.items()]
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, GAP_PIXELS, 3), 255, dtype=np.uint8)
    padded = [
        np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate([part for p in padded for part in (p, gap)][:-1], axis=1)


def loss_by_position_image(losses: np.ndarray) -> np.ndarray:
    """Per-token loss over (training step down x context position across) as an RGB image,
    magma from 0 to the largest loss."""
    top = float(np.nanmax(losses)) if np.isfinite(losses).any() else 1.0
    return colour(losses, 0.0, max(top, 1e-9), "magma").repeat(4, axis=0).repeat(4, axis=1)

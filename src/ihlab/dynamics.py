"""Training dynamics read off logged curves."""

from __future__ import annotations

from collections.abc import Sequence


def learning_time(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """First step whose value is below `threshold` (Singh et al.: loss < 0.4 ln 2), else None."""
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length.")
    return next((int(s) for s, v in zip(steps, values, strict=True) if v < threshold), None)

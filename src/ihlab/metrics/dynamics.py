"""Training dynamics read off logged curves: learning time and phase-change detection."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

PHASE_CHANGE_METHOD = "peak-slope"


def learning_time(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """First step whose value is below `threshold` (Singh et al.: loss < 0.4 ln 2), else None.
    None too if a non-finite value comes first: a broken curve has no learning time."""
    if len(steps) != len(values):
        raise ValueError(f"steps ({len(steps)}) and values ({len(values)}) differ in length.")
    for step, value in zip(steps, values, strict=True):
        if not math.isfinite(value):
            return None
        if value < threshold:
            return int(step)
    return None


@dataclass
class Transition:
    """One drop of a curve: onset, steepest point and end (steps), and its size."""

    onset: int
    steepest: int
    end: int
    drop: float  # smoothed value at onset minus at end


@dataclass
class PhaseChange:
    """The phase changes of a curve: every transition in step order, and the largest one's onset,
    steepest point and end as the headline (the fields a single phase change reads from).

    `detected` False means the curve has no phase change by the method's criteria (the step fields
    are then None and `reason` says which criterion failed); nothing is invented.
    """

    detected: bool
    method: str
    onset: int | None = None
    steepest: int | None = None
    end: int | None = None
    drop: float | None = None  # the largest transition's drop
    noise: float | None = None  # robust s.d. of the curve around its smoothed version
    reason: str = ""
    transitions: list[Transition] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_phase_change(
    steps: Sequence[int],
    values: Sequence[float],
    smooth_frac: float = 0.02,
    edge_frac: float = 0.2,
    min_noise_ratio: float = 3.0,
    min_range_frac: float = 0.2,
    split_frac: float = 0.5,
) -> PhaseChange:
    """Find the phase changes of a decreasing curve (a loss), robust to noise.

    Method ("peak-slope"): smooth the curve with a Gaussian kernel (s.d. `smooth_frac` of the
    points, at least one) and take its rate of decrease per step. Every local peak of the rate is a
    candidate transition, running from its onset (the last earlier point where the rate is below
    `edge_frac` of that peak) to its end (the first later such point), and the steepest point of
    its own transition. Two transitions that overlap, the rate dipping between their peaks without
    falling below `edge_frac` (a curve that leaves one stage for the next before it has settled),
    are split at the rate's minimum between the peaks when that minimum is below `split_frac` of
    both: it ends the first and is the second's onset. A candidate counts only if
    - it has an onset: the curve was flatter before it, so the fast start of a monotone convex
      curve (exponential or power-law decay) is not a phase change;
    - it has an end inside the run;
    - its drop (smoothed value at onset minus at end) exceeds `min_noise_ratio` times the curve's
      noise (median absolute deviation of the raw curve around the smoothed one, as an s.d.) and
      `min_range_frac` of the smoothed curve's whole range, so wiggles are not one.
    Every candidate that counts is a transition (a curve can pass through several stages); the
    largest drop is the headline phase change. Steps need not be evenly spaced. A curve with a
    non-finite value (a diverged run) is refused: no phase change is read off it.
    """
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"steps ({len(x)}) and values ({len(y)}) differ in length.")
    bad = ~np.isfinite(y)
    if bad.any():
        where = ", ".join(str(int(s)) for s in x[bad][:5])
        return PhaseChange(
            False, PHASE_CHANGE_METHOD, reason=f"the curve has non-finite values (steps {where})"
        )
    if len(x) < 8:
        return PhaseChange(False, PHASE_CHANGE_METHOD, reason=f"only {len(x)} points")
    smooth = gaussian_filter1d(y, sigma=max(1.0, smooth_frac * len(y)), mode="nearest")
    residual = y - smooth
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    span = float(smooth.max() - smooth.min())
    rate = -np.gradient(smooth, x)  # decrease per step, (points,)
    peaks = [
        i
        for i in range(len(rate))
        if rate[i] > 0
        and (i == 0 or rate[i] >= rate[i - 1])
        and (i == len(rate) - 1 or rate[i] > rate[i + 1])
    ]
    splits = np.zeros(len(rate), dtype=bool)  # valleys between two peaks
    for a, b in itertools.pairwise(peaks):
        valley = a + int(np.argmin(rate[a : b + 1]))
        splits[valley] = rate[valley] < split_frac * min(rate[a], rate[b])
    found: list[Transition] = []
    reasons: dict[str, str] = {}
    biggest = 0.0
    for peak in peaks:
        low = (rate < edge_frac * rate[peak]) | splits
        before, after = np.flatnonzero(low[:peak]), np.flatnonzero(low[peak:])
        if len(before) == 0:
            reasons["convex"] = "falls fastest from the start (convex decay)"
            continue
        if len(after) == 0:
            reasons["open"] = "still falling steeply at the last step"
            continue
        onset, end = int(before[-1]), peak + int(after[0])
        if rate[onset:end].max() > rate[peak]:
            continue  # a bump on the flank of a steeper peak, which is its own candidate
        drop = float(smooth[onset] - smooth[end])
        if drop < min_noise_ratio * noise or drop < min_range_frac * span:
            biggest = max(biggest, drop)
            reasons["small"] = (
                f"every drop (at most {biggest:.3g}) is below {min_noise_ratio} x noise "
                f"{noise:.3g} or {min_range_frac} x range {span:.3g}"
            )
            continue
        found.append(Transition(int(x[onset]), int(x[peak]), int(x[end]), drop))
    if found:
        best = max(found, key=lambda t: t.drop)
        return PhaseChange(
            True,
            PHASE_CHANGE_METHOD,
            onset=best.onset,
            steepest=best.steepest,
            end=best.end,
            drop=best.drop,
            noise=noise,
            transitions=sorted(found, key=lambda t: t.onset),
        )
    reason = "; ".join(reasons.values()) or "the curve never decreases"
    return PhaseChange(False, PHASE_CHANGE_METHOD, noise=noise, reason=reason)


def per_token_loss_pca(losses: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Olsson et al.'s per-token-loss PCA: rows are checkpoints (evaluation steps), columns the
    loss of fixed examples at fixed positions. Returns the rows projected on the first principal
    components, (rows, n_components), and each component's share of the variance. Signs are fixed
    so that the first row has non-positive coordinates (the trajectory starts on the left)."""
    x = np.asarray(losses, dtype=float)
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(s))
    coords = u[:, :k] * s[:k]  # (rows, k)
    coords *= np.where(coords[:1] > 0, -1.0, 1.0)
    total = float((s**2).sum())
    explained = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return coords, explained

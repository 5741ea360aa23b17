"""The statistics of `ihlab-compare`: small-sample tests, learning times as time-to-event data,
bootstrap intervals and multiple-comparison corrections.

Studies have a handful of seeds per condition, so every rank or survival p-value here comes from an
exact or permutation null, never from a normal approximation (which, with 3 runs per group, gives
p-values below the smallest one the data can reach). A run that has not crossed the learning-time
threshold by its last step is right-censored there: it has not learned *yet*, so its learning
time is unknown but larger, and only survival methods (Kaplan-Meier, log-rank) use it correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.utils import median_survival_times
from scipy.stats import (
    bootstrap,
    false_discovery_control,
    mannwhitneyu,
    permutation_test,
    rankdata,
    ttest_ind,
)

N_RESAMPLES = 9999  # permutations and bootstrap resamples; exact enumeration where fewer suffice
SEED = 0  # one fixed seed: the same runs give the same intervals and p-values
CONFIDENCE = 0.95

Statistic = Callable[..., np.ndarray]


def permutation_p(statistic: Statistic, x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """P-value of `statistic(x, y, axis)` (larger: more extreme) under random relabelling of the
    pooled values, and how it was computed: exact enumeration of all C(n, n_x) splits where there
    are at most N_RESAMPLES, else N_RESAMPLES seeded random splits."""
    exact = math.comb(len(x) + len(y), len(x)) <= N_RESAMPLES
    with np.errstate(divide="ignore", invalid="ignore"):
        result = permutation_test(
            (x, y),
            statistic,
            permutation_type="independent",
            vectorized=True,
            n_resamples=N_RESAMPLES,
            alternative="greater",
            rng=np.random.default_rng(SEED),
        )
    return float(result.pvalue), "exact permutation" if exact else f"{N_RESAMPLES} permutations"


def mann_whitney(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """Mann-Whitney U of `x` against `y`, its two-sided p and the method: scipy's exact null where
    no value is tied, else a permutation test of |U - n_x n_y / 2| on mid-ranks (scipy would fall
    back to the normal approximation, which with 3 vs 3 gives p = 0.0765 below the attainable 0.1).
    """
    u = float(mannwhitneyu(x, y, method="asymptotic").statistic)  # U does not depend on the method
    pooled = np.concatenate([x, y])
    if len(np.unique(pooled)) == len(pooled):
        return u, float(mannwhitneyu(x, y, method="exact").pvalue), "exact"
    ranks = rankdata(pooled)
    offset = len(x) * (len(x) + 1) / 2 + len(x) * len(y) / 2  # rank sum of x where U = n_x n_y / 2

    def distance(rx: np.ndarray, ry: np.ndarray, axis: int) -> np.ndarray:
        return np.abs(rx.sum(axis=axis) - offset)

    p, method = permutation_p(distance, ranks[: len(x)], ranks[len(x) :])
    return u, p, method


def cohen_d(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """(mean x - mean y) / pooled s.d., batched over `axis` (inf where the pooled s.d. is 0)."""
    nx, ny = x.shape[axis], y.shape[axis]
    var = ((nx - 1) * x.var(axis=axis, ddof=1) + (ny - 1) * y.var(axis=axis, ddof=1)) / (
        nx + ny - 2
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x.mean(axis=axis) - y.mean(axis=axis)) / np.sqrt(var)


def rank_biserial(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """2U / (n_x n_y) - 1 = mean of sign(x_i - y_j): +1 when every x is larger, batched."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    return np.sign(x[..., :, None] - y[..., None, :]).mean(axis=(-1, -2))


def bootstrap_ci(statistic: Statistic, *samples: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of `statistic(*samples, axis)`, each sample resampled on
    its own (N_RESAMPLES, seeded); NaN where a sample has fewer than 2 values. With 3 values the
    interval is about their range, narrower than a t interval: more seeds tighten and widen it."""
    if min(len(s) for s in samples) < 2:
        return math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ci = bootstrap(
            samples,
            statistic,
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(SEED),
        ).confidence_interval
    return float(ci.low), float(ci.high)


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample s.d. and bootstrap interval of the mean of the finite `values`."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    low, high = bootstrap_ci(np.mean, x)
    return {
        "mean": float(x.mean()) if len(x) else math.nan,
        "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
        "ci_low": low,
        "ci_high": high,
    }


SAMPLE_STATS = (
    "mwu_u",
    "mwu_p",
    "mwu_method",
    "welch_t",
    "welch_p",
    "cohen_d",
    "cohen_d_ci_low",
    "cohen_d_ci_high",
    "rank_biserial",
    "rank_biserial_ci_low",
    "rank_biserial_ci_high",
)


def compare_samples(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Two-sided Mann-Whitney (exact or permutation) and Welch t tests of `x` against `y`, Cohen's
    d (pooled s.d.) and the rank-biserial correlation with bootstrap intervals; positive effects
    mean `x` is larger.

    Non-finite values are dropped. Statistics that are undefined (fewer than 2 values in a sample,
    all values equal, zero variance in both samples) are NaN and `note` says why.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    result: dict[str, Any] = dict.fromkeys(SAMPLE_STATS, math.nan)
    result.update(mwu_method="", note="")
    if len(a) < 2 or len(b) < 2:
        result["note"] = f"n={len(a)} vs {len(b)}: tests need at least 2 runs per group"
        return result
    if np.ptp(np.concatenate([a, b])) == 0:
        result["note"] = "all values equal: nothing to test"
        return result
    result["mwu_u"], result["mwu_p"], result["mwu_method"] = mann_whitney(a, b)
    result["rank_biserial"] = float(rank_biserial(a, b))
    result["rank_biserial_ci_low"], result["rank_biserial_ci_high"] = bootstrap_ci(
        rank_biserial, a, b
    )
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        result["note"] = "zero variance in both groups: no t test or Cohen's d"
        return result
    t, p = ttest_ind(a, b, equal_var=False)
    result.update(welch_t=float(t), welch_p=float(p), cohen_d=float(cohen_d(a, b)))
    result["cohen_d_ci_low"], result["cohen_d_ci_high"] = bootstrap_ci(cohen_d, a, b)
    return result


def logrank_chi2(durations: np.ndarray, events: np.ndarray, in_x: np.ndarray) -> np.ndarray:
    """Log-rank chi-square statistic (Mantel-Haenszel, one degree of freedom) of the runs marked by
    `in_x` (..., n) against the others, batched over leading axes; 0 where no run learned.

    At every distinct event time t, the observed events of group x minus the expected
    d_t n_x,t / n_t, summed over t, squared, over the summed hypergeometric variance.
    """
    times = np.unique(durations[events])
    at_risk = durations[None, :] >= times[:, None]  # (time, run)
    died = (durations[None, :] == times[:, None]) & events  # (time, run)
    n, d = at_risk.sum(axis=1), died.sum(axis=1)  # (time,)
    n_x = (at_risk & in_x[..., None, :]).sum(axis=-1)  # (..., time)
    d_x = (died & in_x[..., None, :]).sum(axis=-1)
    share = n_x / n
    observed_minus_expected = (d_x - d * share).sum(axis=-1)
    variance = (d * share * (1 - share) * (n - d) / np.maximum(n - 1, 1)).sum(axis=-1)
    return np.divide(
        observed_minus_expected**2,
        variance,
        out=np.zeros(np.shape(variance)),
        where=variance > 0,
    )


def logrank(
    durations_x: Sequence[float],
    events_x: Sequence[bool],
    durations_y: Sequence[float],
    events_y: Sequence[bool],
) -> dict[str, Any]:
    """Log-rank test of group x against group y: the chi-square statistic and its permutation p
    (group labels exchanged over the runs; valid when both groups share one censoring scheme, as
    runs of one study with the same `trainer.max_steps` do). NaN, with a `note`, for fewer than 2
    runs in a group or no run that learned."""
    durations = np.asarray([*durations_x, *durations_y], dtype=float)
    events = np.asarray([*events_x, *events_y], dtype=bool)
    result: dict[str, Any] = {"logrank_chi2": math.nan, "logrank_p": math.nan, "logrank_method": ""}
    result["note"] = ""
    if min(len(durations_x), len(durations_y)) < 2:
        result["note"] = (
            f"n={len(durations_x)} vs {len(durations_y)}: tests need at least 2 runs per group"
        )
        return result
    if not events.any():
        result["note"] = "no run learned: no log-rank test"
        return result

    def chi2(ix: np.ndarray, iy: np.ndarray, axis: int) -> np.ndarray:
        in_x = np.zeros((*ix.shape[:-1], len(durations)), dtype=bool)
        np.put_along_axis(in_x, ix.astype(int), True, axis=-1)
        return logrank_chi2(durations, events, in_x)

    index = np.arange(len(durations))
    n_x = len(durations_x)
    result["logrank_chi2"] = float(chi2(index[:n_x], index[n_x:], -1))
    result["logrank_p"], result["logrank_method"] = permutation_p(chi2, index[:n_x], index[n_x:])
    return result


def kaplan_meier(durations: Sequence[float], events: Sequence[bool], label: str) -> Any:
    """lifelines' Kaplan-Meier fit (exponential Greenwood 95% band) of one group's learning times,
    events False for the censored runs (their last step as duration)."""
    return KaplanMeierFitter(alpha=1 - CONFIDENCE, label=label).fit(
        np.asarray(durations, dtype=float), np.asarray(events, dtype=bool)
    )


def median_learning_time(fit: Any) -> dict[str, float]:
    """Kaplan-Meier median learning time (first step where the share of runs not yet learned is <=
    0.5; inf if it never is) and its 95% interval (the same rule on the band's edges)."""
    low, high = median_survival_times(fit.confidence_interval_).to_numpy().ravel()
    return {
        "median": float(fit.median_survival_time_),
        "median_ci_low": float(low),
        "median_ci_high": float(high),
    }


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error) of the finite `p`; NaN stays NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    steps = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate) of the finite `p`."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = false_discovery_control(p[finite], method="bh")
    return out

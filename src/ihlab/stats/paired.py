"""Per-prompt outcomes and the statistics the results tables report.

- accuracy with Wilson's 95% score interval (good coverage at small n and near 0 or 1, unlike the
  normal approximation);
- label log-likelihood margin: the correct option's log-likelihood minus the best other option's
  (> 0 exactly when the prompt is answered correctly); a condition's effect is the mean change of
  the margin from the full model on the same prompts, a continuous measure that resolves effects
  accuracy needs many more prompts for;
- paired comparisons on the same prompts: McNemar's exact test on correctness (a two-sided
  binomial test on the discordant prompts; against a control repeated over seeds, on its
  per-prompt correctness averaged over them) and Wilcoxon's signed-rank test on margins;
- ratio estimates over sequences (a loss averaged over every position of every sequence, or its
  change under an intervention, paired sequence by sequence) with their 95% interval, the
  sequences as the sampled units (`ratio_interval`);
- a paired change over a few seeds: its mean with a t interval and the exact sign-flip
  permutation test (`seed_changes`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import binomtest, wilcoxon
from scipy.stats import t as student_t
from torch import Tensor

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def correct(loglik: Tensor, labels: Tensor) -> Tensor:
    """(prompt,) whether the most likely option is the label (ties: the first option)."""
    return loglik.argmax(dim=1) == labels


def margin(loglik: Tensor, labels: Tensor) -> Tensor:
    """(prompt,) label log-likelihood minus the best other option's, in nats."""
    own = loglik.gather(1, labels[:, None])[:, 0]
    others = loglik.scatter(1, labels[:, None], -torch.inf)
    return own - others.max(dim=1).values


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion, (low, high)."""
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a: Tensor, b: Tensor) -> float:
    """McNemar's exact two-sided p for paired per-prompt success rates `a` and `b`: a binomial
    test of how often a beats b among the prompts where they differ (1 when they never do).

    With booleans this is McNemar's test on the discordant prompts; with a condition repeated over
    seeds (a random control), pass its per-prompt correctness averaged over the seeds: the same
    exact sign test, on the control's mean over its head draws."""
    a_wins, b_wins = int((a > b).sum()), int((b > a).sum())
    if a_wins + b_wins == 0:
        return 1.0
    return float(binomtest(a_wins, a_wins + b_wins, 0.5).pvalue)


def signed_rank(x: Tensor, y: Tensor) -> float:
    """Wilcoxon's two-sided signed-rank p for paired samples (1 when they never differ)."""
    if torch.equal(x, y):
        return 1.0
    return float(wilcoxon(x.double().numpy(), y.double().numpy()).pvalue)


def t_interval(x: Tensor) -> tuple[float, float]:
    """Mean and 95% half-width from Student's t (for a few dozen samples, where the normal
    approximation is too narrow); nan with one sample."""
    x = x.double()
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = float(student_t.ppf(0.975, len(x) - 1)) * float(x.std()) / math.sqrt(len(x))
    return float(x.mean()), half


def mean_interval(x: Tensor) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation: the means here average >= 100 prompts)."""
    x = x.double()
    half = Z95 * float(x.std()) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), half


def ratio_interval(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """sum(sums) / sum(counts), with its 95% half-width treating the sequences (rows) as the
    sampled units: the ratio estimator's linearized variance n/(n-1) sum(e_i^2) / (sum c)^2,
    e_i = s_i - r c_i. With one position per sequence it is the usual interval of a mean. For
    a paired change, pass the per-sequence differences of the sums (both forwards read the
    same positions, so the counts are shared). Extra dimensions after the first are kept
    (per-head scores): the results have the shape of one row of `sums`."""
    s, c = sums.double(), counts.double()
    while c.dim() < s.dim():
        c = c[..., None]
    total = c.sum(dim=0)
    ratio = s.sum(dim=0) / total
    n = s.shape[0]
    if n < 2:
        return ratio, ratio * math.nan
    residual = s - ratio * c
    half = Z95 * torch.sqrt(n / (n - 1) * (residual**2).sum(dim=0)) / total
    return ratio, half


def seed_changes(changes: Sequence[float]) -> dict[str, float]:
    """A change measured on each of a few seeds: its mean, a 95% t interval, and the exact
    two-sided sign-flip permutation p of the mean against no change (all 2^n sign patterns;
    NaN for fewer than 2 seeds)."""
    x = np.asarray(changes, dtype=float)
    n = len(x)
    if n < 2:
        mean = float(x.mean()) if n else math.nan
        return {"mean": mean, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    mean = float(x.mean())
    half = float(student_t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))  # (2^n, n)
    flipped = np.abs((signs * x).mean(axis=1))
    p = float((flipped >= abs(mean) - 1e-12).mean())
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "p": p}

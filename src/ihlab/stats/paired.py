"""Per-prompt outcomes and the statistics the results tables report.

- accuracy with Wilson's 95% score interval (good coverage at small n and near 0 or 1, unlike the
  normal approximation);
- label log-likelihood margin: the correct option's log-likelihood minus the best other option's
  (> 0 exactly when the prompt is answered correctly); a condition's effect is the mean change of
  the margin from the full model on the same prompts, a continuous measure that resolves effects
  accuracy needs many more prompts for;
- paired comparisons on the same prompts: McNemar's exact test on correctness (a two-sided
  binomial test on the discordant prompts; against a control repeated over seeds, on its
  per-prompt correctness averaged over them) and Wilcoxon's signed-rank test on margins.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import binomtest, wilcoxon
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


def mean_interval(x: Tensor) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation: the means here average >= 100 prompts)."""
    x = x.double()
    half = Z95 * float(x.std()) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return float(x.mean()), half

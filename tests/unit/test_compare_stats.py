"""The statistics of ihlab-compare against independent computations: a hand-worked Kaplan-Meier
table, lifelines' log-rank test, scipy's exact Mann-Whitney, permutation counts by enumeration,
hand-computed Holm and Benjamini-Hochberg, and bootstrap intervals whose value is known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from lifelines.statistics import logrank_test
from scipy.stats import mannwhitneyu, norm, ttest_ind
from scipy.stats import t as student_t

from ihlab.compare.study import learning_time_fits, summarize_groups
from ihlab.stats.groups import (
    N_RESAMPLES,
    benjamini_hochberg,
    bootstrap_ci,
    compare_samples,
    holm,
    kaplan_meier,
    logrank,
    mann_whitney,
    mean_ci,
    median_learning_time,
)

# Learning times of 5 runs; the run at 1000 never learned (censored at its last step).
DURATIONS = [700, 900, 900, 1000, 1200]
EVENTS = [True, True, True, False, True]


def test_kaplan_meier_matches_a_hand_worked_table() -> None:
    # step  at risk  learned  S(t)
    # 700   5        1        4/5           Greenwood sum 1/(5*4)
    # 900   4        2        4/5*2/4 = 2/5 Greenwood sum + 2/(4*2)
    # 1000  2        0 (censored)  2/5
    # 1200  1        1        0
    fit = kaplan_meier(DURATIONS, EVENTS, "g")
    s = fit.survival_function_["g"]
    assert s.loc[[700, 900, 1000, 1200]].tolist() == pytest.approx([0.8, 0.4, 0.4, 0.0])
    # Exponential Greenwood (log-log) band: S^exp(-+z sqrt(V) / log S).
    z = norm.ppf(0.975)
    for step, surv, greenwood in [(700, 0.8, 1 / 20), (900, 0.4, 1 / 20 + 1 / 4)]:
        w = z * math.sqrt(greenwood) / math.log(surv)
        low, high = surv ** math.exp(-w), surv ** math.exp(w)
        band = fit.confidence_interval_.loc[step].tolist()
        assert band == pytest.approx([low, high])
    # The band's lower edge is below 1/2 from step 700 (0.204), the upper edge from 1200 only
    # (0.969 at 700, 0.753 at 900 and 1000, 0 at 1200): median 900, interval [700, 1200].
    assert median_learning_time(fit) == {
        "median": 900.0,
        "median_ci_low": 700.0,
        "median_ci_high": 1200.0,
    }


def test_a_median_never_reached_is_inf() -> None:
    fit = kaplan_meier([1700, 1800, 1700], [True, False, True], "g")  # S: 1/3 after 1700
    assert median_learning_time(fit)["median"] == 1700.0
    assert median_learning_time(fit)["median_ci_high"] == math.inf
    none_learned = kaplan_meier([1800, 1800], [False, False], "g")
    assert median_learning_time(none_learned)["median"] == math.inf


LOGRANK_X = ([700.0, 900, 1800], [True, True, False])
LOGRANK_Y = ([900.0, 1700, 1800, 1800], [True, True, False, False])


def test_logrank_statistic_matches_lifelines_and_its_p_an_enumeration() -> None:
    result = logrank(*LOGRANK_X, *LOGRANK_Y)
    reference = logrank_test(LOGRANK_X[0], LOGRANK_Y[0], LOGRANK_X[1], LOGRANK_Y[1])
    assert result["logrank_chi2"] == pytest.approx(reference.test_statistic)
    # p: the share of the C(7, 3) = 35 relabellings whose lifelines statistic is as large.
    durations = np.array(LOGRANK_X[0] + LOGRANK_Y[0])
    events = np.array(LOGRANK_X[1] + LOGRANK_Y[1])
    stats = []
    for chosen in itertools.combinations(range(7), 3):
        x = np.isin(np.arange(7), chosen)
        t = logrank_test(durations[x], durations[~x], events[x], events[~x]).test_statistic
        stats.append(t)
    count = sum(t >= reference.test_statistic - 1e-9 for t in stats)
    assert result["logrank_p"] == pytest.approx(count / 35)
    assert result["logrank_method"] == "exact permutation"


def test_three_against_three_completely_separated_gives_p_one_tenth() -> None:
    learned = [True] * 3
    # Learning times 700/900/1000 against 1700/1700/1800 (one tie): 2 of the 20 splits are as
    # extreme; lifelines' chi-square approximation would say 0.025.
    result = logrank([700, 900, 1000], learned, [1700, 1700, 1800], learned)
    assert result["logrank_p"] == pytest.approx(0.1)
    with_ties = mann_whitney(np.array([1.0, 1, 2]), np.array([3.0, 3, 4]))
    assert with_ties == (0.0, pytest.approx(0.1), "exact permutation")
    assert mannwhitneyu([1.0, 1, 2], [3.0, 3, 4]).pvalue < 0.1  # scipy's normal approximation
    all_tied = mann_whitney(np.array([5.0, 5, 5]), np.array([3.0, 3, 3]))
    assert all_tied == (9.0, pytest.approx(0.1), "exact permutation")
    no_ties = mann_whitney(np.array([1.0, 2, 3]), np.array([4.0, 5, 6]))
    assert no_ties == (0.0, pytest.approx(0.1), "exact")


def test_mann_whitney_without_ties_is_scipys_exact_test() -> None:
    x, y = np.array([3.1, 0.4, 2.2, 5.0, 1.7]), np.array([0.3, 1.1, 0.2, 0.9])
    u, p, method = mann_whitney(x, y)
    exact = mannwhitneyu(x, y, method="exact")
    assert (u, p, method) == (exact.statistic, pytest.approx(exact.pvalue), "exact")


def u_split_count(pooled: np.ndarray, n_x: int) -> tuple[float, int, int]:
    """Observed |U - n_x n_y / 2| (the first n_x values against the rest) and how many of the
    C(n, n_x) splits reach it, by enumeration; U counts the pairs with x above y, ties as 1/2."""
    n = len(pooled)
    above = (pooled[:, None] > pooled[None, :]) + 0.5 * (pooled[:, None] == pooled[None, :])
    splits = np.array(
        [np.isin(np.arange(n), c) for c in itertools.combinations(range(n), n_x)], dtype=float
    )  # (split, value): 1 for the values of x
    u = np.einsum("sa,ab,sb->s", splits, above, 1 - splits)
    distance = np.abs(u - n_x * (n - n_x) / 2)
    return float(distance[0]), int((distance >= distance[0] - 1e-9).sum()), len(splits)


def test_mann_whitney_with_ties_is_a_permutation_count() -> None:
    x, y = np.array([2.0, 2, 3, 5]), np.array([1.0, 2, 2, 3])  # U = 11.5, with ties
    _, count, total = u_split_count(np.concatenate([x, y]), 4)
    assert mann_whitney(x, y) == (11.5, pytest.approx(count / total), "exact permutation")


def test_large_samples_with_ties_use_seeded_random_permutations() -> None:
    x = np.array([1.0, 2, 2, 3, 3, 4, 5, 5])
    y = np.array([2.0, 3, 4, 4, 5, 6, 6, 7])  # C(16, 8) = 12870 splits > N_RESAMPLES
    _, count, total = u_split_count(np.concatenate([x, y]), 8)
    u, p, method = mann_whitney(x, y)
    assert method == f"{N_RESAMPLES} permutations" and u == mannwhitneyu(x, y).statistic
    assert mann_whitney(x, y)[1] == p  # seeded: the same p every time
    assert abs(p - count / total) < 3 * math.sqrt(0.25 / N_RESAMPLES)  # Monte Carlo error


def test_holm_and_benjamini_hochberg_by_hand() -> None:
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max.
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, math.nan, 0.02])
    # BH: sorted times 4/rank = 0.02, 0.02, 0.04, 0.04; running min from the largest.
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, math.nan, 0.02])
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0]


def test_bootstrap_intervals_of_small_samples_are_their_range() -> None:
    # With 3 values a resample is all-minimum with probability 1/27 > 2.5%: the 95% percentile
    # interval of the mean runs from the smallest to the largest value.
    assert mean_ci([1.0, 2.0, 4.0]) == {
        "mean": pytest.approx(7 / 3),
        "sd": pytest.approx(math.sqrt(7 / 3)),
        "ci_low": 1.0,
        "ci_high": 4.0,
    }
    assert math.isnan(mean_ci([3.0])["ci_low"]) and math.isnan(mean_ci([])["mean"])
    # Rank-biserial of 3 vs 3 separated samples: every resample keeps x above y.
    assert bootstrap_ci(
        lambda a, b, axis: np.sign(a[..., :, None] - b[..., None, :]).mean(axis=(-1, -2)),
        np.array([4.0, 5, 6]),
        np.array([1.0, 2, 3]),
    ) == (1.0, 1.0)


def test_compare_samples_values() -> None:
    x, y = [10.0, 11, 12, 13, 15], [0.0, 1, 2, 3, 4]
    result = compare_samples(x, y)
    assert result["mwu_p"] == pytest.approx(mannwhitneyu(x, y, method="exact").pvalue)
    assert result["welch_p"] == pytest.approx(ttest_ind(x, y, equal_var=False).pvalue)
    pooled_sd = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2)
    assert result["cohen_d"] == pytest.approx((12.2 - 2) / pooled_sd)
    assert result["rank_biserial"] == 1 and result["note"] == ""
    assert result["rank_biserial_ci_low"] == result["rank_biserial_ci_high"] == 1
    assert result["cohen_d_ci_low"] <= result["cohen_d"] <= result["cohen_d_ci_high"]
    few = compare_samples([1.0], [2.0, 3.0])
    assert math.isnan(few["mwu_p"]) and "at least 2" in few["note"]
    flat = compare_samples([5.0, 5.0], [3.0, 3.0])
    assert flat["rank_biserial"] == 1 and flat["mwu_p"] == pytest.approx(1 / 3)  # 2 of 6 splits
    assert math.isnan(flat["welch_p"]) and "zero variance" in flat["note"]
    same = compare_samples([2.0, 2.0], [2.0, 2.0])
    assert math.isnan(same["mwu_p"]) and "equal" in same["note"]


def test_two_against_two_by_hand() -> None:
    """x = 0, 2 against y = 3, 5: every x below every y, equal variances (2), so Welch's df is 2
    and the t distribution has a closed form: two-sided p = 1 - |t| / sqrt(2 + t^2)."""
    result = compare_samples([0.0, 2.0], [3.0, 5.0])
    t = (1 - 4) / math.sqrt(2 / 2 + 2 / 2)  # -2.1213
    assert result["mwu_u"] == 0  # no pair with x above y
    assert result["mwu_p"] == pytest.approx(2 / 6)  # {0, 2} and its mirror {3, 5} of C(4, 2)
    assert result["mwu_method"] == "exact"
    assert result["welch_t"] == pytest.approx(t)
    assert result["welch_p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t**2))  # 0.16795
    assert result["cohen_d"] == pytest.approx(-3 / math.sqrt(2))  # pooled s.d. sqrt(2)
    assert result["rank_biserial"] == -1


def test_three_against_three_by_hand() -> None:
    """x = 1, 4, 6 against y = 2, 3, 5: U = 0 + 2 + 3 = 5 pairs with x above y, as close to
    n_x n_y / 2 = 4.5 as an integer gets, so every split is as extreme: p = 1."""
    result = compare_samples([1.0, 4.0, 6.0], [2.0, 3.0, 5.0])
    var_x, var_y = 19 / 3, 7 / 3  # sample variances of x (mean 11/3) and y (mean 10/3)
    se2 = var_x / 3 + var_y / 3  # 26/9
    t = (11 / 3 - 10 / 3) / math.sqrt(se2)  # 0.19612
    df = se2**2 / ((var_x / 3) ** 2 / 2 + (var_y / 3) ** 2 / 2)  # Welch-Satterthwaite: 3.2975
    assert (result["mwu_u"], result["mwu_p"]) == (5, pytest.approx(1.0))
    assert result["welch_t"] == pytest.approx(t)
    assert t == pytest.approx(0.19612, abs=1e-5) and df == pytest.approx(3.2975, abs=1e-4)
    assert result["welch_p"] == pytest.approx(2 * student_t.sf(t, df))
    assert result["cohen_d"] == pytest.approx((1 / 3) / math.sqrt((2 * var_x + 2 * var_y) / 4))
    assert result["rank_biserial"] == pytest.approx(2 * 5 / 9 - 1)


def test_mann_whitney_with_ties_by_hand() -> None:
    """x = 1, 2, 2 against y = 2, 3, 3: U = 0 + 1/2 + 1/2 = 1 (ties count 1/2), |U - 4.5| = 3.5.
    Of the 20 ways to pick x from the pooled 1, 2, 2, 2, 3, 3, those with U = 1 ({1, 2, 2}: 3
    ways) or U = 8 ({2, 3, 3}: 3 ways) are as extreme: p = 6/20."""
    assert mann_whitney(np.array([1.0, 2, 2]), np.array([2.0, 3, 3])) == (
        1.0,
        pytest.approx(0.3),
        "exact permutation",
    )


def test_logrank_keeps_a_censored_run_at_risk_until_it_stops_never_as_learned() -> None:
    """A censored run counts in the risk set up to its last step and adds no event there. Worked
    by hand, with the censored run still at risk when the other group learns (a censored run that
    is last would not tell the two apart):
    x learned at 1, censored at 3; y learned at 2, 4, 5. Per event time (at risk, x at risk,
    x's observed minus expected, variance): t=1: 5, 2, 1 - 2/5, 6/25; t=2: 4, 1, 0 - 1/4, 3/16;
    t=4 and t=5: no x at risk. chi2 = (7/20)^2 / (171/400) = 49/171. Counted as learned at 3 it
    would add t=3: 3, 1, 1 - 1/3, 2/9 and give 1.59.
    x learned at 1 and 3; y censored at 2, learned at 4: t=1: 4, 2, 1/2, 1/4; t=3: 2, 1, 1/2,
    1/4: chi2 = 1 / (1/2) = 2 (0.62 with the censored run counted as learned at 2)."""
    censored_x = logrank([1, 3], [True, False], [2, 4, 5], [True, True, True])
    assert censored_x["logrank_chi2"] == pytest.approx(49 / 171)
    censored_y = logrank([1, 3], [True, True], [2, 4], [False, True])
    assert censored_y["logrank_chi2"] == pytest.approx(2.0)
    for (dx, ex), (dy, ey) in [
        (([1, 3], [True, False]), ([2, 4, 5], [True, True, True])),
        (([1, 3], [True, True]), ([2, 4], [False, True])),
    ]:
        reference = logrank_test(dx, dy, ex, ey).test_statistic
        assert logrank(dx, ex, dy, ey)["logrank_chi2"] == pytest.approx(reference)


def test_logrank_by_hand() -> None:
    """x: learned at 1 and 3; y: learned at 2, censored at 4. Per event time (at risk, x at
    risk, x's observed minus expected, hypergeometric variance):
    t=1: 4, 2, 1 - 1/2, 1/4;  t=2: 3, 1, 0 - 1/3, 2/9;  t=3: 2, 1, 1 - 1/2, 1/4.
    chi2 = (2/3)^2 / (13/18) = 8/13. The other two splits up to mirroring, {1, 2} and {1, 4},
    give 49/17 and 2/13, so 4 of the 6 splits reach 8/13: p = 2/3."""
    result = logrank([1, 3], [True, True], [2, 4], [True, False])
    assert result["logrank_chi2"] == pytest.approx(8 / 13)
    assert logrank([1, 2], [True, True], [3, 4], [True, False])["logrank_chi2"] == pytest.approx(
        49 / 17
    )
    assert logrank([1, 4], [True, False], [2, 3], [True, True])["logrank_chi2"] == pytest.approx(
        2 / 13
    )
    assert result["logrank_p"] == pytest.approx(4 / 6)
    assert result["logrank_method"] == "exact permutation"
    # Tied learning times: at t=1 all 4 runs are at risk and 3 learn (both of x's), so x's
    # observed minus expected is 2 - 3 x 2/4 = 1/2 and the variance 3 (1/2)(1/2)(4 - 3)/(4 - 1)
    # = 1/4: chi2 = 1, and every split gives 1 again (p = 1).
    tied = logrank([1, 1], [True, True], [1, 2], [True, False])
    assert (tied["logrank_chi2"], tied["logrank_p"]) == (pytest.approx(1.0), pytest.approx(1.0))


def run(group: str, seed: int, learned_at: int | None, loss: float) -> dict:
    return {
        "group": group,
        "seed": seed,
        "learned": learned_at is not None,
        "learning_time": learned_at or 1800,
        "onset": None,
        "final_loss": loss,
        "best": {},
        "icl_score": math.nan,
    }


def test_groups_with_censored_runs_get_survival_statistics_and_adjusted_p_values() -> None:
    values = [
        run("baseline", 0, 1700, 0.30),
        run("baseline", 1, None, 0.20),
        run("baseline", 2, 1700, 0.25),
        run("fast", 0, 700, 0.02),
        run("fast", 1, 900, 0.03),
        run("fast", 2, 1000, 0.04),
        run("same", 0, 1600, 0.21),
        run("same", 1, 1800, 0.26),
        run("same", 2, 1750, 0.31),
    ]
    groups = ["baseline", "fast", "same"]
    rows = {
        r["condition"]: r
        for r in summarize_groups(values, groups, "baseline", learning_time_fits(values, groups))
    }
    base, fast = rows["baseline"], rows["fast"]
    assert base["n_censored"] == 1 and base["learning_time_median"] == 1700
    assert math.isnan(base["learning_time_mean"])  # no mean over censored runs
    assert fast["learning_time_mean"] == pytest.approx(2600 / 3)
    assert (fast["learning_time_median_ci_low"], fast["learning_time_median_ci_high"]) == (
        700.0,
        1000.0,
    )
    assert fast["learning_time_logrank_p"] == pytest.approx(0.1)
    assert math.isnan(fast["learning_time_mwu_p"]) and "censored" in fast["learning_time_note"]
    assert fast["final_loss_mwu_p"] == pytest.approx(0.1)
    # Every finite p of the comparison is one test of the Holm family.
    keys = [
        (c, f"{q}_{t}_p")
        for c in ("fast", "same")
        for q in ("learning_time", "final_loss")
        for t in ("logrank", "mwu", "welch")
    ]
    raw = [rows[c].get(k, math.nan) for c, k in keys]
    finite = [p for p in raw if math.isfinite(p)]
    assert len(finite) == 6  # 2 log-rank, 2 final-loss Mann-Whitney, 2 final-loss Welch
    m = len(finite)
    ranked = sorted(finite)
    expected = {}
    running = 0.0
    for i, p in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * p))
        expected.setdefault(p, running)
    for (c, k), p in zip(keys, raw, strict=True):
        if math.isfinite(p):
            assert rows[c][f"{k}_holm"] == pytest.approx(expected[p])

"""The probe's statistics against values computed by hand (or published), and one results row."""

from __future__ import annotations

import pytest
import torch

from ihlab.probe.columns import Column
from ihlab.probe.conditions import Condition
from ihlab.probe.results import make_row
from ihlab.stats.paired import correct, margin, mcnemar, mean_interval, signed_rank, wilson


def test_wilson_interval_matches_published_values() -> None:
    # Wilson 95% intervals (Newcombe 1998, Table I): 8/10 -> 0.4902-0.9433, 0/10 -> 0-0.2775
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


def test_mcnemar_exact_p_from_the_discordant_prompts() -> None:
    a = torch.tensor([True] * 3 + [True] * 1 + [False] * 6 + [False] * 2)
    b = torch.tensor([True] * 3 + [False] * 1 + [True] * 6 + [False] * 2)
    # 1 vs 6 discordant: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8 / 128
    assert mcnemar(a, b) == pytest.approx(0.125)
    assert mcnemar(b, a) == pytest.approx(0.125)
    assert mcnemar(a, a) == 1.0
    # 0 vs 5: 2 * (1/2)^5
    assert mcnemar(torch.zeros(5, dtype=torch.bool), torch.ones(5, dtype=torch.bool)) == 0.0625


def test_mcnemar_against_a_control_averaged_over_seeds_is_the_sign_test() -> None:
    ih = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    control = torch.tensor([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 2 / 3])  # mean over 3 seeds
    # control ahead on 4 prompts, IH ahead on 1, 1 tie: 2 * P(X <= 1), X ~ Bin(5, 1/2) = 12 / 32
    assert mcnemar(ih, control) == pytest.approx(0.375)


def test_margin_is_the_label_minus_the_best_other_option() -> None:
    loglik = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0], [-0.2, -0.9, -torch.inf]])
    labels = torch.tensor([0, 1, 0])
    torch.testing.assert_close(margin(loglik, labels), torch.tensor([-0.5, 1.0, 0.7]))
    assert correct(loglik, labels).tolist() == [False, True, True]


def test_signed_rank_and_mean_interval() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # all six differences positive: exact two-sided p = 2 / 2^6
    assert signed_rank(x, torch.zeros(6)) == pytest.approx(2 / 64)
    assert signed_rank(x, x) == 1.0
    mean, half = mean_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # sample sd of 1..4 = sqrt(5/3); half-width 1.96 * sd / 2
    assert (mean, half) == pytest.approx((2.5, 1.959964 * (5 / 3) ** 0.5 / 2))


def test_a_results_row_from_hand_made_log_likelihoods() -> None:
    """8 prompts, label 0 throughout; log-likelihoods chosen so each column's margin per prompt
    (option 0 minus option 1) is known."""

    def column(margins: list[float]) -> torch.Tensor:
        return torch.stack([torch.tensor(margins), torch.zeros(8)], dim=1)

    full = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0]  # 7/8 right
    ablated = [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0]  # 2/8 right
    knockout = [-2.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0]  # 3/8 right
    seeds = [[1.0] * 7 + [-1.0], [1.0] * 6 + [-1.0, -1.0], [1.0] * 8]  # 7/8, 6/8, 8/8
    logliks = {"full": column(full), "ab": column(ablated), "ko": column(knockout)}
    logliks |= {f"r{s}": column(m) for s, m in enumerate(seeds)}
    columns = [
        Column("full", [Condition("full")]),
        Column("ab", [Condition("ab", "ablate", [(0, 0)])], control="random"),
        Column("ko", [Condition("ko", "knockout", [(0, 0)])], "random", "ab"),
        Column("random", [Condition(f"r{s}", "ablate", [(0, 1)]) for s in range(3)]),
    ]
    row = make_row("wordseq1", 10, columns, logliks, torch.zeros(8, dtype=torch.long))
    full_cell, ab, ko, rand = (row.cells[c] for c in ("full", "ab", "ko", "random"))
    assert row.n_options == 2 and full_cell.n == 8
    assert (full_cell.accuracy, ab.accuracy, ko.accuracy) == (87.5, 25.0, 37.5)
    # Wilson for 2/8: (0.25 + z²/16) / (1 + z²/8) ± z sqrt(0.25 * 0.75 / 8 + z²/256) / (1 + z²/8)
    assert (ab.ci_low, ab.ci_high) == pytest.approx((7.147, 59.073), abs=1e-2)
    assert rand.accuracy == pytest.approx(87.5) and rand.seed_accuracies == [87.5, 75.0, 100.0]
    # ablated vs full: 5 prompts lost, none gained -> 2 / 2^5
    assert ab.p_vs_full == pytest.approx(0.0625)
    # ablated (0 0 0 0 0 1 1 0) vs the control's mean correctness (1 1 1 1 1 1 2/3 1/3): behind
    # on prompts 0-4 and 7, ahead on 6 -> 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8 / 128
    assert ab.p_vs_random == pytest.approx(0.125)
    assert ab.margin_change == pytest.approx(-2 * 5 / 8)
    assert ko.margin_vs_ablated == pytest.approx((-1.0 + 2.0) / 8)
    assert ko.discordant_vs_ablated == 12.5  # prompt 4 only
    assert ko.p_vs_ablated == 1.0  # 1 vs 0 discordant
    assert full_cell.p_vs_full is None and rand.p_vs_random is None

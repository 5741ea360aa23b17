"""Head scores on attention patterns built to be perfect previous-token or induction heads."""

from __future__ import annotations

import pytest
import torch

from ihlab.metrics.heads import induction_targets, prefix_matching_score, previous_token_score
from ihlab.metrics.loss_profile import PositionalLoss


def previous_token_pattern(batch: int, n: int) -> torch.Tensor:
    pattern = torch.zeros(batch, 1, n, n)
    pattern[:, 0, 0, 0] = 1.0
    pattern[:, 0, torch.arange(1, n), torch.arange(n - 1)] = 1.0
    return pattern


def repeated_ids(batch: int, segment: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    seg = torch.stack([torch.randperm(50, generator=g)[:segment] for _ in range(batch)])
    return torch.cat([seg, seg], dim=1)  # (batch, 2 * segment)


def induction_pattern(ids: torch.Tensor) -> torch.Tensor:
    """Attend evenly to the tokens that followed earlier occurrences of the query's token (found
    by hand, position by position); to position 0 when there is none."""
    batch, n = ids.shape
    pattern = torch.zeros(batch, 1, n, n)
    for b in range(batch):
        for q in range(n):
            keys = [k + 1 for k in range(q) if ids[b, k] == ids[b, q]]
            pattern[b, 0, q, keys or [0]] = 1.0 / max(len(keys), 1)
    return pattern


def uniform_pattern(batch: int, n: int) -> torch.Tensor:
    causal = torch.ones(n, n).tril()
    return (causal / causal.sum(-1, keepdim=True)).expand(batch, 1, n, n)


def test_previous_token_score_of_a_perfect_previous_token_head_is_one() -> None:
    pattern = torch.cat([previous_token_pattern(3, 8), uniform_pattern(3, 8)], dim=1)
    scores = previous_token_score(pattern)
    assert scores[0] == pytest.approx(1.0)
    expected_uniform = torch.tensor([1 / (i + 1) for i in range(1, 8)]).mean()
    assert scores[1] == pytest.approx(float(expected_uniform))


def test_prefix_matching_scores_one_for_an_induction_head_and_near_zero_otherwise() -> None:
    ids = repeated_ids(4, 10)
    pattern = torch.cat([induction_pattern(ids), previous_token_pattern(4, 20)], dim=1)
    scores = prefix_matching_score(pattern, ids)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] < 0.05


def test_induction_targets_point_after_earlier_occurrences() -> None:
    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])
    targets = induction_targets(ids)[0]
    assert targets[3].nonzero().flatten().tolist() == [1]  # 5 -> what followed the first 5
    assert targets[5].nonzero().flatten().tolist() == [3]  # 7 -> what followed the first 7
    assert not targets[:3].any()
    # Every earlier occurrence counts, and a query can be its own target's successor: 1 2 1 1.
    targets = induction_targets(torch.tensor([[1, 2, 1, 1]]))[0]
    assert targets.int().tolist() == [
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 1, 0, 0],  # the 1 at 2: after the 1 at 0 came position 1
        [0, 1, 0, 1],  # the 1 at 3: positions 1 and 3 (after the 1 at 2)
    ]


def test_scores_of_a_hand_worked_pattern() -> None:
    """ids 1 2 1 2 3 1: queries 2, 3 and 5 have earlier occurrences, with targets {1}, {2} and
    {1, 3}; every other query is left out of prefix matching."""
    ids = torch.tensor([[1, 2, 1, 2, 3, 1]])
    pattern = torch.zeros(1, 2, 6, 6)
    for q in range(6):
        pattern[0, :, q, : q + 1] = 1.0 / (q + 1)  # both heads uniform to start with
    pattern[0, 0, 2] = torch.tensor([0.5, 0.5, 0, 0, 0, 0])  # target 1: 0.5
    pattern[0, 0, 3] = torch.tensor([0.25, 0.25, 0.25, 0.25, 0, 0])  # target 2: 0.25
    pattern[0, 0, 5] = torch.tensor([0.1, 0.3, 0.2, 0.2, 0.2, 0])  # targets 1, 3: 0.5
    pattern[0, 0, 1] = torch.tensor([0.0, 1, 0, 0, 0, 0])  # left out of prefix matching
    prefix = prefix_matching_score(pattern, ids)
    uniform = (1 / 3 + 1 / 4 + 2 / 6) / 3  # head 1: targets' share of a uniform row
    assert prefix.tolist() == pytest.approx([(0.5 + 0.25 + 0.5) / 3, uniform])
    # Previous token: attention from i to i - 1 for i = 1..5, averaged.
    head0 = (0.0 + 0.5 + 0.25 + 1 / 5 + 0.2) / 5  # rows 1-5 of head 0 at i - 1
    head1 = sum(1 / (i + 1) for i in range(1, 6)) / 5
    assert previous_token_score(pattern).tolist() == pytest.approx([head0, head1])


def test_prefix_matching_averages_over_queries_and_sequences() -> None:
    """Two sequences with 1 and 3 scored queries: each query weighs the same (a mean over the 4
    queries, not over the 2 sequences' means)."""
    ids = torch.tensor([[1, 2, 3, 1], [1, 2, 1, 2]])  # scored queries: (0, 3); (1, 2), (1, 3)
    pattern = torch.zeros(2, 1, 4, 4)
    pattern[:, 0, :, 0] = 1.0  # everything on position 0 ...
    pattern[0, 0, 3] = torch.tensor([0.0, 1, 0, 0])  # ... but query (0, 3): on its target
    expected = (1.0 + 0.0 + 0.0) / 3  # (1, 2) and (1, 3) miss their targets 1 and 2
    assert prefix_matching_score(pattern, ids).tolist() == pytest.approx([expected])


def test_prefix_matching_needs_repeats() -> None:
    with pytest.raises(ValueError, match="repeated tokens"):
        prefix_matching_score(uniform_pattern(1, 4), torch.tensor([[1, 2, 3, 4]]))


def test_positional_loss_averages_each_position_over_batches() -> None:
    metric = PositionalLoss(3)
    metric.update(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    metric.update(torch.tensor([[2.0, 2.0, 2.0]]))
    torch.testing.assert_close(metric.compute(), torch.tensor([2.0, 2.0, 2.0]))


def test_induction_strength_is_attention_to_the_correct_minus_the_wrong_label() -> None:
    from ihlab.metrics.heads import induction_strength

    labels = torch.tensor([[-1, 3, -1, 1, -1], [-1, 0, -1, 2, -1]])  # x l x l xq
    target = torch.tensor([1, 0])  # correct label at position 3, then at position 1
    pattern = torch.zeros(2, 3, 5, 5)  # (batch, head, query, key)
    pattern[0, 0, 4, 3] = pattern[1, 0, 4, 1] = 1.0  # head 0: all on the correct label
    pattern[0, 1, 4, 1] = pattern[1, 1, 4, 3] = 1.0  # head 1: all on the wrong one
    pattern[:, 2, 4] = 0.2  # head 2: uniform
    assert induction_strength(pattern, labels, target).tolist() == pytest.approx([1.0, -1.0, 0.0])

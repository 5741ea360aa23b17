"""Per-head attention scores (Olsson et al. 2022), computed from cached attention patterns.

Every score function takes one layer's pattern, (batch, head, query, key), and returns one score
per head. The `*_terms` functions give the same scores sequence by sequence, as (sums (batch,
head), counts (batch,)): summed over sequences and divided, they are the score; kept apart, they
give intervals paired over sequences (ihlab-dissect).
"""

from __future__ import annotations

import torch
from torch import Tensor


def previous_token_score(pattern: Tensor) -> Tensor:
    """Mean attention from each position i >= 1 to position i - 1, per head: (head,)."""
    previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # (batch, head, query - 1)
    return previous.mean(dim=(0, 2))


def induction_targets(ids: Tensor) -> Tensor:
    """Mask of the keys an induction head should attend to: (batch, query, key).

    Key k is a target for query q when k <= q and ids[k - 1] == ids[q]: the token that followed an
    earlier occurrence of the query's token. `ids` is (batch, pos) token identity.
    """
    n = ids.shape[1]
    follows_same = torch.zeros(ids.shape[0], n, n, dtype=torch.bool, device=ids.device)
    follows_same[:, :, 1:] = ids[:, :, None] == ids[:, None, :-1]  # (batch, query, key - 1)
    causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()  # (query, key)
    return follows_same & causal


def prefix_matching_score(pattern: Tensor, ids: Tensor) -> Tensor:
    """Prefix-matching (induction) score per head: (head,).

    For each query whose token occurred earlier, the attention summed over the tokens that followed
    those earlier occurrences; averaged over such queries and the batch. Queries with no earlier
    occurrence are left out, so a perfect induction head scores 1.
    """
    targets = induction_targets(ids)  # (batch, query, key)
    has_target = targets.any(dim=-1)  # (batch, query)
    if not has_target.any():
        raise ValueError("prefix_matching_score needs sequences with repeated tokens.")
    on_target = (pattern * targets[:, None]).sum(dim=-1)  # (batch, head, query)
    weights = has_target[:, None].to(pattern.dtype)  # (batch, 1, query)
    return (on_target * weights).sum(dim=(0, 2)) / weights.sum()


def induction_strength(pattern: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """Singh et al.'s induction strength per head, (head,): the query's attention to the correct
    label's position(s) minus its attention to the other labels' positions, averaged over the batch.

    `labels` is (batch, pos) with -1 at exemplars, `target` (batch,) the query's label; the query is
    the last position.
    """
    query = pattern[:, :, -1]  # (batch, head, key)
    is_label = labels >= 0  # (batch, key)
    correct = (is_label & (labels == target[:, None]))[:, None]  # (batch, 1, key)
    wrong = (is_label & (labels != target[:, None]))[:, None]
    return ((query * correct).sum(-1) - (query * wrong).sum(-1)).mean(dim=0)


def head_scores(
    patterns: list[Tensor],
    ids: Tensor,
    labels: Tensor | None = None,
    target: Tensor | None = None,
) -> dict[str, Tensor]:
    """Scores of every head: name -> (layer, head). Previous-token and prefix-matching always;
    induction strength when few-shot `labels` and `target` are given."""
    scores = {
        "previous_token": torch.stack([previous_token_score(p) for p in patterns]),
        "prefix_matching": torch.stack([prefix_matching_score(p, ids) for p in patterns]),
    }
    if labels is not None and target is not None:
        scores["induction_strength"] = torch.stack(
            [induction_strength(p, labels, target) for p in patterns]
        )
    return scores


HeadTerms = tuple[Tensor, Tensor]  # sums (batch, ...), counts (batch,)


def previous_token_terms(pattern: Tensor) -> HeadTerms:
    """`previous_token_score` sequence by sequence."""
    previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # (batch, head, query - 1)
    counts = torch.full((pattern.shape[0],), previous.shape[-1], dtype=torch.float64)
    return previous.double().sum(dim=-1), counts.to(pattern.device)


def prefix_matching_terms(pattern: Tensor, ids: Tensor) -> HeadTerms:
    """`prefix_matching_score` sequence by sequence: the attention to the targets summed over
    a sequence's queries that have one, and how many such queries it has."""
    targets = induction_targets(ids)  # (batch, query, key)
    has_target = targets.any(dim=-1)  # (batch, query)
    on_target = (pattern * targets[:, None]).sum(dim=-1)  # (batch, head, query)
    sums = (on_target.double() * has_target[:, None]).sum(dim=-1)  # (batch, head)
    return sums, has_target.double().sum(dim=-1)


def induction_strength_terms(pattern: Tensor, labels: Tensor, target: Tensor) -> HeadTerms:
    """`induction_strength` sequence by sequence (one query per sequence)."""
    query = pattern[:, :, -1].double()  # (batch, head, key)
    is_label = labels >= 0  # (batch, key)
    correct = (is_label & (labels == target[:, None]))[:, None]  # (batch, 1, key)
    wrong = (is_label & (labels != target[:, None]))[:, None]
    values = (query * correct).sum(-1) - (query * wrong).sum(-1)  # (batch, head)
    return values, torch.ones(pattern.shape[0], dtype=torch.float64, device=pattern.device)


def head_score_terms(
    patterns: list[Tensor],
    ids: Tensor,
    labels: Tensor | None = None,
    target: Tensor | None = None,
) -> dict[str, HeadTerms]:
    """`head_scores` sequence by sequence: name -> (sums (batch, layer, head), counts (batch,))."""

    def stacked(terms: list[HeadTerms]) -> HeadTerms:
        return torch.stack([t[0] for t in terms], dim=1), terms[0][1]

    out = {
        "previous_token": stacked([previous_token_terms(p) for p in patterns]),
        "prefix_matching": stacked([prefix_matching_terms(p, ids) for p in patterns]),
    }
    if labels is not None and target is not None:
        out["induction_strength"] = stacked(
            [induction_strength_terms(p, labels, target) for p in patterns]
        )
    return out

"""Per-head attention scores (Olsson et al. 2022), computed from cached attention patterns.

Every function takes one layer's pattern, (batch, head, query, key), and returns one score per head.
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

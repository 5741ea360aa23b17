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


def head_scores(patterns: list[Tensor], ids: Tensor) -> dict[str, Tensor]:
    """Previous-token and prefix-matching scores of every head: name -> (layer, head)."""
    return {
        "previous_token": torch.stack([previous_token_score(p) for p in patterns]),
        "prefix_matching": torch.stack([prefix_matching_score(p, ids) for p in patterns]),
    }

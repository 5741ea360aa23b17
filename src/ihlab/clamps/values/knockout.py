"""Attention knockout of the induction pattern (Crosbie & Shutova): in the selected heads, -inf
scores from every query to each key that follows an earlier occurrence of the query's token, so
softmax gives those keys no attention. Hand-built: no gradient through the value.

The keys compared are `inputs["knockout_keys"]` where the caller supplies them (the probe: the
token id, or a category's key on a category word) and the tokens otherwise. When the keys cover
more positions than the site's queries (the probe's shared prompt prefix), the queries are the
last positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register
from ihlab.metrics.heads import induction_targets


def knockout_mask(keys: Tensor) -> Tensor:
    """(batch, query, key) True where attention is knocked out: key k follows an earlier position
    k - 1 whose knockout key equals the query's (same token or same category)."""
    return induction_targets(keys)


@register
class Knockout(ClampValue):
    """-inf at the knocked-out (query, key) entries of the selected heads' scores."""

    name = "knockout"

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if where.kind != "attn.scores":
            raise where.fail(f"value knockout needs an attn.scores site, got {where.site!r}.")
        if not {"tokens", "knockout_keys"} & where.inputs:
            raise where.fail("value knockout needs token data (data=repeated_tokens).")

    def entries(self, target: Target, ctx: ClampContext, x: Tensor) -> Tensor:
        keys = ctx.inputs.get("knockout_keys", ctx.inputs.get("tokens"))
        blocked = knockout_mask(keys)[:, -x.shape[2] :]  # (batch, query, key)
        return target.mask(x) & blocked[:, None]

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return torch.full((), float("-inf"), dtype=x.dtype, device=x.device)

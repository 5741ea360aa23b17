"""Hand-built attention patterns: previous-token heads, induction heads, and the few-shot query's
attention to the correct label (Singh et al.'s subcircuit B). No gradient through the value: the
clamped head's queries and keys stop learning, its values still learn through the pattern."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Target, axis_mask
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import PATTERN_SITES, ClampValue, Where, register


def _need_pattern(cls: type[ClampValue], where: Where) -> None:
    if where.kind not in PATTERN_SITES:
        raise where.fail(f"value {cls.name} needs an attn.pattern site, got {where.site!r}.")


@functools.lru_cache(maxsize=16)
def _previous_token_pattern(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    rows = torch.arange(n, device=device)
    pattern = torch.zeros(n, n, dtype=dtype, device=device)
    pattern[rows, (rows - 1).clamp(min=0)] = 1.0
    return pattern


def previous_token_pattern(n: int, like: Tensor) -> Tensor:
    """(query, key): each position attends 1.0 to the one before it, position 0 to itself."""
    return _previous_token_pattern(n, like.dtype, like.device)


def induction_pattern(tokens: Tensor, like: Tensor) -> Tensor:
    """(batch, 1, query, key): attend uniformly to every token that followed an earlier occurrence
    of the query's token; queries with no earlier occurrence attend to position 0 (BOS)."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (batch, query, key) token_q == token_k
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # key < query
    hits = torch.zeros_like(same)
    hits[:, :, 1:] = (same & earlier)[:, :, :-1]  # attend to key + 1 where token_key == token_q
    none = ~hits.any(dim=-1, keepdim=True)  # (batch, query, 1)
    hits[:, :, :1] |= none
    pattern = hits.to(like.dtype)
    return (pattern / pattern.sum(dim=-1, keepdim=True))[:, None]


def match_row(labels: Tensor, target: Tensor, strength: float, like: Tensor) -> Tensor:
    """(batch, 1, key): the query's attention, `strength` on the correct label's positions and the
    rest on the other labels' positions (each shared evenly), 0 on exemplars."""
    is_label = labels >= 0  # (batch, pos)
    correct = is_label & (labels == target[:, None])
    wrong = is_label & ~correct
    row = strength * correct / correct.sum(1, keepdim=True).clamp(min=1) + (1 - strength) * (
        wrong / wrong.sum(1, keepdim=True).clamp(min=1)
    )
    return row.to(like.dtype)[:, None]


@register
class PreviousToken(ClampValue):
    """Every query attends 1.0 to the position before it (position 0 to itself)."""

    name = "previous_token"

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        _need_pattern(cls, where)

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return previous_token_pattern(x.shape[-1], x)


@register
class Induction(ClampValue):
    """The ideal induction pattern of the batch's tokens (`induction_pattern`)."""

    name = "induction"

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        _need_pattern(cls, where)
        if "tokens" not in where.inputs:
            raise where.fail("value induction needs token data (data=repeated_tokens).")

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return induction_pattern(ctx.inputs["tokens"], x)


@register
class Match(ClampValue):
    """The few-shot query's row: `strength` on the correct label's positions (`match_row`)."""

    name = "match"
    fields = ("strength",)

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        _need_pattern(cls, where)
        if not {"labels", "target"} <= where.inputs:
            raise where.fail("value match needs few-shot data (it attends to the correct label).")
        if not 0.0 <= c.strength <= 1.0:
            raise where.fail(f"strength={c.strength} must be in [0, 1].")

    def entries(self, target: Target, ctx: ClampContext, x: Tensor) -> Tensor:
        return target.mask(x) & axis_mask(x, 2, [-1])  # the query's row

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        row = match_row(ctx.inputs["labels"], ctx.target, self.cfg.strength, x)
        return row[:, :, None]  # (batch, 1, 1, key)

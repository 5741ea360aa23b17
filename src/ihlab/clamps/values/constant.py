"""Hand-built constants: zero (ablation), any constant, and zero on every head but the named."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import (
    PATTERN_SITES,
    ClampValue,
    Where,
    need_ablation_site,
    register,
)


@register
class Zero(ClampValue):
    """0 at the selected entries (zero ablation). No gradient through the value."""

    name = "zero"

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)


@register
class Constant(ClampValue):
    """`constant` at the selected entries of any site but a pattern (whose rows must sum to 1)."""

    name = "constant"
    fields = ("constant",)

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if where.kind in PATTERN_SITES:
            raise where.fail(
                f"value constant needs any site but attn.pattern (a pattern's rows must sum to "
                f"1), got {where.site!r}."
            )
        if not math.isfinite(c.constant):
            raise where.fail("constant must be finite.")

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        return torch.full((), self.cfg.constant, dtype=x.dtype, device=x.device)


@register
class AblateOthers(Zero):
    """0 on every head of an attn.v or attn.z site except the named ones (Singh et al.'s
    single-head runs: only the kept heads contribute)."""

    name = "ablate_others"

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        need_ablation_site(cls.name, where)
        if c.heads is None and c.select is None:
            raise where.fail("value ablate_others needs heads (or select): the heads to keep.")

    def heads(self, chosen: list[int], n_heads: int) -> list[int]:
        return [h for h in range(n_heads) if h not in chosen]

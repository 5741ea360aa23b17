"""Pattern- and value-preserving ablations: zero the selected heads while every later layer keeps
the attention patterns (or values) of a clean pass, so the ablation removes the heads' direct
contribution only. The zeroed entries pass no gradient; the later layers' held patterns (values)
come from this model's clean pass, so gradient flows through them."""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.clamps.context import Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, need_ablation_site, register
from ihlab.sites import Intervention


def hold(value: Tensor) -> Intervention:
    """A site function that replaces the whole site by `value`."""
    return lambda x: value


class _Preserving(ClampValue):
    needs_pass = True
    frozen: str  # the later layers' site kind held at its clean value

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        need_ablation_site(cls.name, where)

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        later = range((target.layer or 0) + 1, aux.n_layers)
        frozen = [f"blocks.{i}.{self.frozen}" for i in later]
        hooks = aux.direct_hooks(frozen)
        aux.forward(aux.ctx.inputs, hooks)
        held = [(site, hold(hooks.cache[site])) for site in frozen]
        return [(target.site, target.holding(torch.zeros(()))), *held]


@register
class PatternPreserving(_Preserving):
    """Zero the heads; later layers keep their clean attention patterns."""

    name = "pattern_preserving"
    frozen = "attn.pattern"


@register
class ValuePreserving(_Preserving):
    """Zero the heads; later layers keep their clean values."""

    name = "value_preserving"
    frozen = "attn.v"

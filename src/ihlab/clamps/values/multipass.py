"""Singh et al.'s layer-1 clamp (multi-pass): a first pass whose residual after layer l is the
embeddings plus the one-position-shifted embeddings computes every later layer's attention
patterns; the final pass holds that residual at the plain embeddings and the later patterns at the
first pass's. Both passes are this model's: gradient flows through the patterns and embeddings."""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.clamps.context import Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register
from ihlab.clamps.values.preserving import hold
from ihlab.sites import Intervention

EMBEDDINGS = "blocks.0.resid_pre"  # what the multi-pass clamp calls the embeddings


def shifted(x: Tensor) -> Tensor:
    """(batch, pos, d): x one position later, position 0 keeping its own value."""
    return torch.cat([x[:, :1], x[:, :-1]], dim=1)


@register
class Multipass(ClampValue):
    """blocks.l.resid_post held as described above (l below the last layer)."""

    name = "multipass"
    needs_pass = True
    differentiable = True

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if where.kind != "resid_post" or where.layer is None or where.layer >= where.n_layers - 1:
            raise where.fail(
                f"value multipass clamps blocks.l.resid_post with a later layer to feed "
                f"(l < {where.n_layers - 1}), got {where.site!r}."
            )

    def reads(self) -> list[str]:
        return [EMBEDDINGS]

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        later = range((target.layer or 0) + 1, aux.n_layers)
        patterns = [f"blocks.{i}.attn.pattern" for i in later]
        hooks = aux.direct_hooks([EMBEDDINGS, *patterns])
        embed = hooks.cache
        hooks.add_intervention(
            target.site, target.holding_fn(lambda x: embed[EMBEDDINGS] + shifted(embed[EMBEDDINGS]))
        )
        aux.forward(aux.ctx.inputs, hooks)
        held = [(site, hold(hooks.cache[site])) for site in patterns]
        final = aux.final.cache
        return [(target.site, target.holding_fn(lambda x: final[EMBEDDINGS])), *held]

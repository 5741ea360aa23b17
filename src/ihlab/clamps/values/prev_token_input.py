"""Singh et al.'s layer-1 clamp (subcircuit A, their `perfect_prev_token_input`).

Two passes of this model:
1. the pattern pass replaces the whole residual after layer l by the previous-token input the
   layer-1 heads would ideally write: every position but the first and the last holds its
   predecessor's embedding, while the first and the last (the query) keep their own, so the query
   is not told which label precedes it. Every later layer computes its attention scores from it;
2. the clamped pass holds that residual at the plain embeddings (layer l's heads are computed and
   discarded: they get no gradient) and every later layer's scores, hence its patterns, at the
   pattern pass's. Values and the skip path see the plain embeddings.

Both passes are this model's, so gradient reaches the later layers' queries and keys through the
held scores and the embeddings through both passes. A copy clamp reading a later layer's scores
reads the pattern pass's, as in the paper's layer 1 + copy condition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.clamps.context import Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register
from ihlab.clamps.values.preserving import hold
from ihlab.sites import Intervention

EMBEDDINGS = "blocks.0.resid_pre"  # the embeddings (plus learned positions, if any)


def previous_token_input(embed: Tensor) -> Tensor:
    """(batch, pos, d): positions 1 .. n-2 hold their predecessor's embedding; the first and the
    last position keep their own."""
    return torch.cat([embed[:, :1], embed[:, :-2], embed[:, -1:]], dim=1)


@register
class PrevTokenInput(ClampValue):
    """blocks.l.resid_post held as described above (l below the last layer; few-shot data)."""

    name = "prev_token_input"
    needs_pass = True
    differentiable = True

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if where.kind != "resid_post" or where.layer is None or where.layer >= where.n_layers - 1:
            raise where.fail(
                f"value prev_token_input clamps blocks.l.resid_post with a later layer to feed "
                f"(l < {where.n_layers - 1}), got {where.site!r}."
            )
        if not {"labels", "target"} <= where.inputs:
            raise where.fail(
                "value prev_token_input needs few-shot data: only the last position (the query) "
                "keeps its own embedding."
            )
        if c.positions is not None:
            raise where.fail(
                "value prev_token_input replaces the whole residual; remove positions."
            )

    def reads(self) -> list[str]:
        return [EMBEDDINGS]

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        later = range((target.layer or 0) + 1, aux.n_layers)
        scores = [f"blocks.{i}.attn.scores" for i in later]
        hooks = aux.direct_hooks([EMBEDDINGS, *scores])
        embed = hooks.cache
        perfected = target.holding_fn(lambda x: previous_token_input(embed[EMBEDDINGS]))
        hooks.add_intervention(target.site, perfected)
        aux.forward(aux.ctx.inputs, hooks)
        held = [(site, hold(hooks.cache[site])) for site in scores]
        final = aux.final.cache
        return [(target.site, target.holding_fn(lambda x: final[EMBEDDINGS])), *held]

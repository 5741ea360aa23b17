"""Singh et al.'s perfect copy (subcircuit C): the few-shot query's logits read off the attention
scores of chosen heads, so the model's own heads decide the label. Gradient flows through the
scores (the value is computed by this model), none through the unembedding it replaces."""

from __future__ import annotations

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Target, axis_mask
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register

NEG_INF_LOGIT = -1e9  # a label absent from the context


def perfect_copy(scores: Tensor, labels: Tensor, heads: Tensor, n_labels: int) -> Tensor:
    """(batch, n_labels) query logits from the heads' pre-softmax scores to the label positions.

    logit[label] = logsumexp of the query's scores (mean over `heads`) to the positions holding
    that label, so softmax(logits) is the head's attention restricted to the labels; a label not in
    the context gets -1e9. With one position per label this is Singh et al.'s perfect copy.
    """
    query = scores[:, heads, -1].mean(dim=1)  # (batch, key)
    is_label = labels >= 0  # (batch, key)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), n_labels).bool()  # (b, key, label)
    onehot &= is_label[..., None]
    per_label = query[..., None].masked_fill(~onehot, float("-inf"))  # (batch, key, label)
    logits = per_label.logsumexp(dim=1)  # (batch, label)
    return logits.masked_fill(~onehot.any(dim=1), NEG_INF_LOGIT)


@register
class Copy(ClampValue):
    """The query's logits = `perfect_copy` of the `source` scores' heads."""

    name = "copy"
    fields = ("source",)
    differentiable = True

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if c.site != "logits" or not {"labels", "target"} <= where.inputs:
            raise where.fail("value copy clamps site 'logits' on few-shot data.")
        if c.source not in where.sites or not c.source.endswith(".attn.scores"):
            raise where.fail(
                f"source={c.source!r} must be an attn.scores site of this model, e.g. "
                "blocks.1.attn.scores (the heads whose scores become the logits)."
            )
        if c.positions is not None:
            raise where.fail("value copy acts at the query; remove positions.")

    @classmethod
    def head_site(cls, c: ClampConfig) -> str:
        return c.source or c.site

    def reads(self) -> list[str]:
        return [self.cfg.source]

    def entries(self, target: Target, ctx: ClampContext, x: Tensor) -> Tensor:
        return axis_mask(x, 1, [-1])  # the query

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        heads = torch.tensor(target.heads, device=x.device)
        scores = store[self.cfg.source]  # (batch, head, query, key)
        return perfect_copy(scores, ctx.inputs["labels"], heads, x.shape[-1])[:, None]

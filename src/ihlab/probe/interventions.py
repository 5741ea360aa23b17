"""Interventions on selected heads of a pretrained model: the lab's clamp values, per layer.

- ablation at `blocks.{l}.attn.z`: value `zero` (the head's d_head slice of the output projection's
  input set to 0, Crosbie & Shutova's appendix) or `mean` (held at its mean over reference prompts);
- knockout at `blocks.{l}.attn.scores`: value `knockout`, -inf before the softmax from every token
  to the tokens that followed earlier occurrences of the same token or the same category, in the
  selected heads only (the paper's attention knockout of the induction pattern).
Both are `ihlab.values` classes applied through the same `Clamp` and `SiteHooks` as in training.

Heads are selected as the top p% of all (layer, query head) pairs by prefix matching,
n = ceil(layers x heads x p / 100), or listed explicitly; the random control draws, per layer, as
many heads as the selection has there from that layer's other heads (seeded).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from enum import Enum

from torch import Tensor

from ihlab.clamps import Clamp, ClampConfig, ClampContext
from ihlab.errors import ConfigError
from ihlab.sites import SiteHooks, head_name, parse_head_name

Head = tuple[int, int]  # (layer, query head)
MODE_SITES = {"ablate": "attn.z", "knockout": "attn.scores"}  # where each kind of condition acts


class Ablation(str, Enum):
    """The clamp value an ablation holds heads at (names of `ihlab.values`)."""

    zero = "zero"
    mean = "mean"


def top_heads(scores: Tensor, percent: float) -> list[Head]:
    """The top `percent`% of (layer, head) pairs by score, best first."""
    n_layers, n_heads = scores.shape
    n = math.ceil(n_layers * n_heads * percent / 100)
    order = scores.flatten().argsort(descending=True)[:n]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def parse_head(name: str) -> Head:
    """A head of `select.heads`, named as the lab names heads (`sites.head_name`): L18H6."""
    head = parse_head_name(name)
    if head is None:
        raise ConfigError(
            f"select.heads: head {name!r}: write heads as L<layer>H<head>, e.g. L18H6."
        )
    return head


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, key: str) -> None:
    """Raise a ConfigError naming `key` for a head a model of this shape does not have."""
    for layer, head in heads:
        if not (layer < n_layers and head < n_heads):
            raise ConfigError(
                f"{key}: head {head_name(layer, head)} does not exist: the model has {n_layers} "
                f"layers x {n_heads} heads. Fix: name heads L0H0 to "
                f"{head_name(n_layers - 1, n_heads - 1)}."
            )


def random_heads(selected: Sequence[Head], n_heads: int, seed: int) -> list[Head]:
    """Per layer, as many heads as `selected` has there, drawn from that layer's other heads."""
    rng = random.Random(seed)
    per_layer = Counter(layer for layer, _ in selected)
    chosen = []
    for layer, count in sorted(per_layer.items()):
        others = [h for h in range(n_heads) if (layer, h) not in selected]
        chosen += [(layer, h) for h in sorted(rng.sample(others, min(count, len(others))))]
    return chosen


def head_clamps(heads: Sequence[Head], mode: str, value: str, n_heads: int) -> list[Clamp]:
    """One clamp per layer holding `heads` at `value`, at the site of `mode` (MODE_SITES)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [
        Clamp(
            f"L{layer}",
            ClampConfig(site=f"blocks.{layer}.{MODE_SITES[mode]}", value=value, heads=sorted(hs)),
            n_heads,
        )
        for layer, hs in sorted(by_layer.items())
    ]


def clamp_hooks(
    clamps: Sequence[Clamp], keys: Tensor | None = None, means: dict[int, Tensor] | None = None
) -> SiteHooks:
    """The hooks of a forward with `clamps` active. `keys` (batch, key): the knockout keys of the
    whole sequences (see `evaluate.encode`); `means[layer]` (head, d_head): every head's mean
    output over reference prompts, what a `mean` value holds (the probe's reference pass, averaged
    over positions too, since prompts differ in length)."""
    inputs = {} if keys is None else {"knockout_keys": keys}
    ctx = ClampContext(inputs, None, 0)
    hooks = SiteHooks()
    for clamp in clamps:
        if clamp.needs_pass:
            if means is None or clamp.layer not in means:
                raise ValueError(f"value {clamp.cfg.value} at {clamp.site} needs head means")
            fn = clamp.with_value(means[clamp.layer][None, None])  # (1, 1, head, d_head)
        else:
            fn = clamp.direct(ctx, hooks.cache)
        hooks.add_intervention(clamp.site, fn)
    return hooks

"""Which heads the probe intervenes on: the top p% of all (layer, query head) pairs by prefix
matching, n = ceil(layers x heads x p / 100), or heads listed by name; and the random control,
which draws, per layer, as many heads as the selection has there from that layer's other heads
(seeded)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

from torch import Tensor

from ihlab.errors import ConfigError
from ihlab.probe.conditions import Head
from ihlab.sites import parse_head_name


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


def random_heads(selected: Sequence[Head], n_heads: int, seed: int) -> list[Head]:
    """Per layer, as many heads as `selected` has there, drawn from that layer's other heads."""
    rng = random.Random(seed)
    per_layer = Counter(layer for layer, _ in selected)
    chosen = []
    for layer, count in sorted(per_layer.items()):
        others = [h for h in range(n_heads) if (layer, h) not in selected]
        chosen += [(layer, h) for h in sorted(rng.sample(others, min(count, len(others))))]
    return chosen

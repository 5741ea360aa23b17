"""Interventions on selected heads of a pretrained model, in the lab's site vocabulary.

- ablation at `blocks.{l}.attn.z`: `zero` (the head's d_head slice of the output projection's input
  set to 0, Crosbie & Shutova's appendix) or `mean` (replaced by its mean over reference prompts);
- knockout at `blocks.{l}.attn.scores`: in the selected heads only, -inf before the softmax from
  every token to the tokens that followed earlier occurrences of the same token or the same
  category (the paper's attention knockout of the induction pattern).

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

from ihlab.errors import ConfigError
from ihlab.metrics.heads import induction_targets
from ihlab.probe.attention import ProbeState
from ihlab.sites import head_name, parse_head_name

Head = tuple[int, int]  # (layer, query head)


class Ablation(str, Enum):
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


def ablation_state(
    heads: Sequence[Head], kind: Ablation, means: dict[int, Tensor] | None = None
) -> ProbeState:
    """Zero or mean ablation of `heads` at their z (means[layer]: (head, d_head))."""
    state = ProbeState()
    for layer, head in heads:
        value: str | Tensor = "zero" if kind == Ablation.zero else means[layer][head]
        state.z_override.setdefault(layer, {})[head] = value
    return state


def knockout_mask(keys: Tensor) -> Tensor:
    """(batch, query, key) True where attention is knocked out: key k follows an earlier position
    k - 1 whose knockout key equals the query's (same token or same category)."""
    return induction_targets(keys)


def knockout_state(heads: Sequence[Head], blocked: Tensor) -> ProbeState:
    """Attention knockout in `heads` with a (batch, query, key) mask."""
    state = ProbeState()
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    for layer, layer_heads in by_layer.items():
        state.knockout[layer] = (sorted(layer_heads), blocked)
    return state

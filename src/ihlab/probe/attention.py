"""One attention function for every supported Hugging Face architecture, with the lab's sites.

Llama, Qwen2, GPT-2 and GPT-NeoX (and most current models) compute attention through
transformers' `AttentionInterface`, handing it per-head queries (batch, q_heads, query, d_head) and
keys/values (batch, kv_heads, key, d_head). Registering `ihlab` there gives one place, for all of
them, to read each query head's pattern (`blocks.{l}.attn.pattern`, grouped-query KV heads
expanded), to knock out attention from chosen queries to chosen keys in chosen heads (an additive
-inf before the softmax), and to replace a head's output `blocks.{l}.attn.z`: its d_head slice of
the output projection's input, so the same code ablates one query head of a GQA model without
touching its KV-group siblings; and to keep or supply the keys and values of a token prefix that
many prompts share, so it is computed once. What to do in a forward is set with
`probing(state)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

NAME = "ihlab"


@dataclass
class ProbeState:
    """What the attention function does in the forwards inside `probing(state)`.

    - capture_patterns: keep every layer's pattern in `patterns[layer]` (batch, head, query, key);
    - capture_z: keep every layer's head outputs in `z[layer]` (batch, query, head, d_head), after
      any override;
    - knockout[layer] = (heads, blocked): for those heads, blocked (batch, query, key) entries get
      -inf scores (attention knockout);
    - z_override[layer][head]: "zero" or a (d_head,) vector that replaces the head's output at every
      position (zero / mean ablation);
    - pattern_override[layer][head]: a (batch, query, key) pattern the head uses instead of its own
      (a clamp at blocks.{l}.attn.pattern);
    - z_sums: if not None, accumulate per layer the sum of z over positions (batch and query), with
      `z_count` positions, for mean ablation;
    - capture_kv: keep every layer's keys and values in `kv[layer]`, each (batch, kv_head, key,
      d_head) after positional embedding;
    - prefix_kv[layer]: keys and values (1, kv_head, prefix, d_head) of a prefix every sequence of
      the batch continues (its positions must follow the prefix's): put before the forward's own,
      visible to every query. Knockout masks then cover prefix + own keys.
    """

    capture_patterns: bool = False
    patterns: dict[int, Tensor] = field(default_factory=dict)
    capture_z: bool = False
    z: dict[int, Tensor] = field(default_factory=dict)
    knockout: dict[int, tuple[list[int], Tensor]] = field(default_factory=dict)
    z_override: dict[int, dict[int, str | Tensor]] = field(default_factory=dict)
    pattern_override: dict[int, dict[int, Tensor]] = field(default_factory=dict)
    z_sums: dict[int, Tensor] | None = None
    z_count: int = 0
    capture_kv: bool = False
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    prefix_kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


_STATE: ContextVar[ProbeState | None] = ContextVar("ihlab_probe_state", default=None)


@contextlib.contextmanager
def probing(state: ProbeState) -> Iterator[ProbeState]:
    """Forwards of an `ihlab`-attention model inside this block follow `state`."""
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def ihlab_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Eager attention with the probe's sites; returns z (batch, query, head, d_head), pattern."""
    state = _STATE.get()
    layer = int(getattr(module, "layer_idx", -1))
    if state is not None:
        key, value, attention_mask = _with_prefix(state, layer, key, value, attention_mask)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (batch, head, key, d_head)
    value = value.repeat_interleave(groups, dim=1)  # (batch, head, key, d_head)
    scores = (query @ key.transpose(2, 3)) * scaling  # (batch, head, query, key)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., : key.shape[-2]], float("-inf"))
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    if state is not None and layer in state.knockout:
        heads, blocked = state.knockout[layer]
        index = torch.tensor(heads, device=scores.device)
        scores[:, index] = scores[:, index].masked_fill(blocked[:, None], float("-inf"))
    pattern = scores.float().softmax(dim=-1).to(query.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    if state is not None and layer in state.pattern_override:
        pattern = pattern.clone()
        for head, held in state.pattern_override[layer].items():
            pattern[:, head] = held.to(pattern)
    z = (pattern @ value).transpose(1, 2)  # (batch, query, head, d_head)
    if state is not None:
        z = _apply(state, layer, pattern, z)
    return z.contiguous(), pattern


def _with_prefix(
    state: ProbeState, layer: int, key: Tensor, value: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keep this forward's keys and values, and/or put the shared prefix's before them."""
    if state.capture_kv:
        state.kv[layer] = (key, value)
    if layer not in state.prefix_kv:
        return key, value, mask
    prefix_key, prefix_value = state.prefix_kv[layer]
    batch, n = key.shape[0], prefix_key.shape[2]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    if mask is not None:  # the prefix is visible to every query
        mask = nn.functional.pad(mask, (n, 0), value=True if mask.dtype == torch.bool else 0.0)
    return key, value, mask


def _apply(state: ProbeState, layer: int, pattern: Tensor, z: Tensor) -> Tensor:
    if state.capture_patterns:
        state.patterns[layer] = pattern.detach()
    if state.z_sums is not None:
        total = z.detach().sum(dim=(0, 1))  # (head, d_head)
        state.z_sums[layer] = state.z_sums.get(layer, 0) + total
        if layer == 0:
            state.z_count += z.shape[0] * z.shape[1]
    overrides = state.z_override.get(layer)
    if overrides:
        z = z.clone()
        for head, value in overrides.items():
            z[:, :, head] = 0.0 if isinstance(value, str) else value.to(z)
    if state.capture_z:
        state.z[layer] = z.detach()
    return z


def register() -> None:
    """Make `attn_implementation="ihlab"` available to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, ihlab_attention)
    AttentionMaskInterface.register(NAME, eager_mask)

"""One attention function for every supported Hugging Face architecture, with the lab's sites.

Llama, Qwen2, GPT-2 and GPT-NeoX (and most current models) compute attention through
transformers' `AttentionInterface`, handing it per-head queries (batch, q_heads, query, d_head) and
keys/values (batch, kv_heads, key, d_head). Registering `ihlab` there gives one place, for all of
them, to pass each layer's `blocks.{l}.attn.scores`, `.attn.pattern` and `.attn.z` through the
lab's `SiteHooks`, the hub the lab's own model uses, so the lab's clamp values (`ihlab.values`)
cache and intervene on pretrained models exactly as in training: grouped-query KV heads are
expanded, so every site has one entry per query head, and z is a head's d_head slice of the output
projection's input, so ablating one query head of a GQA model leaves its KV-group siblings alone.
The function also keeps or supplies the keys and values of a token prefix that many prompts share,
so it is computed once. What to do in a forward is set with `probing(state)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ihlab.sites import NO_HOOKS, SiteHooks

NAME = "ihlab"


@dataclass
class ProbeState:
    """What the attention function does in the forwards inside `probing(state)`.

    - hooks: the sites' hub (what to cache, what to intervene on), as in the lab's model;
    - capture_kv: keep every layer's keys and values in `kv[layer]`, each (batch, kv_head, key,
      d_head) after positional embedding;
    - prefix_kv[layer]: keys and values (1, kv_head, prefix, d_head) of a prefix every sequence of
      the batch continues (its positions must follow the prefix's): put before the forward's own,
      visible to every query. Sites then have prefix + own keys and own queries.
    """

    hooks: SiteHooks = field(default_factory=SiteHooks)
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
    hooks = NO_HOOKS
    if state is not None:
        key, value, attention_mask = _with_prefix(state, layer, key, value, attention_mask)
        hooks = state.hooks
    on = bool(hooks.names)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (batch, head, key, d_head)
    value = value.repeat_interleave(groups, dim=1)  # (batch, head, key, d_head)
    scores = (query @ key.transpose(2, 3)) * scaling  # (batch, head, query, key)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., : key.shape[-2]], float("-inf"))
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    if on:
        scores = hooks(f"blocks.{layer}.attn.scores", scores)
    pattern = scores.float().softmax(dim=-1).to(query.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    if on:
        pattern = hooks(f"blocks.{layer}.attn.pattern", pattern)
    z = (pattern @ value).transpose(1, 2)  # (batch, query, head, d_head)
    if on:
        z = hooks(f"blocks.{layer}.attn.z", z)
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


def register() -> None:
    """Make `attn_implementation="ihlab"` available to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, ihlab_attention)
    AttentionMaskInterface.register(NAME, eager_mask)

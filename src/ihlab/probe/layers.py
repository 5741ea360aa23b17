"""Run a Hugging Face model from layer `l` on, given the residual stream at that layer's input.

Conditions that intervene only in layers >= l compute exactly what the clean model computes below
l, so the probe computes those layers once per batch (`capturing`) and runs each condition from l
(`starting_at`). Both work through the model's own forward, so masks, rotary embeddings, the final
norm and `logits_to_keep` stay the architecture's: the layers below l have their `forward` replaced
by a pass-through for the duration, and a pre-hook hands layer l the cached residual. Every
supported architecture (Llama, Qwen2, GPT-2, GPT-NeoX) calls its decoder layers with the hidden
states first and takes a tensor back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor, nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The base model's decoder layers, in order (`layers` or `h`)."""
    base = model.base_model
    for name in ("layers", "h"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"no decoder layers found in {type(base).__name__}.")


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def capturing(layers: nn.ModuleList, at: Iterable[int]) -> Iterator[dict[int, Tensor]]:
    """Inside the block, every forward stores the residual at the input of layers `at`."""
    store: dict[int, Tensor] = {}
    handles = []
    for index in set(at):

        def keep(module: nn.Module, args: tuple, kwargs: dict, index: int = index) -> None:
            store[index] = _hidden(args, kwargs)

        handles.append(layers[index].register_forward_pre_hook(keep, with_kwargs=True))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _pass_through(hidden_states: Tensor, *args: object, **kwargs: object) -> Tensor:
    return hidden_states


@contextlib.contextmanager
def starting_at(layers: nn.ModuleList, start: int, residual: Tensor) -> Iterator[None]:
    """Inside the block, forwards skip layers < `start` and give layer `start` `residual` as its
    input (the batch must be the one `residual` was captured on)."""
    if start == 0:
        yield
        return
    skipped = list(layers[:start])
    own = [layer.__dict__.get("forward") for layer in skipped]  # accelerate wraps forward here
    for layer in skipped:
        layer.forward = _pass_through

    def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (residual, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": residual}

    handle = layers[start].register_forward_pre_hook(inject, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for layer, forward in zip(skipped, own, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward

"""A head ablated by hand for the dissection tests: a PyTorch forward pre-hook on the output
projection, independent of the lab's sites and clamps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def hand_ablated_loss(model: Any, batch: dict[str, Tensor], layer: int, head: int | None) -> Tensor:
    """Per-target losses with one head's output zeroed by a hook on the output projection's
    input (the head's d_head slice), not by the lab's sites or clamps."""
    d_head = model.cfg.head_dim
    handle = None
    if head is not None:

        def zero(module: Any, args: tuple[Tensor]) -> tuple[Tensor]:
            z = args[0].clone()
            z[..., head * d_head : (head + 1) * d_head] = 0
            return (z,)

        handle = model.blocks[layer].attn.out.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            logits = model({"tokens": batch["tokens"][:, :-1]})
    finally:
        if handle is not None:
            handle.remove()
    return F.cross_entropy(logits.transpose(1, 2), batch["tokens"][:, 1:], reduction="none")

"""What a clamp value acts on and what it may read.

- `Target`: the entries a clamp holds: its site, layer and site kind, the heads and positions it
  selects, and the mask of those entries;
- `ClampContext`: one forward's inputs, the few-shot target, the training step, and the
  reference the mean clamps average over;
- `Passes`: what a value computed by another forward may use to run it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ihlab.sites import HEAD_AXIS, Intervention, SiteHooks, parse_site

POSITION_AXIS = {"attn.scores": 2, "attn.pattern": 2}  # query positions; other sites: axis 1


def axis_mask(like: Tensor, axis: int, index: Sequence[int]) -> Tensor:
    """Boolean mask (1, .., n, .., 1), True at `index` on `axis` (negatives count from the end)."""
    return _cached_axis_mask(like.dim(), like.shape[axis], axis, tuple(index), like.device)


@functools.lru_cache(maxsize=256)
def _cached_axis_mask(
    dims: int, n: int, axis: int, index: tuple[int, ...], device: torch.device
) -> Tensor:
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    keep[torch.tensor([i % n for i in index], dtype=torch.long, device=device)] = True
    shape = [1] * dims
    shape[axis] = n
    return keep.view(shape)


@dataclass
class Target:
    """The entries a clamp holds: `heads` of a per-head site (None: a site without a head axis)
    and `positions` (None: all). Masks are cached per shape and device."""

    site: str
    heads: list[int] | None = None
    positions: list[int] | None = None
    _masks: dict[tuple[Any, ...], Tensor] = field(default_factory=dict, repr=False)

    @property
    def layer(self) -> int | None:
        return parse_site(self.site)[0]

    @property
    def kind(self) -> str:
        return parse_site(self.site)[1]

    def mask(self, like: Tensor) -> Tensor:
        """Boolean mask of the selected heads x positions, broadcastable to `like`."""
        key = (like.shape[1:], like.device)
        if key not in self._masks:
            mask = torch.ones([1] * like.dim(), dtype=torch.bool, device=like.device)
            head_axis = HEAD_AXIS.get(self.kind)
            if head_axis is not None and self.heads is not None:
                mask = mask & axis_mask(like, head_axis, self.heads)
            if self.positions is not None:
                axis = POSITION_AXIS.get(self.kind, 1)
                mask = mask & axis_mask(like, axis, self.positions)
            self._masks[key] = mask
        return self._masks[key]

    def holding(self, value: Tensor) -> Intervention:
        """Hold the selected entries at `value` (computed by another pass)."""
        return lambda x: torch.where(self.mask(x), value.to(x), x)

    def holding_fn(self, value: Intervention) -> Intervention:
        """Hold the selected entries at value(x), computed when the site is reached."""
        return lambda x: torch.where(self.mask(x), value(x), x)


class Reference(Protocol):
    """What the mean clamps average over (`values/mean.py` has the two kinds: reference inputs
    run through the model, or site means computed beforehand)."""

    def site_mean(self, site: str, passes: Passes) -> Tensor:
        """The mean of `site` over the reference, broadcastable to the site."""
        ...


@dataclass
class ClampContext:
    """What a value may depend on: the forward's model inputs, the few-shot target, the current
    step, and the mean clamps' reference (None: the run has no mean clamp)."""

    inputs: dict[str, Tensor]
    target: Tensor | None
    step: int
    reference: Reference | None = None


@dataclass
class Passes:
    """What a value computed by another forward may use to run it."""

    ctx: ClampContext
    n_layers: int
    run: Callable[[dict[str, Tensor], SiteHooks], Tensor] | None  # the model's (or a member's)
    direct_hooks: Callable[[Sequence[str]], SiteHooks]  # hooks of the direct clamps, caching sites
    final: SiteHooks  # the clamped forward's hooks (its cache fills during that forward)

    def forward(self, inputs: dict[str, Tensor], hooks: SiteHooks) -> Tensor:
        """Run the model's forward; RuntimeError where the caller gave none (the probe's values
        need no extra forward)."""
        if self.run is None:
            raise RuntimeError("this clamp needs another forward, and none was given")
        return self.run(inputs, hooks)

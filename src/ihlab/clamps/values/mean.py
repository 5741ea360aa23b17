"""Mean ablation: the site held at its mean over a reference (Crosbie & Shutova's main ablation).

Two kinds of reference, one route (`ClampContext.reference`):
- `ReferenceInputs`, training: a fixed batch of training sequences, run through this model at
  every clamped forward (so gradient flows through the mean, not through the replaced entries);
  the mean is over the sequences, position by position;
- `SiteMeans`, the probe: a pretrained model's site means computed beforehand over reference
  prompts of different lengths (so averaged over positions too).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ihlab.clamps.context import Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register
from ihlab.sites import Intervention


@dataclass
class ReferenceInputs:
    """Model inputs of the reference sequences, run through the model with the direct clamps."""

    inputs: dict[str, Tensor]

    def site_mean(self, site: str, passes: Passes) -> Tensor:
        hooks = passes.direct_hooks([site])
        passes.forward(self.inputs, hooks)
        return hooks.cache[site].mean(dim=0, keepdim=True)


@dataclass
class SiteMeans:
    """Site means computed beforehand: site -> a tensor broadcastable to the site."""

    means: dict[str, Tensor]

    def site_mean(self, site: str, passes: Passes) -> Tensor:
        if site not in self.means:
            raise ValueError(f"value mean at {site}: no reference mean of it was computed")
        return self.means[site]


@register
class Mean(ClampValue):
    """The mean of the site over the forward's reference (`ClampContext.reference`)."""

    name = "mean"
    fields = ("reference_size",)
    needs_pass = True
    differentiable = True

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if c.reference_size < 1:
            raise where.fail("reference_size must be >= 1.")

    def reference_size(self) -> int:
        return self.cfg.reference_size

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        reference = aux.ctx.reference
        if reference is None:
            raise ValueError(f"value mean at {target.site} needs a reference (ClampContext)")
        return [(target.site, target.holding(reference.site_mean(target.site, aux)))]

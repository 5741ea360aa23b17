"""Mean ablation: the site's mean over a fixed reference batch of training sequences, computed
with this model at every step (so gradient flows through the mean, not through the replaced
entries). The probe holds a pretrained model's heads at their mean over reference prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ihlab.values.base import ClampValue, Passes, Where, register

if TYPE_CHECKING:
    from ihlab.clamps import Clamp, ClampConfig
    from ihlab.sites import Intervention


@register
class Mean(ClampValue):
    """The mean over the reference batch (dim 0), position by position."""

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

    def passes(self, clamp: Clamp, aux: Passes) -> list[tuple[str, Intervention]]:
        reference = aux.ctx.reference if aux.ctx.reference is not None else aux.reference
        assert reference is not None, "a mean clamp's run has a reference batch"
        hooks = aux.direct_hooks([clamp.site])
        aux.run(reference, hooks)
        return [(clamp.site, clamp.with_value(hooks.cache[clamp.site].mean(dim=0, keepdim=True)))]

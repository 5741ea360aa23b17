"""Optogenetic clamps: sites held at chosen values over windows of training steps.

A clamp = site + selection + value + windows (Singh et al. 2024, made declarative). In every forward
where it is active (training and evaluation) the site holds

    where(mask, value, computed)

with `mask` the selected heads x positions (and, for values that define only some entries, those
entries: a match pattern defines the query's row). Gradient therefore reaches parameters through the
clamped entries only through `value`: not at all for hand-built values (zero, constant, ideal
patterns, knockout, a graft from another run), and through their computation for values made by
this model (perfect copy, mean, the multi-pass layer-1 clamp, and the later layers' held patterns or
values of a pattern/value-preserving ablation).

Each value is a class in `ihlab.clamps.values`, registered by name (one module per family of
values: its check, whether it needs another forward, its gradient rule). Values computed by
another forward (mean, graft, pattern/value-preserving, prev_token_input) run it here, before the
clamped forward, with the "direct" clamps (every clamp that needs no pass) active.

`ClampSet.hooks` is the one assembly of a clamped forward's `SiteHooks`: the lab's model (single
runs and every ensemble member), the probe's pretrained models and evaluation-only interventions
all get their hooks from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Passes, Target
from ihlab.clamps.select import selected_heads
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values import VALUES, ClampValue
from ihlab.sites import Intervention, SiteHooks, parse_site


class Clamp:
    """One validated clamp: its target (heads resolved), its value (an ihlab.clamps.values
    class) and the windows of steps in which it is on."""

    def __init__(self, name: str, cfg: ClampConfig, n_heads: int) -> None:
        self.name, self.cfg = name, cfg
        self.value: ClampValue = VALUES[cfg.value](cfg)
        heads = cfg.heads
        if cfg.select is not None:
            heads = selected_heads(cfg.select, parse_site(self.value.head_site(cfg))[0])
        chosen = list(range(n_heads)) if heads is None else list(heads)
        self.target = Target(cfg.site, self.value.heads(chosen, n_heads), cfg.positions)
        self.windows = [(w.start, math.inf if w.stop is None else w.stop) for w in cfg.windows]

    @property
    def site(self) -> str:
        return self.target.site

    def active(self, step: int) -> bool:
        return not self.windows or any(a <= step < b for a, b in self.windows)

    @property
    def needs_pass(self) -> bool:
        return self.value.needs_pass

    def direct(self, ctx: ClampContext, store: dict[str, Tensor]) -> Intervention:
        """The intervention of a clamp that needs no other pass."""
        return self.value.intervention(self.target, ctx, store)


def _compose(fns: Sequence[Intervention]) -> Intervention:
    def apply(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return apply


Forward = Callable[[dict[str, Tensor], SiteHooks], Tensor]


class ClampSet:
    """Every clamp of a run (or of one evaluation-time intervention) on a model of `n_layers`;
    `hooks` builds the SiteHooks of one clamped forward."""

    def __init__(self, clamps: list[Clamp], n_layers: int) -> None:
        self.clamps, self.n_layers = clamps, n_layers

    def __bool__(self) -> bool:
        return bool(self.clamps)

    def to(self, device: torch.device) -> ClampSet:
        for c in self.clamps:
            c.value.to(device)
        return self

    def reference_size(self) -> int:
        """Sequences of the fixed reference batch the clamps need (0: none)."""
        return max((c.value.reference_size() for c in self.clamps), default=0)

    def hooks(
        self, ctx: ClampContext, cache: Sequence[str] = (), forward: Forward | None = None
    ) -> SiteHooks | None:
        """Hooks of the clamped forward at ctx.step (None: nothing active and nothing cached).

        Pass-based clamps run their auxiliary forwards here, before returning, through `forward`
        (the model, or an ensemble member's functional forward; the probe, whose values need
        none, gives none). Those passes run with the direct clamps active, never with another
        pass-based clamp.
        """
        active = [c for c in self.clamps if c.active(ctx.step)]
        if not active:
            return SiteHooks(cache=cache) if cache else None
        direct = [c for c in active if not c.needs_pass]
        extra = {site for c in direct for site in c.value.reads()}

        def direct_hooks(keep: Sequence[str] = ()) -> SiteHooks:
            store: dict[str, Tensor] = {}
            fns: dict[str, list[Intervention]] = {}
            for c in direct:
                fns.setdefault(c.site, []).append(c.direct(ctx, store))
            interventions = {site: _compose(f) for site, f in fns.items()}
            return SiteHooks(cache={*keep, *extra}, interventions=interventions, store=store)

        final = direct_hooks([*cache, *(site for c in active for site in c.value.reads())])
        aux = Passes(ctx, self.n_layers, forward, direct_hooks, final)
        for c in active:
            if c.needs_pass:
                for site, fn in c.value.passes(c.target, aux):
                    final.add_intervention(site, fn)
        return final


def build_clamp_set(clamps: dict[str, ClampConfig], model_cfg: Any, io: Any) -> ClampSet:
    """Resolve head selections and load what values need (graft sources) before step 0."""
    built = [Clamp(name, cfg, model_cfg.n_heads) for name, cfg in clamps.items()]
    for c in built:
        c.value.prepare(c.target, model_cfg, io)
    return ClampSet(built, model_cfg.n_layers)

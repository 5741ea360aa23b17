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

Each value is a class in `ihlab.values`, registered by name (one module per family of values:
its check, whether it needs another forward, its gradient rule). Values computed by another
forward (mean, graft, pattern/value-preserving, multipass) run it here, before the clamped
forward, with the "direct" clamps (every clamp that needs no pass) active.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ihlab.errors import ConfigError
from ihlab.sites import HEAD_AXIS, Intervention, SiteHooks, parse_head_key, parse_site, site_names
from ihlab.values import VALUES, ClampValue, Passes, Where
from ihlab.values.base import axis_mask, check_fields

SCORE_NAMES = ("previous_token", "prefix_matching")


@dataclass
class Window:
    """Steps [start, stop) in which a clamp is on; stop None: to the end of training."""

    start: int = 0
    stop: int | None = None


@dataclass
class HeadSelect:
    """Heads chosen by a score: the `top` heads of the clamp's layer with the highest `score`
    (a heads/<score>/L<l>H<h> column of metrics.csv) at `step` (None: the last scored step) of the
    run in directory `run`."""

    run: str = ""
    score: str = "previous_token"
    top: int = 1
    step: int | None = None


@dataclass
class ClampConfig:
    """One clamp. `site` is a full site name (`blocks.0.attn.pattern`); `heads` (or `select`) and
    `positions` narrow it; `windows` (empty: all of training) say when it is on."""

    site: str = ""
    value: str = "zero"  # a name in ihlab.values.VALUES
    heads: list[int] | None = None  # None: every head (per-head sites); copy: heads of `source`
    select: HeadSelect | None = None
    positions: list[int] | None = None  # query positions for patterns; negative counts from the end
    windows: list[Window] = field(default_factory=list)
    constant: float = 0.0  # value=constant
    strength: float = 1.0  # value=match: attention to the correct label
    source: str | None = None  # value=copy: the scores site whose heads give the logits
    reference_size: int = 64  # value=mean: sequences in the reference batch
    checkpoint: str | None = None  # value=graft: a checkpoint of another run


def _position_axis(kind: str) -> int:
    return 2 if kind in ("attn.scores", "attn.pattern") else 1


def check_clamps(clamps: dict[str, ClampConfig], model: Any, data: Any) -> None:
    """Reject, before any work, a clamp the model or data cannot honour; names key and fix.
    `data` is a DataConfig: the positions the model reads and what its batches offer values."""
    sites = site_names(model.n_layers, model.attn_only, model.positional.value == "learned")
    n_pos = data.model_positions
    for name, c in clamps.items():
        key = f"clamps.{name}"

        def fail(msg: str, key: str = key) -> ConfigError:
            return ConfigError(f"{key}: {msg}")

        if not c.site:
            raise fail(f"site is required. Fix: set {key}.site=NAME, one of {sites}.")
        if c.site not in sites:
            raise fail(f"site {c.site!r} does not exist in this model. Fix: use one of {sites}.")
        value = check_value(c, key)
        layer, kind = parse_site(c.site)
        where = Where(key, c.site, layer, kind, sites, model.n_layers, data.clamp_inputs)
        value.check(c, where)
        check_fields(c, where, ClampConfig())
        head_site = value.head_site(c)
        if c.heads is not None or c.select is not None:
            if c.heads is not None and c.select is not None:
                raise fail("set heads or select, not both.")
            if head_site not in sites or parse_site(head_site)[1] not in HEAD_AXIS:
                raise fail(
                    f"site {c.site!r} has no head axis, so heads/select cannot apply. Fix: remove "
                    "them or clamp a per-head site (attn.q/k/v/scores/pattern/z)."
                )
        for h in c.heads or []:
            if not 0 <= h < model.n_heads:
                raise fail(f"head {h} does not exist (heads 0-{model.n_heads - 1}).")
        if c.heads is not None and len(set(c.heads)) != len(c.heads):
            raise fail(f"heads {c.heads} repeats a head.")
        if c.select is not None:
            if c.select.score not in SCORE_NAMES:
                raise fail(f"select.score={c.select.score!r}: use one of {SCORE_NAMES}.")
            if not 1 <= c.select.top <= model.n_heads:
                raise fail(f"select.top={c.select.top} must be in 1..{model.n_heads}.")
            if not (Path(c.select.run) / "metrics.csv").exists():
                raise fail(
                    f"select.run={c.select.run!r} has no metrics.csv. Fix: point it at the run "
                    "directory of a finished reference run."
                )
        for p in c.positions or []:
            if not -n_pos <= p < n_pos:
                raise fail(f"position {p} is outside the {n_pos} model positions.")
        for w in c.windows:
            if w.start < 0 or (w.stop is not None and w.stop <= w.start):
                raise fail(f"window [{w.start}, {w.stop}) is empty or negative.")


def check_value(c: ClampConfig, key: str) -> type[ClampValue]:
    """The registered class of c.value; a ConfigError naming the key and the closest names."""
    if c.value in VALUES:
        return VALUES[c.value]
    close = difflib.get_close_matches(str(c.value), list(VALUES), n=2)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"{key}: value {c.value!r} is not a clamp value. {hint}Fix: use one of {sorted(VALUES)}."
    )


def selected_heads(select: HeadSelect, layer: int) -> list[int]:
    """The top heads of `layer` by a logged score of a reference run (see HeadSelect)."""
    from ihlab.outputs import read_metrics

    rows = read_metrics(Path(select.run) / "metrics.csv")
    scored = []
    for row in rows:
        heads = {
            parsed[2]: value
            for key, value in row.items()
            if (parsed := parse_head_key(key)) and parsed[:2] == (select.score, layer)
        }
        if heads and (select.step is None or int(row["step"]) == select.step):
            scored.append(heads)
    if not scored:
        at = "any step" if select.step is None else f"step {select.step}"
        raise ConfigError(
            f"select: {select.run} has no {select.score} scores of layer {layer} at {at}. Fix: "
            "choose a step at which the reference run scored heads (trainer.score_every)."
        )
    scores = scored[-1]
    return sorted(sorted(scores, key=lambda h: -scores[h])[: select.top])


@dataclass
class ClampContext:
    """What a value may depend on: the model inputs, the few-shot target, the current step, and
    the mean clamps' reference inputs (None: the ClampSet's own)."""

    inputs: dict[str, Tensor]
    target: Tensor | None
    step: int
    reference: dict[str, Tensor] | None = None


class Clamp:
    """One validated clamp with its heads resolved and its value (an ihlab.values class)."""

    def __init__(self, name: str, cfg: ClampConfig, n_heads: int) -> None:
        self.name, self.cfg = name, cfg
        self.value: ClampValue = VALUES[cfg.value](cfg)
        self.site = cfg.site
        self.layer, self.site_kind = parse_site(cfg.site)
        heads = cfg.heads
        if cfg.select is not None:
            heads = selected_heads(cfg.select, parse_site(self.value.head_site(cfg))[0])
        chosen = list(range(n_heads)) if heads is None else list(heads)
        self.heads = self.value.heads(chosen, n_heads)
        self.n_heads = n_heads
        self.windows = [(w.start, math.inf if w.stop is None else w.stop) for w in cfg.windows]
        self._masks: dict[tuple[torch.Size, torch.device], Tensor] = {}

    def active(self, step: int) -> bool:
        return not self.windows or any(a <= step < b for a, b in self.windows)

    @property
    def needs_pass(self) -> bool:
        return self.value.needs_pass

    def mask(self, like: Tensor) -> Tensor:
        """Boolean mask of the selected heads x positions, broadcastable to `like` (cached)."""
        key = (like.shape[1:], like.device)
        if key not in self._masks:
            self._masks[key] = self._mask(like)
        return self._masks[key]

    def _mask(self, like: Tensor) -> Tensor:
        mask = torch.ones([1] * like.dim(), dtype=torch.bool, device=like.device)
        head_axis = HEAD_AXIS.get(self.site_kind)
        if head_axis is not None:
            mask = mask & axis_mask(like, head_axis, self.heads)
        if self.cfg.positions is not None:
            mask = mask & axis_mask(like, _position_axis(self.site_kind), self.cfg.positions)
        return mask

    def direct(self, ctx: ClampContext, store: dict[str, Tensor]) -> Intervention:
        """The intervention of a clamp that needs no other pass."""
        return self.value.intervention(self, ctx, store)

    def with_value(self, value: Tensor) -> Intervention:
        """Hold the selected entries at a value computed by another pass."""
        return lambda x: torch.where(self.mask(x), value.to(x), x)

    def with_fn(self, value: Intervention) -> Intervention:
        """Hold the selected entries at value(x), computed when the site is reached."""
        return lambda x: torch.where(self.mask(x), value(x), x)


def _compose(fns: Sequence[Intervention]) -> Intervention:
    def apply(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return apply


class ClampSet:
    """Every clamp of a run; `hooks` builds the SiteHooks of one clamped forward."""

    def __init__(self, clamps: list[Clamp], reference: dict[str, Tensor] | None = None) -> None:
        self.clamps = clamps
        self.reference = reference  # model inputs of the mean clamps' reference batch

    def __bool__(self) -> bool:
        return bool(self.clamps)

    def to(self, device: torch.device) -> ClampSet:
        for c in self.clamps:
            c.value.to(device)
        if self.reference is not None:
            self.reference = {k: v.to(device) for k, v in self.reference.items()}
        return self

    def reference_size(self) -> int:
        """Sequences of the fixed reference batch the clamps need (0: none)."""
        return max((c.value.reference_size() for c in self.clamps), default=0)

    def hooks(
        self,
        model: nn.Module,
        ctx: ClampContext,
        cache: Sequence[str] = (),
        forward: Callable[[dict[str, Tensor], SiteHooks], Tensor] | None = None,
    ) -> SiteHooks | None:
        """Hooks of the clamped forward at ctx.step (None: nothing active and nothing cached).

        Pass-based clamps run their auxiliary forwards here, before returning, through `forward`
        (default: `model` itself; an ensemble passes one member's functional forward). Those
        passes run with the direct clamps active, never with another pass-based clamp.
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
        aux = Passes(
            ctx,
            len(model.blocks),
            forward if forward is not None else model,
            direct_hooks,
            final,
            self.reference,
        )
        for c in active:
            if c.needs_pass:
                for site, fn in c.value.passes(c, aux):
                    final.add_intervention(site, fn)
        return final


def build_clamp_set(clamps: dict[str, ClampConfig], model_cfg: Any, io: Any) -> ClampSet:
    """Resolve head selections and load what values need (graft sources) before step 0."""
    built = [Clamp(name, cfg, model_cfg.n_heads) for name, cfg in clamps.items()]
    for c in built:
        c.value.prepare(c, model_cfg, io)
    return ClampSet(built)

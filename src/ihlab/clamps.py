"""Optogenetic clamps: sites held at chosen values over windows of training steps.

A clamp = site + selection + value + windows (Singh et al. 2024, made declarative). In every forward
where it is active (training and evaluation) the site holds

    where(mask, value, computed)

with `mask` the selected heads x positions (and, for values that define only some entries, those
entries: a match pattern defines the query's row). Gradient therefore reaches parameters through the
clamped entries only through `value`: not at all for hand-built values (zero, constant, ideal
patterns, a graft from another run), and through their computation for values made by this model
(perfect copy, mean, pattern/value-preserving ablation, the multi-pass layer-1 clamp).

Values that need another forward get it here, before the clamped forward:
- mean: a pass over a fixed reference batch of training sequences;
- pattern_preserving / value_preserving: a clean pass over the same batch;
- multipass: Singh et al.'s layer-1 clamp, a pass whose residual after layer l is the embeddings
  plus the one-position-shifted embeddings, to compute every later layer's attention patterns (the
  final pass then holds that residual at the plain embeddings);
- graft: the same inputs through another run's checkpoint.
These auxiliary passes run with the "direct" clamps active (every clamp that needs no pass), never
with another pass-based clamp.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ihlab.errors import ConfigError
from ihlab.sites import (
    HEAD_AXIS,
    Intervention,
    SiteHooks,
    parse_head_key,
    parse_site,
    site_names,
)

PATTERN_SITES = ("attn.pattern",)
SCORE_NAMES = ("previous_token", "prefix_matching")
NEG_INF_LOGIT = -1e9  # a label absent from the context, in a perfect copy
EMBEDDINGS = "blocks.0.resid_pre"  # what the multi-pass clamp calls the embeddings


class ValueKind(str, Enum):
    zero = "zero"
    constant = "constant"
    mean = "mean"
    previous_token = "previous_token"
    match = "match"
    induction = "induction"
    copy = "copy"
    multipass = "multipass"
    graft = "graft"
    pattern_preserving = "pattern_preserving"
    value_preserving = "value_preserving"
    ablate_others = "ablate_others"
    knockout = "knockout"  # ihlab-probe only: block the induction pattern in pretrained models


PASS_KINDS = {
    ValueKind.mean,
    ValueKind.multipass,
    ValueKind.graft,
    ValueKind.pattern_preserving,
    ValueKind.value_preserving,
}


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
    value: ValueKind = ValueKind.zero
    heads: list[int] | None = None  # None: every head (per-head sites); copy: heads of `source`
    select: HeadSelect | None = None
    positions: list[int] | None = None  # query positions for patterns; negative counts from the end
    windows: list[Window] = field(default_factory=list)
    constant: float = 0.0  # value=constant
    strength: float = 1.0  # value=match: attention to the correct label
    source: str | None = None  # value=copy: the scores site whose heads give the logits
    reference_size: int = 64  # value=mean: sequences in the reference batch
    checkpoint: str | None = None  # value=graft: a checkpoint of another run


def _site_kind(site: str) -> str:
    return parse_site(site)[1]


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
        layer, kind = parse_site(c.site)
        _check_value(c, fail, layer, kind, data.clamp_inputs, sites, model.n_layers)
        head_site = c.source if ValueKind(c.value) == ValueKind.copy else c.site
        if c.heads is not None or c.select is not None:
            if c.heads is not None and c.select is not None:
                raise fail("set heads or select, not both.")
            if head_site is None or _site_kind(head_site) not in HEAD_AXIS:
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


def _check_value(
    c: ClampConfig,
    fail: Callable[[str], ConfigError],
    layer: int | None,
    kind: str,
    inputs: frozenset[str],
    sites: list[str],
    n_layers: int,
) -> None:
    v = ValueKind(c.value)
    if v == ValueKind.knockout:
        raise fail("value knockout is for ihlab-probe's pretrained models, not for training.")
    shaped = (ValueKind.previous_token, ValueKind.match, ValueKind.induction, ValueKind.constant)
    if v in shaped and (v == ValueKind.constant) == (kind in PATTERN_SITES):
        need = "an attn.pattern site"
        if v == ValueKind.constant:
            need = "any site but attn.pattern (a pattern's rows must sum to 1)"
        raise fail(f"value {v.value} needs {need}, got {c.site!r}.")
    if v == ValueKind.constant and not math.isfinite(c.constant):
        raise fail("constant must be finite.")
    labelled = {"labels", "target"} <= inputs
    if v == ValueKind.match:
        if not labelled:
            raise fail("value match needs few-shot data (it attends to the correct label).")
        if not 0.0 <= c.strength <= 1.0:
            raise fail(f"strength={c.strength} must be in [0, 1].")
    if v == ValueKind.induction and "tokens" not in inputs:
        raise fail("value induction needs token data (data=repeated_tokens).")
    if v == ValueKind.copy:
        if c.site != "logits" or not labelled:
            raise fail("value copy clamps site 'logits' on few-shot data.")
        if c.source not in sites or _site_kind(c.source) != "attn.scores":
            raise fail(
                f"source={c.source!r} must be an attn.scores site of this model, e.g. "
                "blocks.1.attn.scores (the heads whose scores become the logits)."
            )
        if c.positions is not None:
            raise fail("value copy acts at the query; remove positions.")
    elif c.source is not None:
        raise fail("source is only used by value copy.")
    if v == ValueKind.multipass and (
        kind != "resid_post" or layer is None or layer >= n_layers - 1
    ):
        raise fail(
            f"value multipass clamps blocks.l.resid_post with a later layer to feed "
            f"(l < {n_layers - 1}), got {c.site!r}."
        )
    ablations = (ValueKind.pattern_preserving, ValueKind.value_preserving, ValueKind.ablate_others)
    if v in ablations and kind not in ("attn.v", "attn.z"):
        raise fail(f"value {v.value} ablates heads at attn.v or attn.z, got {c.site!r}.")
    if v == ValueKind.ablate_others and c.heads is None and c.select is None:
        raise fail("value ablate_others needs heads (or select): the heads to keep.")
    if v == ValueKind.graft:
        if c.checkpoint is None:
            raise fail("value graft needs checkpoint=PATH (a checkpoint of another run).")
        if not Path(c.checkpoint).exists():
            raise fail(f"checkpoint={c.checkpoint!r} does not exist. Fix: give a .ckpt path.")
    elif c.checkpoint is not None:
        raise fail("checkpoint is only used by value graft.")
    if v == ValueKind.mean and c.reference_size < 1:
        raise fail("reference_size must be >= 1.")


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


# Hand-built values: (value, entries it defines) for a site of this shape.


@functools.lru_cache(maxsize=16)
def _previous_token_pattern(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    rows = torch.arange(n, device=device)
    pattern = torch.zeros(n, n, dtype=dtype, device=device)
    pattern[rows, (rows - 1).clamp(min=0)] = 1.0
    return pattern


def previous_token_pattern(n: int, like: Tensor) -> Tensor:
    """(query, key): each position attends 1.0 to the one before it, position 0 to itself."""
    return _previous_token_pattern(n, like.dtype, like.device)


def induction_pattern(tokens: Tensor, like: Tensor) -> Tensor:
    """(batch, 1, query, key): attend uniformly to every token that followed an earlier occurrence
    of the query's token; queries with no earlier occurrence attend to position 0 (BOS)."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (batch, query, key) token_q == token_k
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # key < query
    hits = torch.zeros_like(same)
    hits[:, :, 1:] = (same & earlier)[:, :, :-1]  # attend to key + 1 where token_key == token_q
    none = ~hits.any(dim=-1, keepdim=True)  # (batch, query, 1)
    hits[:, :, :1] |= none
    pattern = hits.to(like.dtype)
    return (pattern / pattern.sum(dim=-1, keepdim=True))[:, None]


def match_row(labels: Tensor, target: Tensor, strength: float, like: Tensor) -> Tensor:
    """(batch, 1, key): the query's attention, `strength` on the correct label's positions and the
    rest on the other labels' positions (each shared evenly), 0 on exemplars."""
    is_label = labels >= 0  # (batch, pos)
    correct = is_label & (labels == target[:, None])
    wrong = is_label & ~correct
    row = strength * correct / correct.sum(1, keepdim=True).clamp(min=1) + (1 - strength) * (
        wrong / wrong.sum(1, keepdim=True).clamp(min=1)
    )
    return row.to(like.dtype)[:, None]


def perfect_copy(scores: Tensor, labels: Tensor, heads: Tensor, n_labels: int) -> Tensor:
    """(batch, n_labels) query logits from the heads' pre-softmax scores to the label positions.

    logit[label] = logsumexp of the query's scores (mean over `heads`) to the positions holding
    that label, so softmax(logits) is the head's attention restricted to the labels; a label not in
    the context gets -1e9. With one position per label this is Singh et al.'s perfect copy.
    """
    query = scores[:, heads, -1].mean(dim=1)  # (batch, key)
    is_label = labels >= 0  # (batch, key)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), n_labels).bool()  # (b, key, label)
    onehot &= is_label[..., None]
    per_label = query[..., None].masked_fill(~onehot, float("-inf"))  # (batch, key, label)
    logits = per_label.logsumexp(dim=1)  # (batch, label)
    return logits.masked_fill(~onehot.any(dim=1), NEG_INF_LOGIT)


def shifted(x: Tensor) -> Tensor:
    """(batch, pos, d): x one position later, position 0 keeping its own value."""
    return torch.cat([x[:, :1], x[:, :-1]], dim=1)


class Clamp:
    """One validated clamp with its heads resolved; builds the intervention for a forward."""

    def __init__(self, name: str, cfg: ClampConfig, n_heads: int) -> None:
        self.name, self.cfg, self.kind = name, cfg, cfg.value
        self.site = cfg.site
        self.layer, self.site_kind = parse_site(cfg.site)
        heads = cfg.heads
        if cfg.select is not None:
            source_layer = parse_site(cfg.source or cfg.site)[0]
            heads = selected_heads(cfg.select, source_layer)
        self.heads = list(range(n_heads)) if heads is None else list(heads)
        if self.kind == ValueKind.ablate_others:
            self.heads = [h for h in range(n_heads) if h not in self.heads]
        self.n_heads = n_heads
        self.windows = [(w.start, math.inf if w.stop is None else w.stop) for w in cfg.windows]
        self._masks: dict[tuple[torch.Size, torch.device], Tensor] = {}

    def active(self, step: int) -> bool:
        return not self.windows or any(a <= step < b for a, b in self.windows)

    @property
    def needs_pass(self) -> bool:
        return self.kind in PASS_KINDS

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
            mask = mask & _axis_mask(like, head_axis, self.heads)
        if self.cfg.positions is not None:
            mask = mask & _axis_mask(like, _position_axis(self.site_kind), self.cfg.positions)
        return mask

    def direct(self, ctx: ClampContext, store: dict[str, Tensor]) -> Intervention:
        """The intervention of a clamp that needs no other pass."""
        cfg, kind = self.cfg, self.kind

        def apply(x: Tensor) -> Tensor:
            mask = self.mask(x)
            if kind in (ValueKind.zero, ValueKind.ablate_others):
                value = torch.zeros((), dtype=x.dtype, device=x.device)
            elif kind == ValueKind.constant:
                value = torch.full((), cfg.constant, dtype=x.dtype, device=x.device)
            elif kind == ValueKind.previous_token:
                value = previous_token_pattern(x.shape[-1], x)
            elif kind == ValueKind.induction:
                value = induction_pattern(ctx.inputs["tokens"], x)
            elif kind == ValueKind.match:
                value = match_row(ctx.inputs["labels"], ctx.target, cfg.strength, x)[:, :, None]
                mask = mask & _axis_mask(x, 2, [-1])  # the query's row
            else:  # copy
                scores = store[cfg.source]  # (batch, head, query, key)
                heads = torch.tensor(self.heads, device=x.device)
                labels = ctx.inputs["labels"]
                value = perfect_copy(scores, labels, heads, x.shape[-1])[:, None]  # (b, 1, label)
                mask = _axis_mask(x, 1, [-1])  # the query
            return torch.where(mask, value, x)

        return apply

    def with_value(self, value: Tensor) -> Intervention:
        """Hold the selected entries at a value computed by another pass."""
        return lambda x: torch.where(self.mask(x), value.to(x), x)

    def with_fn(self, value: Intervention) -> Intervention:
        """Hold the selected entries at value(x), computed when the site is reached."""
        return lambda x: torch.where(self.mask(x), value(x), x)


def _axis_mask(like: Tensor, axis: int, index: Sequence[int]) -> Tensor:
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


def _compose(fns: Sequence[Intervention]) -> Intervention:
    def apply(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return apply


class ClampSet:
    """Every clamp of a run; `hooks` builds the SiteHooks of one clamped forward."""

    def __init__(
        self,
        clamps: list[Clamp],
        reference: dict[str, Tensor] | None = None,
        graft_models: dict[str, nn.Module] | None = None,
    ) -> None:
        self.clamps = clamps
        self.reference = reference  # model inputs of the mean clamps' reference batch
        self.graft_models = graft_models or {}

    def __bool__(self) -> bool:
        return bool(self.clamps)

    def to(self, device: torch.device) -> ClampSet:
        for model in self.graft_models.values():
            model.to(device)
        if self.reference is not None:
            self.reference = {k: v.to(device) for k, v in self.reference.items()}
        return self

    def hooks(
        self,
        model: nn.Module,
        ctx: ClampContext,
        cache: Sequence[str] = (),
        forward: Callable[[dict[str, Tensor], SiteHooks], Tensor] | None = None,
    ) -> SiteHooks | None:
        """Hooks of the clamped forward at ctx.step (None: nothing active and nothing cached).

        Pass-based clamps run their auxiliary forwards here, before returning, through `forward`
        (default: `model` itself; an ensemble passes one member's functional forward).
        """
        active = [c for c in self.clamps if c.active(ctx.step)]
        if not active:
            return SiteHooks(cache=cache) if cache else None
        direct = [c for c in active if not c.needs_pass]
        extra = {c.cfg.source for c in direct if c.kind == ValueKind.copy}

        def direct_hooks(keep: Sequence[str] = ()) -> SiteHooks:
            store: dict[str, Tensor] = {}
            fns: dict[str, list[Intervention]] = {}
            for c in direct:
                fns.setdefault(c.site, []).append(c.direct(ctx, store))
            interventions = {site: _compose(f) for site, f in fns.items()}
            return SiteHooks(cache={*keep, *extra}, interventions=interventions, store=store)

        multipass = any(c.kind == ValueKind.multipass for c in active)
        final = direct_hooks([*cache, *([EMBEDDINGS] if multipass else [])])
        for c in active:
            if c.needs_pass:
                run = forward if forward is not None else model
                passes = self._pass_interventions(
                    c, len(model.blocks), run, ctx, direct_hooks, final
                )
                for site, fn in passes:
                    final.add_intervention(site, fn)
        return final

    def _pass_interventions(
        self,
        c: Clamp,
        n_layers: int,
        model: Callable[[dict[str, Tensor], SiteHooks], Tensor],
        ctx: ClampContext,
        direct_hooks: Callable[[Sequence[str]], SiteHooks],
        final: SiteHooks,
    ) -> list[tuple[str, Intervention]]:
        """Run a pass-based clamp's auxiliary pass; return its final-pass interventions."""
        later = range((c.layer or 0) + 1, n_layers)
        if c.kind == ValueKind.mean:
            reference = ctx.reference if ctx.reference is not None else self.reference
            assert reference is not None
            hooks = direct_hooks([c.site])
            model(reference, hooks)
            return [(c.site, c.with_value(hooks.cache[c.site].mean(dim=0, keepdim=True)))]
        if c.kind == ValueKind.graft:
            hooks = SiteHooks(cache=[c.site])
            with torch.no_grad():
                self.graft_models[c.name](ctx.inputs, hooks)
            return [(c.site, c.with_value(hooks.cache[c.site]))]
        if c.kind in (ValueKind.pattern_preserving, ValueKind.value_preserving):
            kind = "attn.pattern" if c.kind == ValueKind.pattern_preserving else "attn.v"
            frozen = [f"blocks.{i}.{kind}" for i in later]
            hooks = direct_hooks(frozen)
            model(ctx.inputs, hooks)
            held = [(site, _hold(hooks.cache[site])) for site in frozen]
            return [(c.site, c.with_value(torch.zeros(()))), *held]
        # multipass: layer-l output = embeddings + shifted embeddings, to compute later patterns
        patterns = [f"blocks.{i}.attn.pattern" for i in later]
        hooks = direct_hooks([EMBEDDINGS, *patterns])
        embed = hooks.cache
        hooks.add_intervention(
            c.site, c.with_fn(lambda x: embed[EMBEDDINGS] + shifted(embed[EMBEDDINGS]))
        )
        model(ctx.inputs, hooks)
        held = [(site, _hold(hooks.cache[site])) for site in patterns]
        return [(c.site, c.with_fn(lambda x: final.cache[EMBEDDINGS])), *held]


def _hold(value: Tensor) -> Intervention:
    return lambda x: value


def load_graft_model(checkpoint: str, model_cfg: Any, io: Any, site: str) -> nn.Module:
    """The trained model of another run's checkpoint, frozen, checked to fit this run's site."""
    from ihlab.model import load_lab_model

    try:
        model = load_lab_model(checkpoint)
    except ValueError as err:
        raise ConfigError(f"graft checkpoint {err}") from err
    same = ("n_heads", "head_dim", "d_model")
    if model.io != io or any(getattr(model.cfg, k) != getattr(model_cfg, k) for k in same):
        raise ConfigError(
            f"graft checkpoint {checkpoint}: its model or data shape differs from this run's "
            f"({model.cfg}, {model.io}), so its {site} cannot stand in for this model's."
        )
    if site not in model.sites:
        raise ConfigError(f"graft checkpoint {checkpoint}: its model has no site {site!r}.")
    return model.requires_grad_(False)


def build_clamp_set(clamps: dict[str, ClampConfig], model_cfg: Any, io: Any) -> ClampSet:
    """Resolve head selections and load graft sources: everything a run needs before step 0."""
    built = [Clamp(name, cfg, model_cfg.n_heads) for name, cfg in clamps.items()]
    grafts = {
        c.name: load_graft_model(c.cfg.checkpoint, model_cfg, io, c.site)
        for c in built
        if c.kind == ValueKind.graft
    }
    return ClampSet(built, graft_models=grafts)

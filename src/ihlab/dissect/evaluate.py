"""One checkpoint of one run, evaluated intact and under every intervention on the run's own
evaluation sets, every metric kept sequence by sequence (for intervals paired over sequences).

The intact forward is the run's own (its clamps active as at that step, as training evaluated
it); an intervention adds its clamps to those. Both are built by the lab's one hook assembly,
`ClampSet.hooks`. Where it is faster and changes nothing:
- shared lower layers: an intervention that changes nothing below layer l starts at layer l
  from the intact forward's residual there (`Transformer.forward(..., start=...)`); one that
  acts only on layer l's head outputs (`attn.z`) or attention output (`attn.out`) of an
  attention-only model takes that site's intact value through its clamp, then the rest of the
  layer, and starts at layer l + 1 (for the last layer: the unembedding alone);
- what is unchanged is not measured again: the head scores of the layers below where a forward
  starts are the intact forward's;
- interventions as a batch axis: the interventions of one family and layer (every head of a
  layer ablated alone, say) are one clamp whose selection differs from copy to copy of the
  stacked batch (`RowTarget`), run as one forward.
`batched=False` evaluates every intervention by its own full forward (the reference path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ihlab.clamps.context import ClampContext, Target
from ihlab.clamps.engine import Clamp, ClampSet
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.mean import ReferenceInputs
from ihlab.data.base import Batch, DataFamily, SplitMetrics, Terms
from ihlab.dissect.spec import Intervention
from ihlab.model import Transformer
from ihlab.sites import HEAD_AXIS, SiteHooks, parse_site

INTACT = "intact"
STACKABLE = ("zero", "mean", "ablate_others", "pattern_preserving", "value_preserving")
OUTPUT_SITES = ("attn.z", "attn.out")  # where an intervention may start after its layer
INTACT_SITES = ("resid_pre", "attn.z")  # kept from the intact forward, with every pattern


class RowTarget(Target):
    """A target whose selection differs from copy to copy of a stacked batch: the batch is K
    copies of the same sequences, copy k in rows k*B to (k+1)*B - 1, and copy k holds the heads
    `selection[k]` (K, heads) of a per-head site, or the whole site where `selection[k]` (K,)."""

    def __init__(self, site: str, selection: Tensor) -> None:
        super().__init__(site)
        self.selection = selection

    def mask(self, like: Tensor) -> Tensor:
        rows = self.selection.repeat_interleave(like.shape[0] // len(self.selection), dim=0)
        shape = [like.shape[0]] + [1] * (like.dim() - 1)
        head_axis = HEAD_AXIS.get(self.kind)
        if head_axis is not None:
            shape[head_axis] = like.shape[head_axis]
        return rows.to(like.device).view(shape)


@dataclass
class Measured:
    """One forward setting on one split: every scalar metric and every head score as
    per-sequence terms (data.base.Terms; head scores' sums are (sequence, layer, head))."""

    scalars: dict[str, list[Terms]] = field(default_factory=dict)
    heads: dict[str, list[Terms]] = field(default_factory=dict)

    def add(self, scalars: dict[str, Terms], heads: dict[str, Terms]) -> None:
        for store, new in ((self.scalars, scalars), (self.heads, heads)):
            for name, terms in new.items():
                store.setdefault(name, []).append(terms)

    def joined(self) -> tuple[dict[str, Terms], dict[str, Terms]]:
        """Every metric's terms over all the split's sequences, in evaluation-set order."""

        def join(store: dict[str, list[Terms]]) -> dict[str, Terms]:
            return {
                name: (torch.cat([t[0] for t in parts]), torch.cat([t[1] for t in parts]))
                for name, parts in store.items()
            }

        return join(self.scalars), join(self.heads)


def first_layer(intervention: Intervention) -> int:
    """The lowest block an intervention can change (0 where it touches a site outside the blocks,
    such as the logits, whose value may read any layer)."""
    layers = []
    for clamp in intervention.clamps.values():
        for site in (clamp.site, clamp.source or clamp.site):
            layers.append(parse_site(site)[0])
    return 0 if any(layer is None for layer in layers) else min(layers)


def output_layer(intervention: Intervention) -> int | None:
    """The layer whose head outputs or attention output alone the intervention changes (every
    clamp at `blocks.l.attn.z` or `blocks.l.attn.out` of one l), else None."""
    sites = [parse_site(clamp.site) for clamp in intervention.clamps.values()]
    layers = {layer for layer, kind in sites if kind in OUTPUT_SITES}
    return (
        layers.pop()
        if len(layers) == 1
        and len(sites) == len([kind for _, kind in sites if kind in OUTPUT_SITES])
        else None
    )


@dataclass
class Group:
    """Interventions evaluated by one forward per chunk: one alone, or several stacked. The new
    forward starts at block `start`; `after` (a layer): its output sites are taken from the
    intact forward through the clamps first."""

    members: list[Intervention]
    start: int
    after: int | None = None


def groups(
    interventions: Sequence[Intervention], batched: bool, stackable_run: bool, attn_only: bool
) -> list[Group]:
    """How to evaluate the interventions: stacked by (family, layer) where every member is one
    clamp of a stackable value (and the run's own clamps run no forward on other inputs), each
    group starting as late as it can; with `batched` False each alone from the embeddings."""
    if not batched:
        return [Group([i], 0) for i in interventions]
    stacks: dict[tuple[str, int], list[Intervention]] = {}
    out: list[Group] = []

    def placed(members: list[Intervention]) -> Group:
        after = output_layer(members[0]) if attn_only else None
        if after is not None:
            return Group(members, after + 1, after)
        return Group(members, first_layer(members[0]))

    for i in interventions:
        values = [clamp.value for clamp in i.clamps.values()]
        one_value = len(values) == 1 and values[0] in STACKABLE
        if stackable_run and one_value and i.layer is not None:
            stacks.setdefault((i.family, i.layer), []).append(i)
        else:
            out.append(placed([i]))
    return out + [placed(members) for members in stacks.values()]


def tiled(x: Tensor, k: int) -> Tensor:
    """k copies of a batch along its first axis (copy-major: rows k*B to (k+1)*B - 1)."""
    return x.repeat(k, *[1] * (x.dim() - 1))


class CheckpointEvaluation:
    """Evaluate one checkpoint (its model, the run's data family and clamps, the step)."""

    def __init__(
        self,
        model: Transformer,
        family: DataFamily,
        run_clamps: dict[str, ClampConfig],
        step: int,
        batch_rows: int,
    ) -> None:
        self.model, self.family, self.step, self.batch_rows = model, family, step, batch_rows
        self.run_clamps = run_clamps
        self.n_layers, self.n_heads = model.cfg.n_layers, model.cfg.n_heads
        layers = range(self.n_layers)
        self.patterns = [f"blocks.{layer}.attn.pattern" for layer in layers]
        self.intact_sites = [
            *self.patterns,
            *(f"blocks.{layer}.{kind}" for layer in layers for kind in INTACT_SITES),
        ]
        self._references: dict[int, Batch] = {}

    def clamp_set(self, extra: dict[str, ClampConfig]) -> ClampSet:
        """The run's own clamps and `extra` (an intervention's), for this model."""
        clamps = [Clamp(n, c, self.n_heads) for n, c in self.run_clamps.items()]
        clamps += [Clamp(f"+{n}", c, self.n_heads) for n, c in extra.items()]
        for clamp in clamps:
            clamp.value.prepare(clamp.target, self.model.cfg, self.model.io)
        return ClampSet(clamps, self.n_layers)

    def context(self, batch: Batch, reference: Batch | None) -> ClampContext:
        inputs = self.family.model_inputs(batch)
        mean_over = ReferenceInputs(reference) if reference is not None else None
        return ClampContext(inputs, batch.get("target"), self.step, mean_over)

    def reference(self, clamps: ClampSet) -> Batch | None:
        """The model inputs of the mean clamps' reference: the run's own fixed batch, of the
        size these clamps ask for (so the intact forward averages over what training did)."""
        size = clamps.reference_size()
        if size == 0:
            return None
        if size not in self._references:
            batch = self.family.reference_batch(size)
            self._references[size] = self.family.model_inputs(batch)
        return self._references[size]

    @torch.no_grad()
    def run(
        self, split: str, interventions: Sequence[Intervention], batched: bool = True
    ) -> dict[str, Measured]:
        """Measured per setting (INTACT, then every intervention's name) on one split."""
        eval_set = self.family.eval_sets[split]
        size = self.family.cfg.eval_batch_size
        n = next(iter(eval_set.values())).shape[0]
        run_set = self.clamp_set({})
        stackable_run = all(c.value.reference_size() == 0 for c in run_set.clamps)
        attn_only = self.model.cfg.attn_only
        plan = groups(interventions, batched, stackable_run, attn_only)
        sets = {id(g): self.group_set(g) for g in plan}
        out = {name: Measured() for name in [INTACT, *(i.name for i in interventions)]}
        metrics = self.family.split_metrics()
        for begin in range(0, n, size):
            batch = {k: v[begin : begin + size] for k, v in eval_set.items()}
            ctx = self.context(batch, self.reference(run_set))
            hooks = run_set.hooks(ctx, self.intact_sites, self.model)
            hooks = hooks or SiteHooks(cache=self.intact_sites)
            logits = self.model(ctx.inputs, hooks)
            intact = hooks.cache
            scalars = self.scalars(metrics, batch, logits)
            heads = self.family.head_score_terms([intact[p] for p in self.patterns], batch)
            out[INTACT].add(scalars, heads)
            for group in plan:
                self.run_group(group, sets[id(group)], batch, intact, heads, metrics, out)
        return out

    def group_set(self, group: Group) -> ClampSet:
        """The clamps of a group's forward: one intervention's, or a stacked clamp whose
        selection differs from copy to copy (RowTarget)."""
        if len(group.members) == 1:
            return self.clamp_set(group.members[0].clamps)
        single = [Clamp(i.name, next(iter(i.clamps.values())), self.n_heads) for i in group.members]
        site = single[0].site
        if parse_site(site)[1] in HEAD_AXIS:
            selection = torch.zeros(len(single), self.n_heads, dtype=torch.bool)
            for k, clamp in enumerate(single):
                selection[k, clamp.target.heads] = True
        else:
            selection = torch.ones(len(single), dtype=torch.bool)
        stacked = self.clamp_set({"stacked": next(iter(group.members[0].clamps.values()))})
        stacked.clamps[-1].target = RowTarget(site, selection)
        return stacked

    def run_group(
        self,
        group: Group,
        clamps: ClampSet,
        batch: Batch,
        intact: dict[str, Tensor],
        intact_heads: dict[str, Terms],
        metrics: SplitMetrics,
        out: dict[str, Measured],
    ) -> None:
        """One group's forwards on one chunk (in slices of at most `batch_rows` rows)."""
        b = next(iter(batch.values())).shape[0]
        per_forward = max(1, self.batch_rows // b)
        for lo in range(0, len(group.members), per_forward):
            members = group.members[lo : lo + per_forward]
            if len(group.members) > 1 and len(members) != len(group.members):
                clamps = self.group_set(Group(members, group.start, group.after))
            k = len(members)
            stacked = {key: tiled(value, k) for key, value in batch.items()}
            ctx = self.context(stacked, self.reference(clamps))
            names = self.patterns[group.start :]
            hooks = clamps.hooks(ctx, names, self.model) or SiteHooks(cache=names)
            start = None
            if group.after is not None:
                start = (group.start, self.layer_output(group.after, hooks, intact, k))
            elif group.start > 0:
                start = (group.start, tiled(intact[f"blocks.{group.start}.resid_pre"], k))
            logits = self.model(ctx.inputs, hooks, start)
            scalars = self.scalars(metrics, stacked, logits)
            heads = self.head_terms(group.start, hooks.cache, stacked, intact_heads, k)
            for j, member in enumerate(members):
                rows = slice(j * b, (j + 1) * b)
                out[member.name].add(
                    {name: (s[rows], c[rows]) for name, (s, c) in scalars.items()},
                    {name: (s[rows], c[rows]) for name, (s, c) in heads.items()},
                )

    def layer_output(
        self, layer: int, hooks: SiteHooks, intact: dict[str, Tensor], k: int
    ) -> Tensor:
        """The residual after `layer` of an attention-only model whose head outputs (or
        attention output) the clamps change: the intact forward's head outputs through the
        hooks, the output projection, the residual: what the block's forward computes from
        there."""
        prefix = f"blocks.{layer}"
        z = hooks(f"{prefix}.attn.z", tiled(intact[f"{prefix}.attn.z"], k))
        projected = self.model.blocks[layer].attn.out(z.flatten(-2))
        attn_out = hooks(f"{prefix}.attn.out", projected)
        return hooks(f"{prefix}.resid_post", tiled(intact[f"{prefix}.resid_pre"], k) + attn_out)

    def head_terms(
        self,
        start: int,
        cache: dict[str, Tensor],
        batch: Batch,
        intact_heads: dict[str, Terms],
        k: int,
    ) -> dict[str, Terms]:
        """Head-score terms of a forward that started at block `start`: the intact forward's for
        the layers below it, measured for the layers from it."""
        if start == 0:
            return self.family.head_score_terms([cache[p] for p in self.patterns], batch)
        below = {
            name: (tiled(s[:, :start], k), tiled(c, k)) for name, (s, c) in intact_heads.items()
        }
        if start >= self.n_layers:
            return below
        new = self.family.head_score_terms([cache[p] for p in self.patterns[start:]], batch)
        return {name: (torch.cat([below[name][0], s], dim=1), c) for name, (s, c) in new.items()}

    def scalars(self, metrics: SplitMetrics, batch: Batch, logits: Tensor) -> dict[str, Terms]:
        """A batch's per-sequence terms of the family's scalar metrics."""
        lg, tg = self.family.loss_positions(batch, logits)
        loss = F.cross_entropy(lg.flatten(0, -2), tg.flatten(), reduction="none").view(tg.shape)
        return metrics.terms(batch, lg, tg, loss)

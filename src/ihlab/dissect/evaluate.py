"""One checkpoint of one run, evaluated intact and under every intervention on the run's own
evaluation sets, every metric kept sequence by sequence (for intervals paired over sequences).

The intact forward is the run's own (its clamps active as at that step, as training evaluated
it); an intervention adds its clamps to those. Both are built by the lab's one hook assembly,
`ClampSet.hooks`. Where it is faster and changes nothing:
- shared lower layers: an intervention that changes nothing below layer l starts at layer l
  from the intact forward's residual there (`Transformer.forward(..., start=...)`);
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


@dataclass
class Group:
    """Interventions evaluated by one forward per chunk: one alone, or several stacked."""

    members: list[Intervention]
    start: int  # the block the forward starts at (0: from the embeddings)


def groups(
    interventions: Sequence[Intervention], batched: bool, stackable_run: bool
) -> list[Group]:
    """How to evaluate the interventions: stacked by (family, layer) where every member is one
    clamp of a stackable value (and the run's own clamps run no forward on other inputs), each
    starting at its first layer; with `batched` False each alone from the embeddings."""
    if not batched:
        return [Group([i], 0) for i in interventions]
    stacks: dict[tuple[str, int], list[Intervention]] = {}
    out: list[Group] = []
    for i in interventions:
        values = [clamp.value for clamp in i.clamps.values()]
        one_value = len(values) == 1 and values[0] in STACKABLE
        if stackable_run and one_value and i.layer is not None:
            stacks.setdefault((i.family, i.layer), []).append(i)
        else:
            out.append(Group([i], first_layer(i)))
    out += [Group(members, first_layer(members[0])) for members in stacks.values()]
    return out


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
        self.patterns = [f"blocks.{layer}.attn.pattern" for layer in range(self.n_layers)]
        self.residuals = [f"blocks.{layer}.resid_pre" for layer in range(self.n_layers)]
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
        plan = groups(interventions, batched, stackable_run)
        sets = {id(g): self.group_set(g) for g in plan}
        out = {name: Measured() for name in [INTACT, *(i.name for i in interventions)]}
        metrics = self.family.split_metrics()
        for begin in range(0, n, size):
            batch = {k: v[begin : begin + size] for k, v in eval_set.items()}
            ctx = self.context(batch, self.reference(run_set))
            cache = [*self.patterns, *self.residuals]
            hooks = run_set.hooks(ctx, cache, self.model) or SiteHooks(cache=cache)
            logits = self.model(ctx.inputs, hooks)
            intact = hooks.cache
            out[INTACT].add(*self.measure(metrics, batch, logits, intact))
            for group in plan:
                self.run_group(group, sets[id(group)], batch, intact, metrics, out)
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
        metrics: SplitMetrics,
        out: dict[str, Measured],
    ) -> None:
        """One group's forwards on one chunk (in slices of at most `batch_rows` rows)."""
        b = next(iter(batch.values())).shape[0]
        per_forward = max(1, self.batch_rows // b)
        for lo in range(0, len(group.members), per_forward):
            members = group.members[lo : lo + per_forward]
            if len(group.members) > 1 and len(members) != len(group.members):
                clamps = self.group_set(Group(members, group.start))
            k = len(members)
            stacked = {
                key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in batch.items()
            }
            ctx = self.context(stacked, self.reference(clamps))
            names = self.patterns[group.start :]
            hooks = clamps.hooks(ctx, names, self.model) or SiteHooks(cache=names)
            start = None
            if group.start > 0:
                resid = intact[self.residuals[group.start]]
                start = (group.start, resid.repeat(k, *[1] * (resid.dim() - 1)))
            logits = self.model(ctx.inputs, hooks, start)
            for j, member in enumerate(members):
                rows = slice(j * b, (j + 1) * b)
                sites = {name: intact[name] for name in self.patterns[: group.start]}
                sites.update({name: hooks.cache[name][rows] for name in names})
                out[member.name].add(*self.measure(metrics, batch, logits[rows], sites))

    def measure(
        self, metrics: SplitMetrics, batch: Batch, logits: Tensor, sites: dict[str, Tensor]
    ) -> tuple[dict[str, Terms], dict[str, Terms]]:
        """A chunk's per-sequence terms: the family's scalar metrics and head scores."""
        lg, tg = self.family.loss_positions(batch, logits)
        loss = F.cross_entropy(lg.flatten(0, -2), tg.flatten(), reduction="none").view(tg.shape)
        scalars = metrics.terms(batch, lg, tg, loss)
        heads = self.family.head_score_terms([sites[name] for name in self.patterns], batch)
        return scalars, heads

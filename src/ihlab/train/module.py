"""The LightningModule: trains the transformer on a data family and measures what the papers
measure, for one seed or for a seed ensemble (members.py: one member per seed, trained as one
batched computation; a single run is a job of one member).

Everything that depends on the data comes from each member's data family (data/base.py): what the
model reads, where the loss is taken, the training scalars, each evaluation split's metrics and
tables, and the head scores that mean something for it. Every `score_every` steps the heads are
scored on the family's fixed probe batch, with the weight-based OV copying score (`ov_copying`)
and the Q/K/V-composition scores beside them. Every member logs to its own loggers and tables.

Clamps (ihlab.clamps) act in every forward: training, evaluation and head scoring, so a clamped
head's scores show what the network actually used. With `trainer.eval_unclamped` the evaluation
and the head scores are also logged without clamps, under "unclamped/".

With `trainer.precision=bf16-mixed` only the training steps run under bfloat16 autocast (the
weights and the optimizer stay float32): evaluation turns autocast off (`float32`), and head
scores are computed in hooks outside the training step, where Lightning's autocast never is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ihlab.clamps.context import ClampContext
from ihlab.clamps.engine import ClampSet
from ihlab.clamps.values.mean import ReferenceInputs
from ihlab.data.base import Batch, DataFamily, SplitMetrics
from ihlab.metrics.circuits import composition_scores, ov_copying_score
from ihlab.model import ModelConfig, Transformer, shape_state, unfused_attention
from ihlab.runs.atomic import open_atomic
from ihlab.runs.files import LAST, LOSS_BY_POSITION, step_checkpoint
from ihlab.runs.tables import StepTable
from ihlab.seeding import derive_seed
from ihlab.sites import SiteHooks
from ihlab.tracking.loggers import log_head_scores
from ihlab.tracking.pictures import loss_by_position_image
from ihlab.tracking.wandb_run import WandbRun
from ihlab.train.members import MemberBatches, member_batch, member_state, param_key, param_name
from ihlab.train.optim import OptimConfig, build_optimizer, lr_factor
from ihlab.train.schema import TrainerConfig

log = logging.getLogger("ihlab.module")


def float32(device: torch.device) -> torch.autocast:
    """Autocast off: the block computes in float32 whatever precision the training steps use
    (`trainer.precision=bf16-mixed`), so every evaluation and head score the lab reports is a
    float32 measurement of the float32 weights."""
    return torch.autocast(device.type, enabled=False)


class Diverged(Exception):
    """The training loss at `step` was non-finite or above `limit`: the run cannot go on."""

    def __init__(self, step: int, loss: float, limit: float) -> None:
        self.step, self.loss, self.limit = step, loss, limit
        super().__init__(f"training loss {loss:.6g} at step {step} (limit {limit:.6g})")


@dataclass
class Member:
    """One seed of a job: its data family, where it writes (loggers, per-evaluation tables, and
    for ensembles its own checkpoints folder), and whether it diverged."""

    seed: int
    family: DataFamily
    loggers: list[Logger] = field(default_factory=list)
    tables: dict[str, StepTable] = field(default_factory=dict)
    checkpoints: Path | None = None  # an ensemble member's own checkpoints (None: the job's)
    diverged: Diverged | None = None


class LabModule(L.LightningModule):
    """Training, evaluation and head scoring of the job's members (one Transformer per seed,
    parameters stacked on a member axis; see members.py)."""

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        trainer: TrainerConfig,
        members: list[Member],
        clamps: ClampSet | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg, self.optim_cfg, self.trainer_cfg = model, optim, trainer
        self.members = members
        self.io = members[0].family.io
        self.clamps = clamps if clamps is not None else ClampSet([], model.n_layers)
        self.eval_variants = ("", "unclamped/") if trainer.eval_unclamped and self.clamps else ("",)
        factor = trainer.divergence_factor
        # A training loss above it stops the run: factor x the uniform guess's loss.
        self.divergence_limit = factor * math.log(self.io.d_vocab_out) if factor else math.inf
        models = []
        for member in members:  # each member's init is its single run's
            torch.manual_seed(derive_seed(member.seed, "init"))
            models.append(Transformer(model, self.io))
        names = [name for name, _ in models[0].named_parameters()]
        self.params = nn.ParameterDict(
            {
                param_key(n): nn.Parameter(
                    torch.stack([dict(m.named_parameters())[n] for m in models])
                )
                for n in names
            }
        )
        # The module whose forward every member runs with its own parameters (functional_call);
        # a list keeps its (unused) parameters out of this module's state and optimizer.
        self._template = [models[0].requires_grad_(False)]
        self.eval_metrics = nn.ModuleList(
            nn.ModuleDict(
                {
                    self._metrics_key(variant, split): member.family.split_metrics()
                    for variant in self.eval_variants
                    for split in member.family.eval_splits
                }
            )
            for member in members
        )

    @property
    def template(self) -> Transformer:
        return self._template[0]

    @staticmethod
    def _metrics_key(variant: str, split: str) -> str:
        return f"{'unclamped' if variant else 'split'}_{split}"

    @property
    def data(self) -> MemberBatches:
        return self.trainer.datamodule

    def setup(self, stage: str) -> None:
        self.prepare(self.data)

    def prepare(self, data: MemberBatches) -> None:
        """Take the members' fixed batches: the probe batch and the mean clamps' reference."""
        self.probe = data.probe_batch()
        size = self.clamps.reference_size()
        self.reference: Batch | None = None  # the mean clamps' reference inputs, (member, ...)
        if size:
            batch = data.reference_batch(size)
            inputs = [
                m.family.model_inputs(member_batch(batch, k)) for k, m in enumerate(self.members)
            ]
            self.reference = {key: torch.stack([i[key] for i in inputs]) for key in inputs[0]}

    def on_fit_start(self) -> None:
        self.clamps.to(self.device)
        self.template.to(self.device)
        if self.reference is not None:
            self.reference = {k: v.to(self.device) for k, v in self.reference.items()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ihlab_model"] = shape_state(self.model_cfg, self.io)  # for grafts and probes
        checkpoint["ihlab_diverged"] = {
            k: [m.diverged.step, m.diverged.loss, m.diverged.limit]
            for k, m in enumerate(self.members)
            if m.diverged is not None
        }
        for member in self.members:  # a checkpoint never holds steps metrics.csv lacks
            for logger in member.loggers:
                logger.save()
        if len(self.members) > 1:
            self.save_member_checkpoints(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for k, (step, loss, limit) in checkpoint.get("ihlab_diverged", {}).items():
            self.members[int(k)].diverged = Diverged(step, loss, limit)

    def save_member_checkpoints(self, checkpoint: dict[str, Any]) -> None:
        """Each active member's own weights, in its run directory (step_XXXXXX.ckpt and
        last.ckpt): what `load_lab_model`, grafts and ihlab-probe read. The job's checkpoint,
        with every member and the optimizer, is what a resume reads."""
        step = checkpoint["global_step"]
        for k, member in enumerate(self.members):
            if member.diverged is not None or member.checkpoints is None:
                continue
            own = {
                "global_step": step,
                "ihlab_model": checkpoint["ihlab_model"],
                "state_dict": {
                    f"params.{key}": p[k : k + 1].detach().cpu() for key, p in self.params.items()
                },
            }
            for name in (step_checkpoint(step), LAST):
                with open_atomic(member.checkpoints / name, "wb") as f:
                    torch.save(own, f)

    # forward and losses

    def run(
        self,
        batch: Batch,
        clamped: bool = True,
        cache: tuple[str, ...] = (),
        batched: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Every member's forward on its slice of a stacked batch: logits (member, ...) and the
        `cache` sites (member, ...). `batched`: one vmap over the members; otherwise each member
        runs alone, exactly as its single run would. Training always batches (a step's small
        batches cost mostly per-operation overhead, which one batched forward pays once);
        evaluation and head scores batch only off the CPU (`measure_batched`)."""
        family, template, step, clamps = (
            self.members[0].family,
            self.template,
            self.global_step,
            self.clamps,
        )

        def one(params: dict[str, Tensor], b: Batch, ref: Batch | None) -> tuple[Tensor, dict]:
            def forward(x: Batch, hooks: SiteHooks) -> Tensor:
                return functional_call(template, params, (x, hooks))

            inputs = family.model_inputs(b)  # every member's family reads its batch the same way
            reference = None if ref is None else ReferenceInputs(ref)
            ctx = ClampContext(inputs, b.get("target"), step, reference)
            hooks = clamps.hooks(ctx, cache, forward) if clamped else None
            hooks = hooks if hooks is not None else SiteHooks(cache=cache)
            return forward(inputs, hooks), {name: hooks.cache[name] for name in cache}

        if len(self.members) == 1 or not batched:
            runs = [
                one(
                    member_state(self.params, k),
                    member_batch(batch, k),
                    None if self.reference is None else member_batch(self.reference, k),
                )
                for k in range(len(self.members))
            ]
            if len(runs) == 1:
                logits, sites = runs[0]
                return logits[None], {name: value[None] for name, value in sites.items()}
            logits = torch.stack([lg for lg, _ in runs])
            return logits, {name: torch.stack([c[name] for _, c in runs]) for name in cache}
        params = {param_name(key): p for key, p in self.params.items()}
        with unfused_attention():
            return vmap(one, in_dims=(0, 0, None if self.reference is None else 0))(
                params, batch, self.reference
            )

    @property
    def measure_batched(self) -> bool:
        """Whether evaluation and head scores run the members as one vmap. On the CPU they run
        one member at a time: their 1000-sequence batches already keep the cores busy, so
        batching gains nothing, and a member alone keeps PyTorch's fused attention (no vmap
        rule), which is faster there. On an accelerator one batched forward fills the device
        that hundreds of members' one-by-one forwards would leave idle."""
        return self.device.type != "cpu"

    def losses(self, batch: Batch, logits: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per member: logits and targets where its family takes the loss, and the cross-entropy of
        every target (shaped like the targets)."""
        out = []
        for k, member in enumerate(self.members):
            lg, tg = member.family.loss_positions(member_batch(batch, k), logits[k])
            loss = F.cross_entropy(lg.flatten(0, -2), tg.flatten(), reduction="none")
            out.append((lg, tg, loss.view(tg.shape)))
        return out

    # training

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits, _ = self.run(batch)
        per_member = self.losses(batch, logits)
        losses = torch.stack([loss.mean() for _, _, loss in per_member])  # (member,)
        values = losses.detach().tolist()
        for member, value in zip(self.members, values, strict=True):
            if member.diverged is None and (
                not math.isfinite(value) or value > self.divergence_limit
            ):
                member.diverged = Diverged(self.global_step, value, self.divergence_limit)
                log.error("seed %d diverged: %s", member.seed, member.diverged)
        active = [k for k, m in enumerate(self.members) if m.diverged is None]
        if not active:  # every member diverged: the job stops (each member's record is its own)
            raise Diverged(self.global_step, min(values), self.divergence_limit)
        if self.global_step % self.trainer_cfg.log_every == 0:
            lr = self.optimizers().param_groups[0]["lr"] if self.optim_cfg.scheduled else None
            for k in active:
                lg, tg, loss = per_member[k]
                correct = lg.detach().argmax(-1) == tg
                metrics = self.members[k].family.train_scalars(
                    member_batch(batch, k), loss.detach(), correct
                )
                if lr is not None:
                    metrics["lr"] = torch.tensor(lr)
                self.send(k, metrics)
            self.log(
                "loss", float(np.mean([values[k] for k in active])), prog_bar=True, logger=False
            )
        return losses[active].sum()

    def send(self, member: int, metrics: dict[str, Tensor]) -> None:
        """Log scalars to a member's loggers at the current step (optimizer updates so far)."""
        values = {k: float(v) for k, v in metrics.items()}
        values["sequences"] = float(self.global_step * self.members[member].family.cfg.batch_size)
        for logger in self.members[member].loggers:
            logger.log_metrics(values, step=self.global_step)

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """Clip each member's gradient norm on its own (a global norm would couple members)."""
        if gradient_clip_val is None:
            return
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # (member,)
        scale = (gradient_clip_val / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.params.values(), self.optim_cfg)
        if not self.optim_cfg.scheduled:
            return optimizer
        max_steps = self.trainer_cfg.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.optim_cfg, max_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # evaluation

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.data.eval_splits[dataloader_idx]  # batch: (member, batch, ...)
        for variant in self.eval_variants:
            with float32(self.device):
                logits, _ = self.run(batch, clamped=not variant, batched=self.measure_batched)
            for k, (lg, tg, loss) in enumerate(self.losses(batch, logits)):
                metrics: SplitMetrics = self.eval_metrics[k][self._metrics_key(variant, split)]
                metrics.update(member_batch(batch, k), lg, tg, loss)

    def on_validation_epoch_end(self) -> None:
        splits = self.data.eval_splits
        for k, member in enumerate(self.members):
            metrics: dict[str, Tensor] = {}
            for variant, split in ((v, s) for v in self.eval_variants for s in splits):
                prefix = variant + ("eval" if len(splits) == 1 else f"eval/{split}")
                running: SplitMetrics = self.eval_metrics[k][self._metrics_key(variant, split)]
                metrics.update({f"{prefix}/{n}": v for n, v in running.compute().items()})
                if not variant and split == splits[0]:
                    self.record_tables(member, running.rows())
                running.reset()
            if member.diverged is not None:
                continue
            self.send(k, metrics)
            for logger in member.loggers:
                logger.save()  # metrics.csv on disk is never more than one evaluation behind
            shown = ", ".join(f"{n} {float(v):.4g}" for n, v in metrics.items())
            log.info("step %d%s: %s", self.global_step, self.seed_tag(member), shown)

    def seed_tag(self, member: Member) -> str:
        return f" seed {member.seed}" if len(self.members) > 1 else ""

    def record_tables(self, member: Member, rows: dict[str, Tensor]) -> None:
        """This evaluation's vectors as rows of a member's tables; the loss x position x step
        picture goes to W&B."""
        if member.diverged is not None:
            return
        step = self.global_step
        for name, row in rows.items():
            if name in member.tables:
                member.tables[name].add(step, row.tolist())
                member.tables[name].save()
        table = member.tables.get(LOSS_BY_POSITION)
        if table is None or len(table.rows) < 2:
            return
        losses = np.array([table.rows[s] for s in sorted(table.rows)])  # (steps, positions)
        for logger in member.loggers:
            if isinstance(logger, WandbRun):
                image = loss_by_position_image(losses)
                caption = f"loss by position: steps {min(table.rows)}-{step} down, positions across"
                logger.log_image("eval/loss_by_position", image, step, caption)

    @torch.no_grad()
    def evaluate(self) -> None:
        """An evaluation outside Lightning's schedule (the initial models', at step 0)."""
        for index, loader in enumerate(self.data.val_dataloader()):
            for batch in loader:
                self.validation_step({k: v.to(self.device) for k, v in batch.items()}, 0, index)
        self.on_validation_epoch_end()

    # head scores

    def on_train_start(self) -> None:
        if self.global_step == 0:
            if self.trainer_cfg.eval_at_start:
                self.evaluate()
            self.score_heads()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.trainer_cfg.score_every
        if every > 0 and self.global_step % every == 0:
            self.score_heads()

    def member_model(self, member: int) -> Transformer:
        """The template holding one member's current weights (for weight-based scores)."""
        self.template.load_state_dict(member_state(self.params, member))
        return self.template

    @torch.no_grad()
    def score_heads(self) -> None:
        """Score every member's heads on its probe batch (in the clamped forward) and log them."""
        probe = {k: v.to(self.device) for k, v in self.probe.items()}
        names = tuple(f"blocks.{layer}.attn.pattern" for layer in range(self.model_cfg.n_layers))
        runs = {
            variant: self.run(
                probe, clamped=not variant, cache=names, batched=self.measure_batched
            )[1]
            for variant in self.eval_variants
        }
        for k, member in enumerate(self.members):
            if member.diverged is not None:
                continue
            model = self.member_model(k)
            weights = {"ov_copying": ov_copying_score(model), **composition_scores(model)}
            for variant, cache in runs.items():
                patterns = [cache[name][k] for name in names]
                scores = member.family.score_heads(patterns, member_batch(probe, k))
                if not variant:
                    scores.update(weights)  # weight-based: the same with or without clamps
                log_head_scores(member.loggers, scores, self.global_step, prefix=variant)

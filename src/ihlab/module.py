"""The LightningModule: trains the transformer on a task and measures what the papers measure.

Everything that depends on the data comes from the task (data/base.py): what the model reads,
where the loss is taken, the training scalars, each evaluation split's metrics and tables, and
the head scores that mean something for it. Every `score_every` steps the heads are scored on the
task's fixed probe batch, with the weight-based copying and Q/K/V-composition scores beside them.

Clamps (clamps.py) act in every forward: training, evaluation and head scoring, so a clamped head's
scores show what the network actually used. With `trainer.eval_unclamped` the evaluation and the
head scores are also logged without clamps, under "unclamped/".
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from ihlab.clamps import ClampContext, ClampSet, ValueKind
from ihlab.config import TrainerConfig
from ihlab.data.base import Batch, SplitMetrics, Task
from ihlab.metrics.circuits import composition_scores, copying_score
from ihlab.model import ModelConfig, Transformer, shape_state
from ihlab.optim import OptimConfig, build_optimizer, lr_factor
from ihlab.outputs import StepTable, log_head_scores, loss_by_position_image
from ihlab.sites import SiteHooks

log = logging.getLogger("ihlab.module")


class Diverged(Exception):
    """The training loss at `step` was non-finite or above `limit`: the run cannot go on."""

    def __init__(self, step: int, loss: float, limit: float) -> None:
        self.step, self.loss, self.limit = step, loss, limit
        super().__init__(f"training loss {loss:.6g} at step {step} (limit {limit:.6g})")


class LabModule(L.LightningModule):
    """Training, evaluation and head scoring of one `Transformer` on one task.

    `tables` (table name -> StepTable, with `Task.table_columns`) receive one row per evaluation
    of the first split: the per-example losses of the loss PCA and the family's own vectors.
    """

    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        trainer: TrainerConfig,
        task: Task,
        clamps: ClampSet | None = None,
        tables: dict[str, StepTable] | None = None,
    ) -> None:
        super().__init__()
        self.model = Transformer(model, task.io)
        self.model_cfg, self.optim_cfg, self.trainer_cfg = model, optim, trainer
        self.task = task
        self.clamps = clamps if clamps is not None else ClampSet([])
        self.tables = tables or {}
        self.eval_variants = ("", "unclamped/") if trainer.eval_unclamped and self.clamps else ("",)
        factor = trainer.divergence_factor
        # A training loss above it stops the run: factor x the uniform guess's loss.
        self.divergence_limit = factor * math.log(task.io.d_vocab_out) if factor else math.inf
        self.eval_metrics = torch.nn.ModuleDict(
            {
                self._metrics_key(variant, split): task.split_metrics()
                for variant in self.eval_variants
                for split in task.eval_splits
            }
        )

    @staticmethod
    def _metrics_key(variant: str, split: str) -> str:
        return f"{'unclamped' if variant else 'split'}_{split}"

    def setup(self, stage: str) -> None:
        self.probe = self.task.probe_batch()
        means = [c.cfg.reference_size for c in self.clamps.clamps if c.kind == ValueKind.mean]
        if means:
            reference = self.task.reference_batch(max(means))
            self.clamps.reference = self.task.model_inputs(reference)

    def on_fit_start(self) -> None:
        self.clamps.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ihlab_model"] = shape_state(self.model_cfg, self.task.io)  # for grafts

    # forward and losses

    def forward(self, inputs: Batch, hooks: SiteHooks | None = None) -> Tensor:
        return self.model(inputs) if hooks is None else self.model(inputs, hooks)

    def clamp_hooks(
        self, batch: Batch, inputs: Batch, cache: tuple[str, ...] = ()
    ) -> SiteHooks | None:
        """Hooks of a clamped forward at the current step (None: no clamp on, nothing cached)."""
        ctx = ClampContext(inputs, batch.get("target"), self.global_step)
        return self.clamps.hooks(self.model, ctx, cache)

    def predict(self, batch: Batch, clamped: bool = True) -> tuple[Tensor, Tensor]:
        """Logits and targets where the task takes the loss."""
        inputs = self.task.model_inputs(batch)
        hooks = self.clamp_hooks(batch, inputs) if clamped else None
        logits = self(inputs, hooks)  # (batch, pos, d_vocab_out)
        return self.task.loss_positions(batch, logits)

    @staticmethod
    def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of every target, shaped like `targets`."""
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none")
        return loss.view(targets.shape)

    # training

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits, targets = self.predict(batch)
        token_loss = self.token_losses(logits, targets)
        loss = token_loss.mean()
        value = float(loss.detach())
        if not math.isfinite(value) or value > self.divergence_limit:
            raise Diverged(self.global_step, value, self.divergence_limit)
        if self.global_step % self.trainer_cfg.log_every == 0:
            correct = logits.detach().argmax(-1) == targets
            metrics = self.task.train_scalars(batch, token_loss.detach(), correct)
            if self.optim_cfg.scheduled:
                metrics["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)
            self.send(metrics)
        return loss

    def send(self, metrics: dict[str, Tensor]) -> None:
        """Log scalars to every logger at the current step (optimizer updates applied so far)."""
        values = {k: float(v) for k, v in metrics.items()}
        values["sequences"] = float(self.global_step * self.task.cfg.batch_size)
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.optim_cfg)
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
        split = self.task.eval_splits[dataloader_idx]
        for variant in self.eval_variants:
            logits, targets = self.predict(batch, clamped=not variant)
            token_loss = self.token_losses(logits, targets)
            metrics: SplitMetrics = self.eval_metrics[self._metrics_key(variant, split)]
            metrics.update(batch, logits, targets, token_loss)

    def on_validation_epoch_end(self) -> None:
        splits = self.task.eval_splits
        metrics: dict[str, Tensor] = {}
        for variant, split in ((v, s) for v in self.eval_variants for s in splits):
            prefix = variant + ("eval" if len(splits) == 1 else f"eval/{split}")
            running: SplitMetrics = self.eval_metrics[self._metrics_key(variant, split)]
            metrics.update({f"{prefix}/{k}": v for k, v in running.compute().items()})
            if not variant and split == splits[0]:
                self.record_tables(running.rows())
            running.reset()
        self.send(metrics)
        for logger in self.loggers:
            logger.save()  # metrics.csv on disk is never more than one evaluation behind
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
        log.info("step %d: %s", self.global_step, shown)

    def record_tables(self, rows: dict[str, Tensor]) -> None:
        """This evaluation's vectors as rows of the run's tables; the loss x position x step
        picture goes to W&B."""
        step = self.global_step
        for name, row in rows.items():
            if name in self.tables:
                self.tables[name].add(step, row.tolist())
                self.tables[name].save()
        table = self.tables.get("loss_by_position")
        if table is None or len(table.rows) < 2:
            return
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                image = loss_by_position_image(
                    np.array([table.rows[s] for s in sorted(table.rows)])
                )
                caption = f"loss by position: steps {min(table.rows)}-{step} down, positions across"
                logger.log_image("eval/loss_by_position", [image], step=step, caption=[caption])

    # head scores

    def on_train_start(self) -> None:
        if self.global_step == 0:
            if self.trainer_cfg.eval_at_start:
                self.evaluate()
            self.score_heads()

    @torch.no_grad()
    def evaluate(self) -> None:
        """An evaluation outside Lightning's schedule (the initial model's, at step 0)."""
        for index, loader in enumerate(self.trainer.datamodule.val_dataloader()):
            for batch in loader:
                self.validation_step({k: v.to(self.device) for k, v in batch.items()}, 0, index)
        self.on_validation_epoch_end()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.trainer_cfg.score_every
        if every > 0 and self.global_step % every == 0:
            self.score_heads()

    @torch.no_grad()
    def score_heads(self) -> dict[str, Tensor]:
        """Score every head on the probe batch (in the clamped forward) and log the scores."""
        probe = {k: v.to(self.device) for k, v in self.probe.items()}
        inputs = self.task.model_inputs(probe)
        names = tuple(f"blocks.{layer}.attn.pattern" for layer in range(len(self.model.blocks)))
        weights = {"copying": copying_score(self.model), **composition_scores(self.model)}
        scores: dict[str, dict[str, Tensor]] = {}
        for variant in self.eval_variants:
            hooks = SiteHooks(cache=names) if variant else self.clamp_hooks(probe, inputs, names)
            self.model(inputs, hooks)
            patterns = [hooks.cache[n] for n in names]
            scores[variant] = self.task.head_scores(patterns, probe)
            if not variant:
                scores[variant].update(weights)  # weight-based: the same with or without clamps
            log_head_scores(self.loggers, scores[variant], self.global_step, prefix=variant)
        return scores[""]

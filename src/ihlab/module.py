"""The LightningModule: trains the transformer and measures what the papers measure.

Token data (repeated random tokens) trains next-token prediction at every position and reports the
loss on the first vs repeated segment and the ICL score. Few-shot data trains only at the query and
reports loss and accuracy per evaluation split. Every `score_every` steps, on the datamodule's fixed
probe batch, each head's previous-token and prefix-matching scores (and induction strength for
few-shot data) are logged, with the weight-based copying and Q/K/V-composition scores.

Clamps (clamps.py) act in every forward: training, evaluation and head scoring, so a clamped head's
scores show what the network actually used. With `eval_unclamped` the evaluation and the head scores
are also logged without clamps, under "unclamped/".
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MeanMetric

from ihlab.clamps import ClampContext, ClampSet, ValueKind
from ihlab.data.base import ModelIO
from ihlab.metrics.circuits import composition_scores, copying_score
from ihlab.metrics.heads import head_scores
from ihlab.metrics.loss_profile import ExampleLoss, PositionalLoss
from ihlab.model import ModelConfig, Transformer, shape_state
from ihlab.optim import OptimConfig, build_optimizer, lr_factor
from ihlab.outputs import StepTable, log_head_scores, loss_by_position_figure
from ihlab.sites import SiteHooks

log = logging.getLogger("ihlab.module")


class Diverged(Exception):
    """The training loss at `step` was non-finite or above `limit`: the run cannot go on."""

    def __init__(self, step: int, loss: float, limit: float) -> None:
        self.step, self.loss, self.limit = step, loss, limit
        super().__init__(f"training loss {loss:.6g} at step {step} (limit {limit:.6g})")


class LabModule(L.LightningModule):
    """Training, evaluation and head scoring of one `Transformer` on one data family.

    The datamodule supplies what depends on the data: `eval_splits`, `probe_batch()` and, for
    token data, `icl_positions()` (overridden by `icl_positions` here). Token batches carry a
    "repeat_mask" of the targets that copying can predict.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        optim_cfg: OptimConfig,
        io: ModelIO,
        eval_splits: tuple[str, ...],
        max_steps: int,
        batch_size: int,
        score_every: int,
        log_every: int = 10,
        icl_positions: tuple[int, int] | None = None,
        clamps: ClampSet | None = None,
        eval_unclamped: bool = False,
        tables: dict[str, StepTable] | None = None,
        pca_examples: int = 256,
        divergence_limit: float = math.inf,
    ) -> None:
        super().__init__()
        self.model = Transformer(model_cfg, io)
        self.model_cfg, self.io = model_cfg, io
        self.clamps = clamps if clamps is not None else ClampSet([])
        self.eval_unclamped = eval_unclamped and bool(self.clamps)
        self.optim_cfg, self.max_steps, self.batch_size = optim_cfg, max_steps, batch_size
        self.score_every, self.log_every = score_every, log_every
        self.token_task = io.d_vocab is not None
        self.eval_splits = eval_splits
        self.icl_positions = icl_positions
        self.divergence_limit = divergence_limit  # a training loss above it stops the run
        self.tables = tables or {}  # "loss_by_position", "per_token_loss": one row per evaluation
        self.eval_variants = ("", "unclamped/") if self.eval_unclamped else ("",)
        self.eval_metrics = torch.nn.ModuleDict(
            {
                self._metrics_key(variant, s): self._split_metrics(io.n_ctx, pca_examples)
                for variant in self.eval_variants
                for s in eval_splits
            }
        )

    @staticmethod
    def _metrics_key(variant: str, split: str) -> str:
        return f"{'unclamped' if variant else 'split'}_{split}"

    def _split_metrics(self, n_ctx: int, n_examples: int) -> torch.nn.ModuleDict:
        """Running loss and accuracy of one evaluation split, the per-example losses for the PCA
        (+ the loss profile for tokens)."""
        positions = n_ctx - 1 if self.token_task else 1
        metrics = {
            "loss": MeanMetric(),
            "acc": MeanMetric(),
            "examples": ExampleLoss(n_examples, positions, seed=0),
        }
        if self.token_task:
            metrics.update(
                profile=PositionalLoss(n_ctx - 1), loss_first=MeanMetric(), loss_repeat=MeanMetric()
            )
        return torch.nn.ModuleDict(metrics)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.token_task and self.icl_positions is None:
            self.icl_positions = dm.icl_positions()
        self.probe = dm.probe_batch()
        means = [c.cfg.reference_size for c in self.clamps.clamps if c.kind == ValueKind.mean]
        if means:
            self.clamps.reference = self.model_inputs(dm.reference_batch(max(means)))

    def on_fit_start(self) -> None:
        self.clamps.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ihlab_model"] = shape_state(self.model_cfg, self.io)  # for grafts

    # forward and losses

    def forward(self, inputs: dict[str, Tensor], hooks: SiteHooks | None = None) -> Tensor:
        return self.model(inputs) if hooks is None else self.model(inputs, hooks)

    def model_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the model reads: the tokens but the last for token data, else the whole sequence."""
        if self.token_task:
            return {"tokens": batch["tokens"][:, :-1]}
        return {"features": batch["features"], "labels": batch["labels"]}

    def clamp_hooks(
        self, batch: dict[str, Tensor], inputs: dict[str, Tensor], cache: tuple[str, ...] = ()
    ) -> SiteHooks | None:
        """Hooks of a clamped forward at the current step (None: no clamp on, nothing cached)."""
        ctx = ClampContext(inputs, batch.get("target"), self.global_step)
        return self.clamps.hooks(self.model, ctx, cache)

    def predict(self, batch: dict[str, Tensor], clamped: bool = True) -> tuple[Tensor, Tensor]:
        """Logits and targets where the loss is taken: every next token, or the few-shot query.

        Returns (batch, pos, d_vocab_out) and (batch, pos) for tokens; (batch, n_labels) and
        (batch,) for few-shot sequences.
        """
        inputs = self.model_inputs(batch)
        hooks = self.clamp_hooks(batch, inputs) if clamped else None
        logits = self(inputs, hooks)  # (batch, pos, d_vocab_out)
        if self.token_task:
            return logits, batch["tokens"][:, 1:]
        return logits[:, -1], batch["target"]

    @staticmethod
    def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of every target, shaped like `targets`."""
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none")
        return loss.view(targets.shape)

    # training

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, targets = self.predict(batch)
        token_loss = self.token_losses(logits, targets)
        loss = token_loss.mean()
        value = float(loss.detach())
        if not math.isfinite(value) or value > self.divergence_limit:
            raise Diverged(self.global_step, value, self.divergence_limit)
        if self.global_step % self.log_every == 0:
            self.log_train_metrics(
                batch, token_loss.detach(), logits.detach().argmax(-1) == targets
            )
        return loss

    def log_train_metrics(
        self, batch: dict[str, Tensor], token_loss: Tensor, correct: Tensor
    ) -> None:
        """Training scalars of the current batch, measured before this step's update."""
        metrics = {"train/loss": token_loss.mean()}
        if self.token_task:
            repeat = batch["repeat_mask"]  # (batch, pos)
            metrics["train/loss_first"] = token_loss[~repeat].mean()
            metrics["train/loss_repeat"] = token_loss[repeat].mean()
        else:
            metrics["train/acc"] = correct.float().mean()
        if self.optim_cfg.scheduled:
            metrics["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)
        self.send(metrics)

    def send(self, metrics: dict[str, Tensor]) -> None:
        """Log scalars to every logger at the current step (optimizer updates applied so far)."""
        values = {k: float(v) for k, v in metrics.items()}
        values["sequences"] = float(self.global_step * self.batch_size)
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.optim_cfg)
        if not self.optim_cfg.scheduled:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.optim_cfg, self.max_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # evaluation

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for variant in self.eval_variants:
            split = self.eval_metrics[self._metrics_key(variant, self.eval_splits[dataloader_idx])]
            logits, targets = self.predict(batch, clamped=not variant)
            token_loss = self.token_losses(logits, targets)
            split["loss"].update(token_loss)
            split["acc"].update((logits.argmax(dim=-1) == targets).float())
            split["examples"].update(token_loss)
            if self.token_task:
                repeat = batch["repeat_mask"]  # (batch, pos)
                split["profile"].update(token_loss)
                split["loss_first"].update(token_loss[~repeat])
                split["loss_repeat"].update(token_loss[repeat])

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, Tensor] = {}
        for variant, split in ((v, s) for v in self.eval_variants for s in self.eval_splits):
            prefix = variant + ("eval" if len(self.eval_splits) == 1 else f"eval/{split}")
            running = self.eval_metrics[self._metrics_key(variant, split)]
            metrics[f"{prefix}/loss"] = running["loss"].compute()
            metrics[f"{prefix}/acc"] = running["acc"].compute()
            if self.token_task:
                metrics[f"{prefix}/loss_first"] = running["loss_first"].compute()
                metrics[f"{prefix}/loss_repeat"] = running["loss_repeat"].compute()
                profile = running["profile"].compute()  # (pos,)
                early, late = self.icl_positions
                metrics[f"{prefix}/icl_score"] = profile[late] - profile[early]
            if not variant and split == self.eval_splits[0]:
                self.record_tables(running)
            for metric in running.values():
                metric.reset()
        self.send(metrics)
        for logger in self.loggers:
            logger.save()  # metrics.csv on disk is never more than one evaluation behind
        shown = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
        log.info("step %d: %s", self.global_step, shown)

    def record_tables(self, running: torch.nn.ModuleDict) -> None:
        """This evaluation's per-example losses (and loss by position) as rows of the run's
        tables; the loss x position x step picture goes to W&B."""
        step = self.global_step
        if "per_token_loss" in self.tables:
            self.tables["per_token_loss"].add(step, running["examples"].compute().tolist())
            self.tables["per_token_loss"].save()
        table = self.tables.get("loss_by_position")  # token data only
        if table is None:
            return
        table.add(step, running["profile"].compute().tolist())
        table.save()
        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and len(table.rows) > 1:
                steps = sorted(table.rows)
                fig = loss_by_position_figure(
                    np.array(steps), np.array([table.rows[s] for s in steps])
                )
                logger.log_image("eval/loss_by_position", [fig], step=step)
                plt.close(fig)

    # head scores

    def on_train_start(self) -> None:
        if self.global_step == 0:
            self.score_heads()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.score_every > 0 and self.global_step % self.score_every == 0:
            self.score_heads()

    @torch.no_grad()
    def score_heads(self) -> dict[str, Tensor]:
        """Score every head on the probe batch (in the clamped forward) and log the scores."""
        probe = {k: v.to(self.device) for k, v in self.probe.items()}
        inputs, ids = self.model_inputs(probe), probe["ids"]
        if self.token_task:
            ids = ids[:, :-1]
        names = tuple(f"blocks.{layer}.attn.pattern" for layer in range(len(self.model.blocks)))
        weights = {"copying": copying_score(self.model), **composition_scores(self.model)}
        scores: dict[str, dict[str, Tensor]] = {}
        for variant in self.eval_variants:
            hooks = SiteHooks(cache=names) if variant else self.clamp_hooks(probe, inputs, names)
            self.model(inputs, hooks)
            patterns = [hooks.cache[n] for n in names]
            scores[variant] = head_scores(patterns, ids, probe.get("labels"), probe.get("target"))
            if not variant:
                scores[variant].update(weights)  # weight-based: the same with or without clamps
            log_head_scores(self.loggers, scores[variant], self.global_step, prefix=variant)
        return scores[""]

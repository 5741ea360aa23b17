"""Every file of a run directory, named once (the output contract).

    <run dir>/
      .hydra/config.yaml, hydra.yaml, overrides.yaml, resolved.yaml   the run's identity
      train.log                    the run's log
      metrics.csv                  every logged scalar, one row per logging step
      <table>.csv                  one vector per evaluation (per_token_loss, loss_by_position)
      loss_pca.csv                 the per-token-loss PCA trajectory, written at the end
      summary.json                 how the run ended and what it measured
      checkpoints/                 step_XXXXXX.ckpt, last.ckpt, interrupted.ckpt,
                                   on_exception.ckpt, diverged/
      wandb/                       the W&B run (its id in wandb/ihlab-run-id)
      .lock, .replaced/            the owner's lock; earlier contents moved aside

An ensemble job's directory holds `ensemble.json` and one such run directory per seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

METRICS = "metrics.csv"
SUMMARY = "summary.json"  # a run's record
JOB_RECORD = "ensemble.json"  # an ensemble job's record (its members are runs inside it)
TRAIN_LOG = "train.log"
HYDRA = ".hydra"
RESOLVED = "resolved.yaml"  # in .hydra/: the composed config with interpolations resolved
CONFIG = "config.yaml"  # in .hydra/: the composed config as Hydra wrote it
LOSS_PCA = "loss_pca.csv"
PER_TOKEN_LOSS = "per_token_loss"  # table names (<name>.csv)
LOSS_BY_POSITION = "loss_by_position"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"  # saved after a signal
FAILURE = "on_exception.ckpt"  # the state when an error struck, for inspection only
DIVERGED = "diverged"  # in checkpoints/: a diverged run's broken weights
WANDB = "wandb"
WANDB_RUN_ID = "ihlab-run-id"  # in wandb/: the id of the run directory's W&B run
LOCK = ".lock"
REPLACED = ".replaced"


def step_checkpoint(step: int) -> str:
    """The periodic checkpoint of an optimizer step: step_000500.ckpt."""
    return f"step_{step:06d}.ckpt"


def table_file(name: str) -> str:
    """The CSV of a per-evaluation table."""
    return f"{name}.csv"


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory's files."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def job_record(self) -> Path:
        return self.root / JOB_RECORD

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def hydra(self) -> Path:
        return self.root / HYDRA

    @property
    def resolved(self) -> Path:
        return self.root / HYDRA / RESOLVED

    @property
    def config(self) -> Path:
        return self.root / HYDRA / CONFIG

    @property
    def loss_pca(self) -> Path:
        return self.root / LOSS_PCA

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def wandb(self) -> Path:
        return self.root / WANDB

    @property
    def wandb_run_id(self) -> Path:
        return self.root / WANDB / WANDB_RUN_ID

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def replaced(self) -> Path:
        return self.root / REPLACED

    def table(self, name: str) -> Path:
        return self.root / table_file(name)

    def history(self) -> list[Path]:
        """The files that carry a run's past (copied when a run is branched from a checkpoint):
        metrics.csv and the per-evaluation tables."""
        return [self.metrics, self.table(PER_TOKEN_LOSS), self.table(LOSS_BY_POSITION)]


def cache_root() -> Path:
    """The lab's cache of derived files (dequantized GGUF weights, tokenized corpora):
    `$IHLAB_CACHE`, else `$XDG_CACHE_HOME/ihlab`, else `~/.cache/ihlab`."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ihlab"
    return Path(os.environ.get("IHLAB_CACHE") or default)

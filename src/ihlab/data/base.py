"""What a data family gives the lab: a `DataFamily`.

A family owns everything that depends on its data: the batches (an infinite seeded training stream,
fixed evaluation sets, a probe batch for head scores, a reference batch for mean clamps), what the
model reads and where the loss is taken, the scalars and per-evaluation tables an evaluation
records, the learning-time metric and its threshold, and the head scores that mean something for
it. The training module, the run's summary and the clamps ask the family; none of them branches
on which family it is. A family is one module under `ihlab/data/` (a config dataclass and a
`DataFamily` subclass, joined by `register_family`) plus one YAML file under `conf/data/`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from ihlab.metrics.heads import HeadTerms, head_score_terms, head_scores
from ihlab.metrics.loss_profile import ExampleLoss
from ihlab.model import ModelIO
from ihlab.runs.files import PER_TOKEN_LOSS
from ihlab.seeding import generator

Batch = dict[str, Tensor]
# A scalar as per-sequence terms: (sums (n,), counts (n,)); the scalar over any set of sequences
# is sum(sums) / sum(counts), and its change under an intervention is paired sequence by sequence.
Terms = tuple[Tensor, Tensor]
PCA_EXAMPLES = 256  # evaluation sequences whose losses the per-token-loss PCA follows


@dataclass(frozen=True)
class LearningTime:
    """A run has learned at the first evaluation where `metric` is below `threshold`; its phase
    changes are detected on the same metric, smoothed with a Gaussian of s.d. `smooth_frac` of
    the evaluations (at least one; `dynamics.detect_phase_change`)."""

    metric: str
    threshold: float
    smooth_frac: float = 0.02


class DataConfig:
    """What every family's config dataclass tells the lab before any data is made (clamps are
    checked against it): the positions the model reads and the batch entries clamp values may
    read (e.g. "tokens", or "labels" and "target")."""

    batch_size: int
    eval_size: int

    @property
    def model_positions(self) -> int:
        raise NotImplementedError

    @property
    def clamp_inputs(self) -> frozenset[str]:
        raise NotImplementedError


class SplitMetrics(torch.nn.Module):
    """Running metrics of one evaluation split: mean loss and accuracy where the loss is taken,
    and the per-example losses of the loss PCA. Families extend it with their own."""

    def __init__(self, n_examples: int, n_positions: int) -> None:
        super().__init__()
        self.loss, self.acc = MeanMetric(), MeanMetric()
        self.examples = ExampleLoss(n_examples, n_positions, seed=0)

    def update(self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor) -> None:
        """One evaluation batch: logits and targets where the loss is taken, their losses."""
        self.loss.update(token_loss)
        self.acc.update((logits.argmax(dim=-1) == targets).float())
        self.examples.update(token_loss)

    def compute(self) -> dict[str, Tensor]:
        """The split's scalars, by name (logged as eval[/<split>]/<name>)."""
        return {"loss": self.loss.compute(), "acc": self.acc.compute()}

    def terms(
        self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor
    ) -> dict[str, Terms]:
        """Each scalar of `compute` as per-sequence terms (`Terms`), for intervals paired over
        sequences: what `update` accumulates, kept sequence by sequence (float64)."""
        n = token_loss.shape[0]
        loss = token_loss.detach().reshape(n, -1).double()  # (seq, positions)
        correct = (logits.argmax(dim=-1) == targets).reshape(n, -1).double()
        count = torch.full((n,), float(loss.shape[1]), dtype=torch.float64, device=loss.device)
        return {"loss": (loss.sum(dim=1), count), "acc": (correct.sum(dim=1), count)}

    def rows(self) -> dict[str, Tensor]:
        """The split's vectors, by table name (one row per evaluation in the run's tables)."""
        return {PER_TOKEN_LOSS: self.examples.compute()}

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()


class DataFamily(ABC):
    """A data family's batches and the measurements that belong to them (see the module doc),
    for one seed."""

    eval_splits: tuple[str, ...]
    io: ModelIO

    def __init__(self, cfg: Any, seed: int) -> None:
        self.cfg, self.seed = cfg, seed

    # batches: every one a pure function of the seed (and the step)

    @abstractmethod
    def sample(self, split: str, n: int, g: torch.Generator) -> Batch:
        """n sequences of a split ("train" or an evaluation split), drawn with `g`. A batch holds
        what `model_inputs` and `loss_positions` read and "ids", token identity at every
        position the model reads (what head scores match on)."""

    def train_batch(self, step: int) -> Batch:
        """The training batch of one step: a pure function of (seed, step), so a resumed run
        sees exactly the batches an uninterrupted one would."""
        return self.sample("train", self.cfg.batch_size, generator(self.seed, "train", step))

    def reference_batch(self, n: int) -> Batch:
        """n fixed training sequences (the mean clamp's reference)."""
        return self.sample("train", n, generator(self.seed, "reference"))

    @cached_property
    def eval_sets(self) -> dict[str, Batch]:
        """Fixed evaluation sequences per split."""
        size = self.cfg.eval_size
        return {s: self.sample(s, size, generator(self.seed, "eval", s)) for s in self.eval_splits}

    @cached_property
    def _probe(self) -> Batch:
        return self.sample("train", self.cfg.probe_size, generator(self.seed, "probe"))

    def probe_batch(self) -> Batch:
        """A small fixed batch of training sequences for head scores."""
        return dict(self._probe)

    # the model's view

    @abstractmethod
    def model_inputs(self, batch: Batch) -> Batch:
        """What the model reads."""

    @abstractmethod
    def loss_positions(self, batch: Batch, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and targets where the loss is taken: (..., d_vocab_out) and (...)."""

    # measurements

    @abstractmethod
    def learning_time(self) -> LearningTime:
        """The curve the run's learning time and phase changes are read from, and its threshold."""

    def eval_fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the evaluation sequences: runs with the same fingerprint
        scored the same examples, so their per-token losses share one PCA (ihlab-compare)."""
        h = hashlib.sha256()
        for split, batch in sorted(self.eval_sets.items()):
            for key, tensor in sorted(batch.items()):
                h.update(f"{split}/{key}/{tuple(tensor.shape)}/{tensor.dtype}".encode())
                h.update(tensor.contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """What the run's summary.json records about its data (e.g. a corpus's size and cache
        key), under "data"; nothing by default."""
        return {}

    @property
    def pca_examples(self) -> int:
        """How many evaluation sequences the per-token-loss PCA follows (each at one position)."""
        return min(PCA_EXAMPLES, self.cfg.eval_size)

    @abstractmethod
    def split_metrics(self) -> SplitMetrics:
        """Fresh running metrics for one evaluation split."""

    def train_scalars(self, batch: Batch, token_loss: Tensor, correct: Tensor) -> dict[str, Tensor]:
        """Training scalars of a batch (measured before its update), by metric name."""
        return {"train/loss": token_loss.mean(), "train/acc": correct.float().mean()}

    def table_columns(self) -> dict[str, list[str]]:
        """Column names of the per-evaluation tables (table name -> columns)."""
        return {PER_TOKEN_LOSS: [f"ex{i}" for i in range(self.pca_examples)]}

    def score_heads(self, patterns: list[Tensor], probe: Batch) -> dict[str, Tensor]:
        """Scores of every head from the probe batch's patterns: name -> (layer, head)."""
        return head_scores(patterns, probe["ids"])

    def head_score_terms(self, patterns: list[Tensor], batch: Batch) -> dict[str, HeadTerms]:
        """`score_heads` sequence by sequence (metrics.heads.head_score_terms)."""
        return head_score_terms(patterns, batch["ids"])


FAMILIES: dict[type, type[DataFamily]] = {}  # config class -> family class
FAMILY_CONFIGS: dict[str, type] = {}  # conf/data/<name>.yaml -> config class


def register_family(name: str, config: type) -> Callable[[type[DataFamily]], type[DataFamily]]:
    """Join a family's config dataclass and its DataFamily class under `name` (its conf/data
    file)."""

    def register(family: type[DataFamily]) -> type[DataFamily]:
        FAMILIES[config], FAMILY_CONFIGS[name] = family, config
        return family

    return register


def family_config_of(keys: Iterable[str]) -> type:
    """The registered data config whose fields are exactly `keys` (a run's resolved `data`
    section names no family; its keys tell which). ValueError if none or several match."""
    wanted = set(keys)
    found = [c for c in FAMILY_CONFIGS.values() if {f.name for f in fields(c)} == wanted]
    if len(found) != 1:
        known = {name: sorted(f.name for f in fields(c)) for name, c in FAMILY_CONFIGS.items()}
        raise ValueError(f"data keys {sorted(wanted)} match no single data family: {known}")
    return found[0]


def make_family(cfg: Any, seed: int) -> DataFamily:
    """The data family of a data config (chosen by the config's type) for one seed."""
    try:
        family = FAMILIES[type(cfg)]
    except KeyError:
        known = ", ".join(sorted(c.__name__ for c in FAMILIES))
        raise TypeError(
            f"make_family got a {type(cfg).__name__}; expected one of {known} (convert an "
            "OmegaConf config with OmegaConf.to_object first)."
        ) from None
    return family(cfg, seed)

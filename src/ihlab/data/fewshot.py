"""Few-shot classification sequences (Singh et al. 2024, Reddy 2023).

A sequence is `x1 l1 x2 l2 ... xK lK xq`: K exemplar-label pairs, then a query exemplar whose label
must be read from the context. Each sequence draws a fresh unordered label pair and assigns it in a
random order to the query class and the distractor classes, so no fixed class -> label mapping
exists and only in-context lookup (an induction head) solves the task.

Exemplar vectors are either synthetic Gaussian clusters (Reddy 2023) or precomputed features read
from an HDF5 file (e.g. ResNet features of Omniglot, as in Singh et al.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch
from torch import Tensor

from ihlab.choices import Choice
from ihlab.data.base import (
    Batch,
    DataConfig,
    DataFamily,
    LearningTime,
    SplitMetrics,
    register_family,
)
from ihlab.errors import ConfigError, choice
from ihlab.metrics.heads import HeadTerms, head_score_terms, head_scores
from ihlab.model import ModelIO
from ihlab.seeding import generator

HOLDOUT_SHARE = 5  # n_holdout_pairs=None holds out n_pairs // 5 label pairs


class FeatureSource(Choice):
    """Where exemplar vectors come from."""

    gaussian = "gaussian"
    hdf5 = "hdf5"


class UnseenExemplars(Choice):
    """Which exemplars of the unseen classes the `unseen_classes` split shows."""

    all = "all"  # every exemplar, drawn per item: the query and its match usually differ
    train = "train"  # only the training exemplar indices, as Singh et al. evaluate


@dataclass
class FewShotConfig(DataConfig):
    """Few-shot sequences and their class / exemplar / label-pair splits.

    `n_classes`, `n_exemplars` and `feature_dim` describe only the Gaussian generator; with
    `features=hdf5` the file's dataset shape (classes, exemplars, dim) is authoritative and those
    three fields are ignored.

    `dataset_seed` fixes the dataset itself (the Gaussian features and the class and label-pair
    splits) across runs; None draws it from each run's seed, so a seed ensemble also samples the
    dataset. Singh et al. kept one dataset (one feature file, label-pair split seed 20) and varied
    only the initialisation. The training stream, evaluation sets and initialisation always follow
    the run's seed.
    """

    features: FeatureSource = FeatureSource.gaussian
    hdf5_path: str | None = None
    hdf5_dataset: str = "features"
    n_classes: int = 1623
    n_exemplars: int = 5
    feature_dim: int = 512
    epsilon: float = 0.1
    n_train_classes: int = 50
    n_unseen_classes: int = 100
    train_exemplars: int = 1
    n_labels: int = 5
    # None: a fifth of the label pairs, as Singh et al. held out (2 of 10 at 5 labels, 9 of 45 at
    # 10, 21 of 105 at 15)
    n_holdout_pairs: int | None = None
    dataset_seed: int | None = None
    unseen_exemplars: UnseenExemplars = UnseenExemplars.all
    context_pairs: int = 2
    burstiness: int = 1
    n_distractor_classes: int = 1
    batch_size: int = 32
    eval_size: int = 1000
    eval_batch_size: int = 1000
    probe_size: int = 64

    def __post_init__(self) -> None:
        self.features = choice(FeatureSource, self.features, "data.features", "a feature source")
        self.unseen_exemplars = choice(
            UnseenExemplars, self.unseen_exemplars, "data.unseen_exemplars", "an exemplar set"
        )
        if self.features == FeatureSource.hdf5:
            self._check_hdf5_file()
        else:
            self._check_gaussian()
        n_pairs = self.n_labels * (self.n_labels - 1) // 2
        if self.n_holdout_pairs is None:
            self.n_holdout_pairs = n_pairs // HOLDOUT_SHARE
        checks = [
            (
                self.train_exemplars >= 1,
                f"data.train_exemplars={self.train_exemplars} must be at least 1: training needs "
                "an exemplar per class. Fix: raise data.train_exemplars.",
            ),
            (
                self.n_labels >= 2,
                f"data.n_labels={self.n_labels} must be at least 2: each sequence uses a pair of "
                "labels. Fix: raise data.n_labels.",
            ),
            (
                0 <= self.n_holdout_pairs < n_pairs,
                f"data.n_holdout_pairs={self.n_holdout_pairs} must be between 0 and "
                f"{n_pairs - 1} (data.n_labels={self.n_labels} gives {n_pairs} label pairs, at "
                "least one must be left for training). Fix: lower data.n_holdout_pairs or raise "
                "data.n_labels.",
            ),
            (
                self.context_pairs >= 2,
                f"data.context_pairs={self.context_pairs} must be at least 2: the context needs a "
                "query-class item and a distractor. Fix: raise data.context_pairs.",
            ),
            (
                1 <= self.burstiness <= self.context_pairs - 1,
                f"data.burstiness={self.burstiness} must be between 1 and data.context_pairs-1="
                f"{self.context_pairs - 1}: the context needs at least one query-class item and "
                "one distractor. Fix: lower data.burstiness or raise data.context_pairs.",
            ),
            (
                1 <= self.n_distractor_classes <= self.context_pairs - self.burstiness,
                f"data.n_distractor_classes={self.n_distractor_classes} must be between 1 and "
                f"data.context_pairs-data.burstiness={self.context_pairs - self.burstiness}: "
                "each distractor class appears at least once among the distractor items. Fix: "
                "lower data.n_distractor_classes or raise data.context_pairs.",
            ),
            (
                self.n_distractor_classes < self.n_train_classes,
                f"data.n_train_classes={self.n_train_classes} must exceed "
                f"data.n_distractor_classes={self.n_distractor_classes}: each sequence needs a "
                "query class and distinct distractor classes. Fix: raise data.n_train_classes.",
            ),
            (
                self.n_unseen_classes == 0 or self.n_unseen_classes > self.n_distractor_classes,
                f"data.n_unseen_classes={self.n_unseen_classes} must be 0 (no unseen-class "
                f"split) or exceed data.n_distractor_classes={self.n_distractor_classes}: each "
                "sequence needs a query class and distinct distractor classes. Fix: change "
                "data.n_unseen_classes.",
            ),
            (
                self.epsilon >= 0,
                f"data.epsilon={self.epsilon} must be >= 0: it is the exemplar noise scale. "
                "Fix: set data.epsilon >= 0.",
            ),
        ]
        checks += [
            (
                getattr(self, key) > 0,
                f"data.{key}={getattr(self, key)} must be positive. Fix: set data.{key} >= 1.",
            )
            for key in ("batch_size", "eval_size", "eval_batch_size", "probe_size")
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def model_positions(self) -> int:
        return 2 * self.context_pairs + 1

    @property
    def clamp_inputs(self) -> frozenset[str]:
        return frozenset({"labels", "target"})

    def _check_hdf5_file(self) -> None:
        """The file exists, holds a finite numeric (classes, exemplars, dim) dataset, and has
        room for the splits: checked here, before any work, not when training starts."""
        holds = (
            f"an HDF5 file with a dataset named data.hdf5_dataset={self.hdf5_dataset!r} shaped "
            "(classes, exemplars, dim)"
        )
        if self.hdf5_path is None:
            raise ConfigError(
                f"data.features=hdf5 needs data.hdf5_path: {holds}. Fix: set data.hdf5_path or "
                "use data.features=gaussian."
            )
        path = Path(self.hdf5_path).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"data.hdf5_path={self.hdf5_path} does not exist (resolved to {path}); it must be "
                f"{holds}. Fix: point data.hdf5_path at such a file or use "
                "data.features=gaussian."
            )
        features = read_hdf5_features(path, self.hdf5_dataset)
        n_classes, n_exemplars, _ = features.shape
        where = f"{path} holds features shaped {tuple(features.shape)}"
        if self.n_train_classes + self.n_unseen_classes > n_classes:
            raise ConfigError(
                f"data.n_train_classes + data.n_unseen_classes = {self.n_train_classes} + "
                f"{self.n_unseen_classes} exceeds the {n_classes} classes: {where}. Fix: "
                "lower data.n_train_classes or data.n_unseen_classes, or use a file with more "
                "classes."
            )
        if self.train_exemplars > n_exemplars:
            raise ConfigError(
                f"data.train_exemplars={self.train_exemplars} exceeds the {n_exemplars} exemplars "
                f"per class: {where}. Fix: lower data.train_exemplars."
            )

    def _check_gaussian(self) -> None:
        for key in ("n_classes", "n_exemplars", "feature_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"data.{key}={getattr(self, key)} must be positive. Fix: set data.{key} >= 1."
                )
        if self.n_train_classes + self.n_unseen_classes > self.n_classes:
            raise ConfigError(
                f"data.n_train_classes + data.n_unseen_classes = {self.n_train_classes} + "
                f"{self.n_unseen_classes} exceeds data.n_classes={self.n_classes}. Fix: lower "
                "data.n_train_classes or data.n_unseen_classes, or raise data.n_classes."
            )
        if self.train_exemplars > self.n_exemplars:
            raise ConfigError(
                f"data.train_exemplars={self.train_exemplars} exceeds "
                f"data.n_exemplars={self.n_exemplars}. Fix: lower data.train_exemplars or raise "
                "data.n_exemplars."
            )


def gaussian_features(cfg: FewShotConfig, seed: int) -> Tensor:
    """Class centroids ~ N(0, I/D), exemplars = centroid + epsilon * N(0, I/D)."""
    g = generator(seed, "features")
    shape = (cfg.n_classes, cfg.n_exemplars, cfg.feature_dim)
    scale = cfg.feature_dim**-0.5
    centroids = torch.randn(shape[0], 1, shape[2], generator=g) * scale  # (classes, 1, dim)
    noise = torch.randn(shape, generator=g) * scale  # (classes, exemplars, dim)
    return centroids + cfg.epsilon * noise  # (classes, exemplars, dim)


def read_hdf5_features(path: Path, dataset: str) -> Tensor:
    """The (classes, exemplars, dim) float32 features of an HDF5 file; ConfigError naming the
    file and the fix if it is unreadable, or the dataset is missing, misshaped, empty, not
    numeric or not finite."""
    key = f"data.hdf5_dataset={dataset!r}"
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise ConfigError(
                    f"{key} is not in {path} (it holds {sorted(f.keys())}). Fix: set "
                    "data.hdf5_dataset to the features dataset."
                )
            data = f[dataset]
            if not isinstance(data, h5py.Dataset) or data.dtype.kind not in "fiu":
                raise ConfigError(
                    f"{key} in {path} is not a numeric dataset (dtype "
                    f"{getattr(data, 'dtype', type(data).__name__)}). Fix: store the features "
                    "as floats."
                )
            array = np.asarray(data, dtype=np.float32)
    except OSError as err:
        raise ConfigError(
            f"data.hdf5_path={path} cannot be read as HDF5 ({err}). Fix: rewrite the file, or "
            "point data.hdf5_path at an intact copy."
        ) from None
    if array.ndim != 3 or min(array.shape) < 1:
        raise ConfigError(
            f"{key} in {path} has shape {array.shape}; it must be (classes, exemplars, dim) with "
            "every size at least 1. Fix: reshape the features when writing the file."
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(
            f"{key} in {path} holds {int(bad.sum())} NaN or infinite values (first at "
            f"{first}). Fix: clean the features before training on them."
        )
    return torch.from_numpy(array)  # (classes, exemplars, dim)


class Split(NamedTuple):
    """What one split draws from: query/distractor classes, exemplar indices, label pairs."""

    classes: Tensor  # (n_split_classes,)
    exemplars: Tensor  # (n_split_exemplars,)
    pairs: Tensor  # (n_split_pairs, 2)


@register_family("fewshot", FewShotConfig)
class FewShot(DataFamily):
    """Training stream over the train split, fixed eval sets per split, and a probe batch.

    Batches hold "features" (batch, T, D) with zeros at label positions, "labels" (batch, T) with
    -1 at exemplar positions, "target" (batch,) the query's label, and "ids" (batch, T): the class
    at exemplar positions, n_classes + label at label positions (token identity for matching).
    """

    def __init__(self, cfg: FewShotConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        dataset_seed = seed if cfg.dataset_seed is None else cfg.dataset_seed
        if cfg.features == FeatureSource.hdf5:
            path = Path(str(cfg.hdf5_path)).expanduser().resolve()
            self.features = read_hdf5_features(path, cfg.hdf5_dataset)  # (classes, ex., dim)
        else:
            self.features = gaussian_features(cfg, dataset_seed)  # (classes, exemplars, dim)
        self.n_classes, n_exemplars, dim = self.features.shape

        g_classes = generator(dataset_seed, "split", "classes")
        classes = torch.randperm(self.n_classes, generator=g_classes)
        self.train_classes = classes[: cfg.n_train_classes]  # (n_train_classes,)
        self.unseen_classes = classes[
            cfg.n_train_classes : cfg.n_train_classes + cfg.n_unseen_classes
        ]  # (n_unseen_classes,)
        exemplars = torch.arange(n_exemplars)  # (exemplars,)
        self.train_exemplars = exemplars[: cfg.train_exemplars]  # (train_exemplars,)
        self.heldout_exemplars = exemplars[cfg.train_exemplars :]  # (held-out exemplars,)
        pairs = torch.combinations(torch.arange(cfg.n_labels), 2)  # (n_pairs, 2)
        pairs = pairs[
            torch.randperm(len(pairs), generator=generator(dataset_seed, "split", "pairs"))
        ]
        self.heldout_pairs = pairs[: cfg.n_holdout_pairs]  # (n_holdout_pairs, 2)
        self.train_pairs = pairs[cfg.n_holdout_pairs :]  # (n_train_pairs, 2)

        splits = {
            "train": Split(self.train_classes, self.train_exemplars, self.train_pairs),
            "heldout_pairs": Split(self.train_classes, self.train_exemplars, self.heldout_pairs),
            "heldout_exemplars": Split(
                self.train_classes, self.heldout_exemplars, self.train_pairs
            ),
            "unseen_classes": Split(
                self.unseen_classes,
                exemplars if cfg.unseen_exemplars == UnseenExemplars.all else self.train_exemplars,
                self.train_pairs,
            ),
        }
        self.splits = {name: s for name, s in splits.items() if all(len(t) for t in s)}
        self.eval_splits = tuple(self.splits)
        self.seq_len = 2 * cfg.context_pairs + 1
        self.io = ModelIO(
            n_ctx=self.seq_len, d_features=dim, n_labels=cfg.n_labels, d_vocab_out=cfg.n_labels
        )

    def sample(self, split: str, n: int, g: torch.Generator) -> Batch:
        return self.sample_split(self.splits[split], n, g)

    def sample_split(self, split: Split, n: int, g: torch.Generator) -> Batch:
        """n sequences from one split, vectorised over the batch."""
        cfg = self.cfg
        k, burst, n_dis = cfg.context_pairs, cfg.burstiness, cfg.n_distractor_classes
        # A label pair in random order: ab[:, 0] labels the query class, ab[:, 1] the distractors.
        pair = split.pairs[torch.randint(len(split.pairs), (n,), generator=g)]  # (n, 2)
        flip = torch.randint(2, (n, 1), generator=g)  # (n, 1)
        ab = pair.gather(1, torch.cat([flip, 1 - flip], dim=1))  # (n, 2)
        # The query class (column 0) and distinct distractor classes.
        keys = torch.rand(n, len(split.classes), generator=g)  # (n, split classes)
        classes = split.classes[keys.topk(1 + n_dis, dim=1).indices]  # (n, 1 + n_dis)
        # Context slots index `classes`: burst query items, each distractor once, then random ones.
        slots = torch.cat(
            [
                torch.zeros(n, burst, dtype=torch.long),  # (n, burst)
                torch.arange(1, 1 + n_dis).expand(n, n_dis),  # (n, n_dis)
                torch.randint(1, 1 + n_dis, (n, k - burst - n_dis), generator=g),  # (n, rest)
            ],
            dim=1,
        )  # (n, k)
        slots = slots.gather(1, torch.rand(n, k, generator=g).argsort(dim=1))  # (n, k) shuffled
        item_classes = torch.cat([classes.gather(1, slots), classes[:, :1]], dim=1)  # (n, k + 1)
        item_labels = ab.gather(1, (slots > 0).long())  # (n, k)
        pick = torch.randint(len(split.exemplars), (n, k + 1), generator=g)  # (n, k + 1)
        item_exemplars = split.exemplars[pick]  # (n, k + 1)

        features = self.features.new_zeros(n, self.seq_len, self.features.shape[-1])  # (n, T, D)
        features[:, 0::2] = self.features[item_classes, item_exemplars]  # (n, k + 1, D)
        labels = torch.full((n, self.seq_len), -1)  # (n, T)
        labels[:, 1::2] = item_labels
        ids = torch.empty(n, self.seq_len, dtype=torch.long)  # (n, T)
        ids[:, 0::2] = item_classes
        ids[:, 1::2] = self.n_classes + item_labels
        return {"features": features, "labels": labels, "target": ab[:, 0], "ids": ids}

    def model_inputs(self, batch: Batch) -> Batch:
        return {"features": batch["features"], "labels": batch["labels"]}

    def loss_positions(self, batch: Batch, logits: Tensor) -> tuple[Tensor, Tensor]:
        return logits[:, -1], batch["target"]  # the query: (batch, n_labels), (batch,)

    def learning_time(self) -> LearningTime:
        """Singh et al.: the training split's loss below 0.4 ln 2 (the ln 2 plateau is a random
        pick between the context's two labels)."""
        return LearningTime("eval/train/loss", 0.4 * math.log(2))

    def split_metrics(self) -> SplitMetrics:
        return SplitMetrics(self.pca_examples, n_positions=1)  # one loss per sequence: the query

    def score_heads(self, patterns: list[Tensor], probe: Batch) -> dict[str, Tensor]:
        """Adds Singh et al.'s induction strength (the query's attention to the correct label
        minus to the wrong one)."""
        return head_scores(patterns, probe["ids"], probe["labels"], probe["target"])

    def head_score_terms(self, patterns: list[Tensor], batch: Batch) -> dict[str, HeadTerms]:
        return head_score_terms(patterns, batch["ids"], batch["labels"], batch["target"])

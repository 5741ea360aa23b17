"""Few-shot data: sequence rule, splits without leaks, determinism, HDF5 features, validation."""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import islice
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from ihlab.data.fewshot import FeatureSource, FewShot, FewShotConfig
from ihlab.data.loaders import BatchStream
from ihlab.errors import ConfigError
from ihlab.train.members import MemberBatches, member_batch

CFG = FewShotConfig(
    n_classes=40,
    n_exemplars=4,
    feature_dim=8,
    n_train_classes=10,
    n_unseen_classes=12,
    train_exemplars=2,
    n_labels=5,
    n_holdout_pairs=3,
    context_pairs=6,
    burstiness=2,
    n_distractor_classes=2,
    batch_size=64,
    eval_size=300,
    eval_batch_size=128,
    probe_size=16,
)
K = CFG.context_pairs


@pytest.fixture(scope="module")
def dm() -> FewShot:
    return FewShot(CFG, seed=3)


def decode(dm: FewShot, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Item classes, exemplar indices (found by matching feature vectors) and context labels."""
    classes = batch["ids"][:, 0::2]  # (n, K + 1)
    items = batch["features"][:, 0::2]  # (n, K + 1, D)
    match = (dm.features[classes] == items[:, :, None]).all(-1)  # (n, K + 1, exemplars)
    assert (match.sum(-1) == 1).all(), "every item is exactly one exemplar of its class"
    labels = batch["labels"][:, 1::2]  # (n, K)
    return {"classes": classes, "exemplars": match.int().argmax(-1), "labels": labels}


def pairs_used(batch: dict[str, Tensor]) -> set[tuple[int, int]]:
    """The unordered label pair of every sequence."""
    labels = batch["labels"][:, 1::2]  # (n, K)
    return {(int(row.min()), int(row.max())) for row in labels}


def test_shapes_and_layout(dm: FewShot) -> None:
    b = dm.train_batch(0)
    n, t, d = CFG.batch_size, 2 * K + 1, CFG.feature_dim
    assert b["features"].shape == (n, t, d) and b["features"].dtype == torch.float32
    assert b["labels"].shape == b["ids"].shape == (n, t)
    assert b["target"].shape == (n,)
    assert all(b[key].dtype == torch.long for key in ("labels", "ids", "target"))
    assert (b["features"][:, 1::2] == 0).all()
    assert (b["labels"][:, 0::2] == -1).all()
    assert ((b["labels"][:, 1::2] >= 0) & (b["labels"][:, 1::2] < CFG.n_labels)).all()
    assert torch.equal(b["ids"][:, 1::2], CFG.n_classes + b["labels"][:, 1::2])
    assert (dm.io.n_ctx, dm.io.d_features, dm.io.n_labels, dm.io.d_vocab_out) == (t, d, 5, 5)


def test_target_is_the_label_of_the_query_class(dm: FewShot) -> None:
    b = dm.train_batch(1)
    items = decode(dm, b)
    query = items["classes"][:, -1:]  # (n, 1)
    is_query = items["classes"][:, :-1] == query  # (n, K)
    target = b["target"][:, None].expand(-1, K)  # (n, K)
    assert (items["labels"][is_query] == target[is_query]).all()
    others = items["labels"][~is_query].view(-1, K - CFG.burstiness)  # (n, K - burstiness)
    assert (others == others[:, :1]).all(), "all distractors share the other label"
    assert (others[:, 0] != b["target"]).all()
    assert (is_query.sum(1) == CFG.burstiness).all()
    distractors = items["classes"][:, :-1][~is_query].view(-1, K - CFG.burstiness)
    assert all(len(set(row.tolist())) == CFG.n_distractor_classes for row in distractors)
    # Both orders of a pair occur: the pair -> (query, distractor) assignment is random.
    assert (b["target"] == items["labels"].min(1).values).any()
    assert (b["target"] == items["labels"].max(1).values).any()


N_PAIRS = CFG.n_labels * (CFG.n_labels - 1) // 2  # 10 unordered label pairs
ALL_PAIRS = {(a, b) for a in range(CFG.n_labels) for b in range(a + 1, CFG.n_labels)}


def seen(dm: FewShot, batch: dict[str, Tensor]) -> dict[str, set]:
    """Classes, exemplar indices and unordered label pairs that a batch's sequences use."""
    items = decode(dm, batch)
    return {
        "classes": set(items["classes"].flatten().tolist()),
        "exemplars": set(items["exemplars"].flatten().tolist()),
        "pairs": pairs_used(batch),
    }


@pytest.fixture(scope="module")
def used(dm: FewShot) -> dict[str, dict[str, set]]:
    """What the first 60 batches of the training loader and each fixed evaluation set actually
    use, read off the sequences themselves (never off the datamodule's split attributes)."""
    loader = MemberBatches([dm]).train_dataloader()  # what training reads: (member, batch, ...)
    train = [seen(dm, member_batch(batch, 0)) for batch in islice(loader, 60)]
    out = {"training": {k: set().union(*(t[k] for t in train)) for k in train[0]}}
    out.update({name: seen(dm, batch) for name, batch in dm.eval_sets.items()})
    return out


def test_held_out_label_pairs_are_never_in_a_training_batch(used) -> None:
    training, held = used["training"]["pairs"], used["heldout_pairs"]["pairs"]
    assert len(held) == CFG.n_holdout_pairs
    assert not training & held
    # 60 x 64 sequences draw every one of the 7 training pairs: together they are all 10.
    assert len(training) == N_PAIRS - CFG.n_holdout_pairs
    assert training | held == ALL_PAIRS


def test_unseen_classes_are_never_in_a_training_batch(used) -> None:
    training, unseen = used["training"]["classes"], used["unseen_classes"]["classes"]
    assert len(training) == CFG.n_train_classes  # query and distractor classes alike
    assert len(unseen) == CFG.n_unseen_classes
    assert not training & unseen
    assert training | unseen <= set(range(CFG.n_classes))


def test_held_out_exemplars_are_never_in_a_training_batch(used) -> None:
    training, held = used["training"]["exemplars"], used["heldout_exemplars"]["exemplars"]
    assert len(training) == CFG.train_exemplars
    assert not training & held
    assert training | held == set(range(CFG.n_exemplars))


def test_each_eval_split_holds_out_one_thing_and_shares_the_rest_with_training(
    dm: FewShot, used
) -> None:
    train, every_exemplar = used["training"], set(range(CFG.n_exemplars))
    expected = {  # per split: the classes, exemplars and pairs it draws from
        "train": train,
        "heldout_pairs": {**train, "pairs": ALL_PAIRS - train["pairs"]},
        "heldout_exemplars": {**train, "exemplars": every_exemplar - train["exemplars"]},
        "unseen_classes": {
            **train,
            "classes": used["unseen_classes"]["classes"],
            "exemplars": every_exemplar,
        },
    }
    assert dm.eval_splits == ("train", "heldout_pairs", "heldout_exemplars", "unseen_classes")
    for name, sets in expected.items():
        assert used[name] == sets, name


def test_eval_loaders_serve_the_fixed_sets_in_order(dm: FewShot) -> None:
    loaders = MemberBatches([dm]).val_dataloader()
    assert len(loaders) == len(dm.eval_splits)
    for name, loader in zip(dm.eval_splits, loaders, strict=True):
        batches = [member_batch(b, 0) for b in loader]
        assert [len(b["target"]) for b in batches] == [128, 128, 44]
        for key, value in dm.eval_sets[name].items():
            assert torch.equal(torch.cat([b[key] for b in batches]), value), (name, key)


def test_empty_eval_splits_are_left_out() -> None:
    cfg = replace(CFG, n_unseen_classes=0, n_holdout_pairs=0, train_exemplars=4)
    dm = FewShot(cfg, seed=0)
    assert dm.eval_splits == ("train",)
    assert len(MemberBatches([dm]).val_dataloader()) == 1


def test_determinism_and_resumed_stream(dm: FewShot) -> None:
    same = FewShot(CFG, seed=3)
    for key, value in dm.train_batch(9).items():
        assert torch.equal(value, same.train_batch(9)[key])
    assert not torch.equal(dm.train_batch(9)["features"], dm.train_batch(10)["features"])
    assert torch.equal(
        dm.eval_sets["unseen_classes"]["ids"], same.eval_sets["unseen_classes"]["ids"]
    )
    assert torch.equal(dm.probe_batch()["features"], same.probe_batch()["features"])
    other = FewShot(CFG, seed=4)
    assert not torch.equal(dm.features, other.features)
    assert not torch.equal(dm.train_classes, other.train_classes)

    from_zero = list(islice(BatchStream(dm.train_batch, lambda: 0), 4))
    from_two = list(islice(BatchStream(dm.train_batch, lambda: 2), 2))
    assert torch.equal(from_two[0]["ids"], from_zero[2]["ids"])
    assert torch.equal(from_two[1]["features"], from_zero[3]["features"])
    first = next(iter(MemberBatches([dm]).train_dataloader()))
    assert torch.equal(first["features"][0], from_zero[0]["features"])


def test_probe_and_reference_batches_use_only_training_data(dm: FewShot, used) -> None:
    probe = dm.probe_batch()
    assert probe["features"].shape == (CFG.probe_size, 2 * K + 1, CFG.feature_dim)
    for batch in (probe, dm.reference_batch(200)):
        for key, values in seen(dm, batch).items():
            assert values <= used["training"][key], key


def test_gaussian_features_cluster_by_class() -> None:
    cfg = FewShotConfig(n_classes=200, n_exemplars=5, feature_dim=64, epsilon=0.1)
    features = FewShot(cfg, seed=0).features  # (classes, exemplars, dim)
    assert features.shape == (200, 5, 64)
    sq_norm = features.pow(2).sum(-1).mean()  # E|x|^2 = 1 + epsilon^2
    assert abs(float(sq_norm) - 1.01) < 0.05
    spread = (features - features.mean(1, keepdim=True)).pow(2).sum(-1).mean()  # ~ 0.8 eps^2
    assert abs(float(spread) - 0.8 * 0.01) < 0.002
    # Class means differ: their variance over classes is the centroids' (1, summed over dims) plus
    # the exemplar noise's share (eps^2 / 5); classes sharing one centroid would give 0.002.
    between = features.mean(1).var(0).sum()
    assert abs(float(between) - (1 + 0.01 / 5)) < 0.15


def test_hdf5_round_trip(tmp_path: Path) -> None:
    array = np.random.default_rng(0).normal(size=(30, 3, 6))
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("omniglot", data=array)
    cfg = FewShotConfig(
        features=FeatureSource.hdf5,
        hdf5_path=str(path),
        hdf5_dataset="omniglot",
        n_train_classes=10,
        n_unseen_classes=20,
    )
    dm = FewShot(cfg, seed=0)
    assert dm.features.dtype == torch.float32
    assert torch.equal(dm.features, torch.from_numpy(array.astype(np.float32)))
    assert dm.io.d_features == 6 and dm.n_classes == 30  # the file wins over cfg.n_classes
    label_ids = dm.train_batch(0)["ids"][:, 1::2]  # (batch, K)
    assert (label_ids >= 30).all() and (label_ids < 30 + cfg.n_labels).all()


def test_hdf5_errors_name_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(ConfigError, match=r"data\.hdf5_path") as info:
        FewShotConfig(features=FeatureSource.hdf5, hdf5_path=str(missing))
    assert str(missing.resolve()) in str(info.value)
    with pytest.raises(ConfigError, match=r"data\.hdf5_path"):
        FewShotConfig(features=FeatureSource.hdf5)

    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((20, 3, 4)))
        f.create_dataset("flat", data=np.zeros((20, 4)))
    with pytest.raises(ConfigError, match=r"data\.n_train_classes.*20 classes"):  # 50 + 100 > 20
        FewShotConfig(features=FeatureSource.hdf5, hdf5_path=str(path))
    ok = {"n_train_classes": 10, "n_unseen_classes": 5, "features": FeatureSource.hdf5}
    with pytest.raises(ConfigError, match=r"data\.train_exemplars=4 exceeds the 3 exemplars"):
        FewShotConfig(**ok, hdf5_path=str(path), train_exemplars=4)
    for name, message in [("flat", "has shape (20, 4)"), ("absent", "is not in")]:
        with pytest.raises(ConfigError, match=re.escape(f"data.hdf5_dataset='{name}'")) as info:
            FewShotConfig(**ok, hdf5_path=str(path), hdf5_dataset=name)
        assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.full((20, 3, 4), np.nan), "holds 240 NaN or infinite values (first at (0, 0, 0))"),
        (np.pad(np.full((1, 1, 1), np.inf), ((5, 14), (0, 2), (0, 3))), "first at (5, 0, 0)"),
        (np.zeros((20, 3, 0)), "has shape (20, 3, 0)"),
        (np.array([[[b"a"]]] * 20), "is not a numeric dataset"),
    ],
)
def test_hdf5_contents_are_checked_before_any_work(
    tmp_path: Path, data: np.ndarray, message: str
) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=data)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"data\.hdf5_dataset='features'") as info:
        FewShotConfig(
            features=FeatureSource.hdf5, hdf5_path=str(path), n_train_classes=10, n_unseen_classes=5
        )
    assert message in str(info.value)
    assert path.read_bytes() == before  # read, never written


@pytest.mark.parametrize("cut", [0, 100, -200])
def test_truncated_or_corrupt_hdf5_files_fail_naming_the_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((20, 3, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:cut] if cut else b"not an hdf5 file")
    with pytest.raises(ConfigError, match=r"data\.hdf5_path=.*cannot be read as HDF5") as info:
        FewShotConfig(
            features=FeatureSource.hdf5, hdf5_path=str(path), n_train_classes=10, n_unseen_classes=5
        )
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"burstiness": 2}, "data.burstiness"),
        ({"burstiness": 0}, "data.burstiness"),
        ({"context_pairs": 1}, "data.context_pairs"),
        ({"n_holdout_pairs": 10}, "data.n_holdout_pairs"),
        ({"context_pairs": 3, "n_distractor_classes": 3}, "data.n_distractor_classes"),
        ({"n_train_classes": 1}, "data.n_train_classes"),
        ({"n_unseen_classes": 1700}, "data.n_unseen_classes"),
        ({"train_exemplars": 6}, "data.train_exemplars"),
        ({"n_labels": 1}, "data.n_labels"),
        ({"epsilon": -0.1}, "data.epsilon"),
        ({"features": "images"}, "data.features"),
    ],
)
def test_bad_config_names_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        FewShotConfig(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"n_labels": 2, "n_holdout_pairs": 0},  # one pair: all for training
        {"n_labels": 5, "n_holdout_pairs": 9},  # 10 pairs, one left for training
        {"burstiness": 5, "context_pairs": 6, "n_distractor_classes": 1},  # one distractor item
        {"n_unseen_classes": 3, "n_distractor_classes": 2, "context_pairs": 8, "burstiness": 3},
        {"epsilon": 0.0},  # exemplars equal their centroid
        {"batch_size": 1, "eval_size": 1, "eval_batch_size": 1, "probe_size": 1},
        {"n_classes": 40, "n_train_classes": 20, "n_unseen_classes": 20},  # every class used
        {"n_exemplars": 3, "train_exemplars": 3},  # no held-out exemplars
    ],
)
def test_the_edges_of_every_range_are_accepted(changes: dict) -> None:
    FewShotConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"n_labels": 5, "n_holdout_pairs": 10}, "data.n_holdout_pairs"),
        ({"burstiness": 6, "context_pairs": 6}, "data.burstiness"),
        (
            {"n_unseen_classes": 2, "n_distractor_classes": 2, "context_pairs": 8, "burstiness": 3},
            "data.n_unseen_classes",
        ),
        ({"probe_size": 0}, "data.probe_size"),
        ({"n_classes": 40, "n_train_classes": 21, "n_unseen_classes": 20}, "data.n_train_classes"),
        ({"n_exemplars": 3, "train_exemplars": 4}, "data.train_exemplars"),
    ],
)
def test_one_past_each_edge_is_rejected(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        FewShotConfig(**changes)


def test_split_sizes_and_every_label_pair(dm: FewShot) -> None:
    """The splits partition the classes and the label pairs as configured (counted by hand)."""
    assert len(dm.train_classes) == CFG.n_train_classes
    assert len(dm.unseen_classes) == CFG.n_unseen_classes
    assert not set(dm.train_classes.tolist()) & set(dm.unseen_classes.tolist())
    every = {(a, b) for a in range(CFG.n_labels) for b in range(a + 1, CFG.n_labels)}
    train = {tuple(p) for p in dm.train_pairs.tolist()}
    held = {tuple(p) for p in dm.heldout_pairs.tolist()}
    assert len(held) == CFG.n_holdout_pairs and not train & held and train | held == every
    assert dm.learning_time().metric == "eval/train/loss"
    assert dm.learning_time().threshold == pytest.approx(0.4 * np.log(2), abs=1e-12)


def test_structured_config_round_trip() -> None:
    conf = OmegaConf.merge(OmegaConf.structured(FewShotConfig), {"features": "gaussian"})
    cfg = OmegaConf.to_object(conf)
    assert cfg == FewShotConfig() and cfg.features is FeatureSource.gaussian


@pytest.mark.parametrize("n_labels, held_out", [(5, 2), (10, 9), (15, 21), (2, 0)])
def test_held_out_label_pairs_default_to_singhs_proportion(n_labels: int, held_out: int) -> None:
    """Singh et al. held out 2 of 10, 9 of 45 and 21 of 105 label pairs (a fifth)."""
    cfg = replace(CFG, n_labels=n_labels, n_holdout_pairs=None)
    assert cfg.n_holdout_pairs == held_out
    family = FewShot(cfg, seed=0)
    assert len(family.heldout_pairs) == held_out
    assert len(family.train_pairs) == n_labels * (n_labels - 1) // 2 - held_out


def test_a_dataset_seed_fixes_the_dataset_and_leaves_the_stream_to_the_run_seed() -> None:
    """Singh et al.'s setting: one dataset for every run, the seed varying init and stream."""
    fixed = replace(CFG, dataset_seed=7)
    a, b = FewShot(fixed, seed=3), FewShot(fixed, seed=4)
    own = FewShot(CFG, seed=7)  # the dataset a run of seed 7 draws for itself
    for family in (a, b):
        assert torch.equal(family.features, own.features)
        for name in ("train_classes", "unseen_classes", "train_pairs", "heldout_pairs"):
            assert torch.equal(getattr(family, name), getattr(own, name)), name
    assert not torch.equal(a.train_batch(0)["ids"], b.train_batch(0)["ids"])
    assert not torch.equal(a.eval_sets["train"]["ids"], b.eval_sets["train"]["ids"])
    same = FewShot(CFG, seed=3)  # the default draws the dataset from the run's seed
    assert torch.equal(FewShot(replace(CFG, dataset_seed=3), seed=3).features, same.features)
    assert not torch.equal(a.features, same.features)


def test_unseen_classes_can_show_only_the_training_exemplars_as_singh_et_al() -> None:
    family = FewShot(replace(CFG, unseen_exemplars="train"), seed=3)
    unseen = seen(family, family.eval_sets["unseen_classes"])
    assert unseen["exemplars"] == set(range(CFG.train_exemplars))
    assert unseen["classes"] == set(family.unseen_classes.tolist())
    with pytest.raises(ConfigError, match=re.escape("data.unseen_exemplars")):
        FewShotConfig(unseen_exemplars="first")

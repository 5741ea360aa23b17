"""Every seed-dependent stream is a function of the seed: equal for equal seeds, different for
different seeds, different from the other streams of the same seed, and, for each member of a
seed ensemble, equal to its single run's. The streams: the model's initialisation, the training
batches, the evaluation sets, the probe batch of head scores, the mean clamps' reference batch,
and the probe's random head draws."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from conftest import compose_config, quiet, train_in_process
from ihlab.data import make_family
from ihlab.data.base import DataFamily
from ihlab.probe.selection import random_heads
from ihlab.train import module as lab_module
from ihlab.train.members import MemberBatches, member_batch
from ihlab.train.module import LabModule, Member
from ihlab.train.run import build_module
from ihlab.train.schema import to_train_config

# Every stream 8 sequences long, so any two of them can be compared entry by entry.
SIZES = ["data.batch_size=8", "data.eval_size=8", "data.eval_batch_size=8", "data.probe_size=8"]
FAMILIES = {
    "repeated_tokens": ["experiment=induction_2l", *SIZES],
    "fewshot": ["experiment=fewshot_fast", *SIZES, "data.n_train_classes=40"],
    "markov": ["experiment=markov_2l", *SIZES, "data.seq_len=20"],
}
MEAN_CLAMP = ["clamps=custom", "clamps.custom.site=blocks.0.attn.z", "clamps.custom.value=mean"]

Batch = dict[str, Tensor]


def same(a: Batch, b: Batch) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def streams(family: DataFamily) -> dict[str, Batch]:
    """Every data stream of one seed, by name."""
    out = {f"train {step}": family.train_batch(step) for step in (0, 7)}
    out.update({f"eval {split}": batch for split, batch in family.eval_sets.items()})
    out["probe"] = family.probe_batch()
    out["reference"] = family.reference_batch(8)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_data_stream_is_a_function_of_the_seed(name: str) -> None:
    config = to_train_config(compose_config(quiet(FAMILIES[name])))
    seed3, again, seed4 = (make_family(config.data, s) for s in (3, 3, 4))
    a, b, c = streams(seed3), streams(again), streams(seed4)
    for stream in a:
        assert same(a[stream], b[stream]), f"{stream}: seed 3 drew twice differently"
        assert not same(a[stream], c[stream]), f"{stream}: seeds 3 and 4 drew the same"
    names = list(a)
    for i, first in enumerate(names):  # each stream is its own draw
        for second in names[i + 1 :]:
            assert not same(a[first], a[second]), f"{first} and {second} are one stream"


def initial_weights(config_overrides: list[str], seeds: list[int]) -> LabModule:
    config = to_train_config(compose_config(quiet(config_overrides)))
    members = [Member(s, make_family(config.data, s)) for s in seeds]
    module = build_module(config, members)
    module.prepare(MemberBatches([m.family for m in members]))
    return module


def member_params(module: LabModule, k: int) -> dict[str, Tensor]:
    return {name: p[k] for name, p in module.params.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_initialisation_and_the_mean_reference_follow_each_members_seed(name: str) -> None:
    """An ensemble of seeds [3, 4, 5]: member 0 starts from the weights, probe batch and mean
    reference of seed 3 alone, member 1 from seed 4's, and those differ."""
    overrides = [*FAMILIES[name], *MEAN_CLAMP]
    job = initial_weights(overrides, [3, 4, 5])
    three, four = (initial_weights(overrides, [seed]) for seed in (3, 4))
    for k, single in ((0, three), (1, four)):
        own = member_params(single, 0)
        for key, value in member_params(job, k).items():
            assert torch.equal(value, own[key]), (k, key)
        assert same(member_batch(job.reference, k), member_batch(single.reference, 0))
        assert same(member_batch(job.probe, k), member_batch(single.probe, 0))
    assert not same(member_params(three, 0), member_params(four, 0))
    assert not same(member_batch(three.reference, 0), member_batch(four.reference, 0))
    assert same(member_params(initial_weights(overrides, [3]), 0), member_params(three, 0))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_members_batches_and_evaluation_sets_are_its_single_runs(name: str) -> None:
    config = to_train_config(compose_config(quiet(FAMILIES[name])))
    families = [make_family(config.data, s) for s in (3, 4)]
    job = MemberBatches(families)
    for k, family in enumerate(families):
        single = MemberBatches([family])
        for step in (0, 5):
            assert same(member_batch(job.train_batch(step), k), family.train_batch(step))
            assert same(member_batch(single.train_batch(step), 0), family.train_batch(step))
        for split in family.eval_splits:
            assert same(member_batch(job.eval_sets[split], k), family.eval_sets[split])
    assert not same(member_batch(job.train_batch(0), 0), member_batch(job.train_batch(0), 1))


def test_the_probes_random_head_draws_are_a_function_of_their_seed() -> None:
    selected = [(17, 3), (17, 4), (18, 6)]
    draws = {seed: random_heads(selected, n_heads=9, seed=seed) for seed in (0, 1, 2)}
    assert random_heads(selected, n_heads=9, seed=1) == draws[1]
    assert len({tuple(d) for d in draws.values()}) == 3
    for heads in draws.values():  # per layer as many as selected there, none of the selected
        assert sorted(layer for layer, _ in heads) == [17, 17, 18]
        assert not set(heads) & set(selected)


@pytest.mark.parametrize("route", ["two single runs", "an ensemble of two seeds"])
def test_each_seed_trains_on_its_own_batches_through_the_path_ihlab_train_takes(
    route: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeds 3 and 4 trained by `train()` as ihlab-train composes and calls it (the launcher's
    member construction included): the batches each training step received are the seed's own
    stream, drawn here from a family made for that seed, and the two seeds' batches differ. A
    member built with another seed's data (say every member on seed 3's) fails here."""
    trained: list[Batch] = []
    step = lab_module.LabModule.training_step

    def recording(self: LabModule, batch: Batch, batch_idx: int) -> Tensor:
        trained.append({k: v.clone() for k, v in batch.items()})
        return step(self, batch, batch_idx)

    monkeypatch.setattr(lab_module.LabModule, "training_step", recording)
    overrides = [*FAMILIES["fewshot"], "trainer.max_steps=3", "trainer.score_every=0"]
    if route == "two single runs":
        for seed in (3, 4):
            train_in_process(tmp_path / str(seed), *overrides, f"seed={seed}")
        received = {3: trained[:3], 4: trained[3:]}
        received = {seed: [member_batch(b, 0) for b in bs] for seed, bs in received.items()}
    else:
        train_in_process(tmp_path / "job", *overrides, "seeds=[3,4]")
        received = {seed: [member_batch(b, k) for b in trained] for k, seed in enumerate((3, 4))}
    config = to_train_config(compose_config(quiet(overrides)))
    for seed, batches in received.items():
        own = make_family(config.data, seed)
        assert len(batches) == 3
        for i, batch in enumerate(batches):
            assert same(batch, own.train_batch(i)), (seed, i)
    assert not same(received[3][0], received[4][0])

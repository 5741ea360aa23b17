"""Repeated-token data: layout, determinism, resumable stream, target masks, fixed eval set."""

from __future__ import annotations

import re
from itertools import islice
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ihlab.data import make_family
from ihlab.data.fewshot import FewShot, FewShotConfig
from ihlab.data.loaders import BatchStream
from ihlab.data.repeated import RepeatedTokens, RepeatedTokensConfig
from ihlab.errors import ConfigError
from ihlab.train.members import MemberBatches

CFG = RepeatedTokensConfig(
    vocab_size=16, prefix_len=3, segment_len=5, n_repeats=2, bos=True, batch_size=8, eval_size=20
)


@pytest.fixture
def dm() -> RepeatedTokens:
    return RepeatedTokens(CFG, seed=7)


def test_shapes_dtypes_and_io(dm: RepeatedTokens) -> None:
    tokens = dm.train_batch(0)["tokens"]  # (batch, seq)
    assert CFG.seq_len == 1 + 3 + 5 * 3
    assert tokens.shape == (CFG.batch_size, CFG.seq_len)
    assert tokens.dtype == torch.long
    assert dm.io.n_ctx == CFG.seq_len
    assert dm.io.d_vocab == dm.io.d_vocab_out == CFG.vocab_size + 1
    assert dm.eval_splits == ("eval",)


def test_bos_only_at_position_zero(dm: RepeatedTokens) -> None:
    tokens = dm.train_batch(0)["tokens"]  # (batch, seq)
    assert (tokens[:, 0] == CFG.vocab_size).all()
    assert (tokens[:, 1:] < CFG.vocab_size).all() and (tokens >= 0).all()

    no_bos = RepeatedTokensConfig(vocab_size=16, segment_len=5)
    tokens = RepeatedTokens(no_bos, seed=7).train_batch(0)["tokens"]  # (batch, seq)
    assert tokens.shape[1] == no_bos.seq_len == 10
    assert (tokens < no_bos.vocab_size).all()


def test_repeats_equal_first_occurrence(dm: RepeatedTokens) -> None:
    tokens = dm.train_batch(3)["tokens"]  # (batch, seq)
    start, s = 1 + CFG.prefix_len, CFG.segment_len
    first = tokens[:, start : start + s]  # (batch, segment)
    for r in range(1, 1 + CFG.n_repeats):
        assert torch.equal(tokens[:, start + r * s : start + (r + 1) * s], first)
    # Segments differ across sequences: the data is random, not one fixed pattern.
    assert len({tuple(row.tolist()) for row in first}) > 1


def test_batches_are_a_function_of_seed_and_step(dm: RepeatedTokens) -> None:
    same = RepeatedTokens(CFG, seed=7)
    assert torch.equal(dm.train_batch(5)["tokens"], same.train_batch(5)["tokens"])
    assert not torch.equal(dm.train_batch(5)["tokens"], dm.train_batch(6)["tokens"])
    other_seed = RepeatedTokens(CFG, seed=8)
    assert not torch.equal(dm.train_batch(5)["tokens"], other_seed.train_batch(5)["tokens"])


def test_stream_resumes_at_start_step(dm: RepeatedTokens) -> None:
    from_zero = [b["tokens"] for b in islice(BatchStream(dm.train_batch, lambda: 0), 6)]
    from_four = [b["tokens"] for b in islice(BatchStream(dm.train_batch, lambda: 4), 2)]
    assert torch.equal(from_four[0], from_zero[4])
    assert torch.equal(from_four[1], from_zero[5])


def test_train_dataloader_reads_global_step_at_first_batch(dm: RepeatedTokens) -> None:
    data = MemberBatches([dm])  # what Lightning reads: batches on a member axis
    assert torch.equal(
        next(iter(data.train_dataloader()))["tokens"][0], dm.train_batch(0)["tokens"]
    )
    data.trainer = SimpleNamespace(global_step=0)
    batches = iter(data.train_dataloader())
    data.trainer.global_step = 3  # restored from a checkpoint after the iterator was built
    assert torch.equal(next(batches)["tokens"][0], dm.train_batch(3)["tokens"])
    assert torch.equal(next(batches)["tokens"][0], dm.train_batch(4)["tokens"])


def test_repeat_mask_marks_exactly_the_copyable_targets(dm: RepeatedTokens) -> None:
    batch = dm.train_batch(0)
    tokens, repeat = batch["tokens"], batch["repeat_mask"]  # (batch, seq), (batch, seq - 1)
    assert repeat.shape == (CFG.batch_size, CFG.seq_len - 1) and repeat.dtype == torch.bool
    # BOS -> token 1, the prefix, the first occurrence and the first token of the first repeat.
    n_first = 1 + CFG.prefix_len + CFG.segment_len
    assert not repeat[:, :n_first].any() and repeat[:, n_first:].all()
    # Every "repeat" target is the token one segment earlier: copying predicts it.
    t = repeat[0].nonzero().flatten()  # (n_repeat,)
    assert torch.equal(tokens[:, t + 1], tokens[:, t + 1 - CFG.segment_len])
    assert len(t) == CFG.segment_len * CFG.n_repeats - 1


def test_variable_segments_defeat_positional_shortcuts() -> None:
    cfg = RepeatedTokensConfig(segment_len=16, min_segment_len=4, n_repeats=2, bos=True)
    batch = RepeatedTokens(cfg, seed=3).train_batch(0)
    tokens, repeat = batch["tokens"], batch["repeat_mask"]  # (batch, seq), (batch, seq - 1)
    assert tokens.shape == (cfg.batch_size, cfg.seq_len) and (tokens[:, 0] == cfg.vocab_size).all()
    n_predictable = repeat.sum(dim=1)  # segment * n_repeats - 1 per sequence
    segments = (n_predictable + 1) // cfg.n_repeats
    assert ((n_predictable + 1) % cfg.n_repeats == 0).all()
    assert segments.min() >= 4 and segments.max() <= 16 and len(segments.unique()) > 5
    for row, seg in zip(tokens, segments.tolist(), strict=True):
        tail = row[-3 * seg :]
        assert torch.equal(tail[:seg], tail[seg : 2 * seg]) and torch.equal(
            tail[:seg], tail[2 * seg :]
        )
    starts = repeat.float().argmax(dim=1)  # first predictable target per sequence
    assert torch.equal(starts, cfg.seq_len - 2 * segments)


def test_icl_positions(dm: RepeatedTokens) -> None:
    early, late = dm.icl_positions()
    repeat = dm.train_batch(0)["repeat_mask"]  # (batch, seq - 1)
    start = 1 + CFG.prefix_len
    assert (
        start <= early and early + 1 < start + CFG.segment_len
    )  # predicts a first-occurrence token
    assert not repeat[:, early].any() and repeat[:, late].all()
    assert late == CFG.seq_len - 2


def test_eval_set_fixed_and_probe(dm: RepeatedTokens) -> None:
    (loader,) = MemberBatches([dm]).val_dataloader()
    first = torch.cat([b["tokens"][0] for b in loader])  # (eval_size, seq)
    again = torch.cat([b["tokens"][0] for b in MemberBatches([dm]).val_dataloader()[0]])
    fresh = RepeatedTokens(CFG, seed=7).eval_sets["eval"]["tokens"]  # (eval_size, seq)
    assert first.shape == (CFG.eval_size, CFG.seq_len)
    assert torch.equal(first, again) and torch.equal(first, fresh)
    assert next(iter(loader))["tokens"].shape[1] == min(CFG.eval_batch_size, CFG.eval_size)

    probe = dm.probe_batch()
    assert probe["tokens"].shape == (CFG.probe_size, CFG.seq_len)
    assert torch.equal(probe["ids"], probe["tokens"][:, :-1])  # identity where the model reads
    again = RepeatedTokens(CFG, seed=7).probe_batch()
    assert torch.equal(probe["tokens"], again["tokens"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("vocab_size", 1), ("segment_len", 1), ("n_repeats", 0), ("prefix_len", -1), ("eval_size", 0)],
)
def test_bad_config_names_the_key(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"data.{field}=")):
        RepeatedTokensConfig(**{field: value})


def test_structured_config_round_trip() -> None:
    cfg = OmegaConf.to_object(OmegaConf.structured(CFG))
    assert cfg == CFG


def test_make_datamodule_dispatches_on_config_type() -> None:
    assert isinstance(make_family(CFG, seed=0), RepeatedTokens)
    small = FewShotConfig(n_classes=20, feature_dim=4, n_train_classes=5, n_unseen_classes=5)
    assert isinstance(make_family(small, seed=0), FewShot)
    with pytest.raises(TypeError):
        make_family({"vocab_size": 16}, seed=0)  # type: ignore[arg-type]


def test_the_icl_score_averages_the_targets_within_its_band() -> None:
    from ihlab.data.tokens import TokenSplitMetrics

    # losses 0, 1, ..., 19 at the 20 targets of two sequences, the second shifted by +1 late
    loss = torch.arange(20.0).repeat(2, 1)  # (seq, pos)
    loss[1, 15:] += 1.0
    metrics = TokenSplitMetrics(n_examples=2, n_positions=20, icl=(2, 19), band=3)
    batch = {"tokens": torch.zeros(2, 21, dtype=torch.long)}
    logits = torch.zeros(2, 20, 5)
    metrics.update(batch, logits, torch.zeros(2, 20, dtype=torch.long), loss)
    # early: targets 0..5 (2 - 3 clipped to 0), mean 2.5; late: 16..19 (clipped at the end),
    # mean 17.5 in sequence 0 and 18.5 in sequence 1
    assert float(metrics.compute()["icl_score"]) == pytest.approx(15.5)
    terms, _ = metrics.terms(batch, logits, torch.zeros(2, 20, dtype=torch.long), loss)["icl_score"]
    assert terms.tolist() == [15.0, 16.0]
    exact = TokenSplitMetrics(n_examples=2, n_positions=20, icl=(2, 19))
    exact.update(batch, logits, torch.zeros(2, 20, dtype=torch.long), loss)
    assert float(exact.compute()["icl_score"]) == pytest.approx(19.5 - 2.0)


def test_the_eval_fingerprint_names_the_evaluation_sequences() -> None:
    """Same seed, same fingerprint; another seed draws other sequences (ihlab-compare fits one
    loss PCA per fingerprint); the hash is of the sequences, recomputed here."""
    import hashlib

    a, b = RepeatedTokens(RepeatedTokensConfig(), 0), RepeatedTokens(RepeatedTokensConfig(), 1)
    assert a.eval_fingerprint() == RepeatedTokens(RepeatedTokensConfig(), 0).eval_fingerprint()
    assert a.eval_fingerprint() != b.eval_fingerprint()
    h = hashlib.sha256()
    for split, batch in sorted(a.eval_sets.items()):
        for key, tensor in sorted(batch.items()):
            h.update(f"{split}/{key}/{tuple(tensor.shape)}/{tensor.dtype}".encode())
            h.update(tensor.numpy().tobytes())
    assert a.eval_fingerprint() == h.hexdigest()[:16]

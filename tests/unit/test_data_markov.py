"""In-context Markov chains: sampling, the in-context predictors (checked against a brute-force
count), the doubly-stochastic prior, and the family's split metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ihlab.data import make_family
from ihlab.data.markov import (
    ChainPrior,
    MarkovChains,
    MarkovConfig,
    in_context_predictors,
    sample_chains,
    transition_matrices,
)
from ihlab.errors import ConfigError

CFG = MarkovConfig(n_states=4, seq_len=30, batch_size=8, eval_size=64, eval_batch_size=32)


def brute_force(tokens: list[int], k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Unigram and bigram next-state probabilities at every position, by counting in loops."""
    uni, bi = [], []
    for t in range(len(tokens) - 1):
        seen = tokens[: t + 1]
        counts = np.array([seen.count(j) for j in range(k)], dtype=float)
        uni.append((counts + alpha) / (counts.sum() + k * alpha))
        moves = [seen[s + 1] for s in range(t) if seen[s] == seen[t]]
        from_current = np.array([moves.count(j) for j in range(k)], dtype=float)
        bi.append((from_current + alpha) / (from_current.sum() + k * alpha))
    return np.array(uni), np.array(bi)


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_in_context_predictors_count_what_came_before(alpha: float) -> None:
    tokens = torch.tensor([[0, 1, 0, 1, 1, 2, 0, 1], [3, 3, 3, 2, 3, 3, 1, 0]])
    predictors = in_context_predictors(tokens, 4, alpha)
    for row, seq in enumerate(tokens.tolist()):
        uni, bi = brute_force(seq, 4, alpha)
        assert np.allclose(predictors["unigram"][row].exp().numpy(), uni, atol=1e-12)
        assert np.allclose(predictors["bigram"][row].exp().numpy(), bi, atol=1e-12)
    # By hand: after 0 1 0 1 1 (position 4, current state 1) the moves out of 1 were 1->0, 1->1.
    expected = np.array([1 + alpha, 1 + alpha, alpha, alpha]) / (2 + 4 * alpha)
    assert np.allclose(predictors["bigram"][0, 4].exp().numpy(), expected)


def test_sequences_follow_their_own_chain() -> None:
    """Empirical transition frequencies of long sequences match the chains they were drawn from
    (the chains rebuilt from the same seed the sampler takes from its generator)."""
    cfg = MarkovConfig(n_states=3, seq_len=20_000)
    tokens = sample_chains(cfg, 2, torch.Generator().manual_seed(0))  # (2, seq)
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(0)))
    matrices = transition_matrices(cfg, 2, np.random.default_rng(seed))  # (2, k, k)
    assert not np.allclose(matrices[0], matrices[1])  # each sequence its own chain
    for row, chain in zip(tokens.numpy(), matrices, strict=True):
        counts = np.zeros((3, 3))
        np.add.at(counts, (row[:-1], row[1:]), 1)
        assert np.allclose(counts / counts.sum(1, keepdims=True), chain, atol=0.03)


def test_doubly_stochastic_chains_have_uniform_columns_too() -> None:
    cfg = MarkovConfig(n_states=5, prior=ChainPrior.doubly_stochastic)
    matrices = transition_matrices(cfg, 50, np.random.default_rng(1))
    assert np.allclose(matrices.sum(axis=2), 1, atol=1e-9)
    assert np.allclose(matrices.sum(axis=1), 1, atol=1e-6)
    plain = transition_matrices(MarkovConfig(n_states=5), 50, np.random.default_rng(1))
    assert not np.allclose(plain.sum(axis=1), 1, atol=1e-2)


def test_batches_are_seeded_and_the_model_reads_all_but_the_last_token() -> None:
    dm = make_family(CFG, seed=3)
    assert isinstance(dm, MarkovChains)
    batch = dm.train_batch(7)
    assert batch["tokens"].shape == (8, 30) and batch["tokens"].max() < 4
    assert torch.equal(batch["tokens"], MarkovChains(CFG, seed=3).train_batch(7)["tokens"])
    assert not torch.equal(batch["tokens"], dm.train_batch(8)["tokens"])
    assert torch.equal(dm.model_inputs(batch)["tokens"], batch["tokens"][:, :-1])
    assert torch.equal(batch["ids"], batch["tokens"][:, :-1])
    assert dm.io.d_vocab == dm.io.d_vocab_out == 4 and dm.io.n_ctx == 30


def test_split_metrics_give_the_predictors_losses_and_the_models_kl() -> None:
    dm = MarkovChains(CFG, seed=0)
    tokens = dm.eval_sets["eval"]["tokens"]
    predictors = in_context_predictors(tokens, 4, 1.0)
    metrics = dm.split_metrics()
    # A "model" that is exactly the bigram predictor: zero KL to it, its loss, no excess loss.
    logits = predictors["bigram"].float()
    targets = tokens[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), reduction="none"
    ).view(targets.shape)
    metrics.update({"tokens": tokens}, logits, targets, token_loss)
    out = metrics.compute()
    bigram_loss = float(-predictors["bigram"].gather(-1, targets[..., None]).mean())
    unigram_loss = float(-predictors["unigram"].gather(-1, targets[..., None]).mean())
    assert float(out["loss_bigram"]) == pytest.approx(bigram_loss, abs=1e-6)  # float32 means
    assert float(out["loss_unigram"]) == pytest.approx(unigram_loss, abs=1e-6)
    assert float(out["kl_bigram"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["excess_loss"]) == pytest.approx(0.0, abs=1e-5)
    assert float(out["loss_uniform"]) == pytest.approx(math.log(4))
    p, q = predictors["unigram"].exp(), predictors["bigram"].exp()
    kl = float((p * (p.log() - q.log())).sum(-1).mean())
    assert float(out["kl_unigram"]) == pytest.approx(kl, abs=1e-5)
    lt = dm.learning_time()
    assert lt.metric == "eval/excess_loss"
    assert lt.threshold == pytest.approx(0.1 * (unigram_loss - bigram_loss), abs=1e-9)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"n_states": 1}, "data.n_states"),
        ({"seq_len": 2}, "data.seq_len"),
        ({"alpha": 0.0}, "data.alpha"),
        ({"alpha": float("nan")}, "data.alpha"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"icl_early": 5}, "data.icl_early"),
    ],
)
def test_bad_markov_config_names_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MarkovConfig(**changes)


def test_learning_time_is_90_percent_of_the_way_to_bigram_read_unsmoothed(tmp_path) -> None:
    """Threshold: 10% of the unigram-to-bigram gap of the evaluation set's predictors (brute
    force here); phase changes on the unsmoothed curve, which `measure` uses: a planted curve
    with a ten-evaluation first stage in a 150-evaluation run has both stages only so."""

    from ihlab.metrics.dynamics import detect_phase_change
    from ihlab.runs.summary import Status
    from ihlab.train.summary import measure

    dm = make_family(CFG, seed=0)
    tokens = dm.eval_sets["eval"]["tokens"].tolist()
    unigram, bigram = [], []
    for row in tokens:
        u, b = brute_force(row, CFG.n_states, CFG.alpha)  # (pos, k) probabilities
        nxt = row[1:]
        unigram += [-math.log(u[t, s]) for t, s in enumerate(nxt)]
        bigram += [-math.log(b[t, s]) for t, s in enumerate(nxt)]
    lt = dm.learning_time()
    assert lt.metric == "eval/excess_loss" and lt.smooth_frac == 0.0
    assert lt.threshold == pytest.approx(0.1 * (np.mean(unigram) - np.mean(bigram)), rel=1e-6)

    steps = np.arange(0, 3000, 20)
    curve = 1.6 - 0.1 / (1 + np.exp(-(steps - 80) / 12)) - 0.2 / (1 + np.exp(-(steps - 320) / 40))
    run = tmp_path / "run"
    run.mkdir()
    rows = "".join(f"{s},{8 * s},{v}\n" for s, v in zip(steps, curve, strict=True))
    (run / "metrics.csv").write_text("step,sequences,eval/excess_loss\n" + rows)
    found = measure(run, 3000, lt, Status.completed)["phase_change"]["transitions"]
    assert [t["steepest"] for t in found] == pytest.approx([80, 320], abs=20)
    assert len(detect_phase_change(steps, curve).transitions) < 2  # the default kernel: merged

"""The parts ihlab-dissect is built from, each against an independent computation: per-sequence
terms that add up to what training logs, the paired ratio interval and the seed statistics worked
by hand, a forward started at a layer, and stacked interventions equal to one forward each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config, quiet
from ihlab.data import make_family
from ihlab.dissect.evaluate import INTACT, CheckpointEvaluation
from ihlab.dissect.spec import DissectConfig, HeadValue, generated
from ihlab.metrics.heads import head_score_terms, head_scores
from ihlab.model import Transformer
from ihlab.stats.paired import ratio_interval, seed_changes
from ihlab.train.schema import to_train_config

SMALL = ["data.eval_size=24", "data.eval_batch_size=10", "data.batch_size=8"]
FAMILIES = {
    "repeated_tokens": ["experiment=induction_2l", *SMALL],
    "fewshot": ["experiment=fewshot_fast", *SMALL, "data.n_train_classes=40"],
    "markov": ["experiment=markov_2l", *SMALL, "data.seq_len=20"],
}


def setup(name: str, *extra: str):
    config = to_train_config(compose_config(quiet([*FAMILIES[name], *extra])))
    family = make_family(config.data, 3)
    torch.manual_seed(1)
    model = Transformer(config.model, family.io).eval()
    for p in model.parameters():  # weights far from the init, so heads matter
        p.data.normal_(0, 0.3)
    return config, family, model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_terms_add_up_to_what_training_logs(name: str) -> None:
    """Every scalar an evaluation logs is the sum of its per-sequence terms over the sequences
    divided by the sum of their counts; every head score likewise."""
    config, family, model = setup(name)
    split = family.eval_splits[-1]
    batch = family.eval_sets[split]
    names = [f"blocks.{layer}.attn.pattern" for layer in range(config.model.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(family.model_inputs(batch), names)
    lg, tg = family.loss_positions(batch, logits)
    loss = F.cross_entropy(lg.flatten(0, -2), tg.flatten(), reduction="none").view(tg.shape)
    metrics = family.split_metrics()
    metrics.update(batch, lg, tg, loss)
    logged = metrics.compute()
    terms = metrics.terms(batch, lg, tg, loss)
    assert set(terms) == set(logged)
    for metric, (sums, counts) in terms.items():
        assert float(sums.sum() / counts.sum()) == pytest.approx(float(logged[metric]), abs=1e-5)
    patterns = [cache[n] for n in names]
    scores = family.score_heads(patterns, batch)
    for score, (sums, counts) in family.head_score_terms(patterns, batch).items():
        torch.testing.assert_close(sums.sum(0) / counts.sum(), scores[score].double())


def test_head_score_terms_match_the_scores_sequence_by_sequence() -> None:
    g = torch.Generator().manual_seed(0)
    pattern = torch.rand(3, 2, 6, 6, generator=g).tril().softmax(-1)
    ids = torch.tensor([[0, 1, 2, 0, 1, 2], [5, 6, 5, 6, 5, 6], [1, 2, 3, 4, 5, 6]])
    terms = head_score_terms([pattern], ids)
    for b in range(3):
        if terms["prefix_matching"][1][b] > 0:  # the last sequence repeats nothing
            alone = head_scores([pattern[b : b + 1]], ids[b : b + 1])["prefix_matching"][0]
            got = terms["prefix_matching"][0][b, 0] / terms["prefix_matching"][1][b]
            torch.testing.assert_close(got, alone.double())
    assert terms["prefix_matching"][1].tolist() == [3.0, 4.0, 0.0]  # queries with a target


def test_the_ratio_interval_worked_by_hand() -> None:
    # One position per sequence: the mean 2 and 1.96 x sqrt(2/1 x 2) / 2 = 1.96.
    ratio, half = ratio_interval(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert float(ratio) == 2.0 and float(half) == pytest.approx(1.959964)
    # Sums 2, 6, 1 over 1, 2, 1 positions: ratio 9/4, residuals -1/4, 3/2, -5/4;
    # variance 3/2 x 3.875 / 4^2; half-width 1.96 x sqrt(5.8125) / 4 = 1.18135.
    ratio, half = ratio_interval(torch.tensor([2.0, 6.0, 1.0]), torch.tensor([1.0, 2.0, 1.0]))
    assert float(ratio) == 2.25 and float(half) == pytest.approx(1.959964 * math.sqrt(5.8125) / 4)


def test_seed_changes_worked_by_hand() -> None:
    # Changes 1, 2, 3: mean 2, s.d. 1, t(0.975, 2) = 4.3027; only all-positive and all-negative
    # of the 8 sign patterns reach |mean| 2: p = 1/4.
    stats = seed_changes([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0
    assert stats["ci_high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3))
    assert stats["p"] == pytest.approx(0.25)
    assert math.isnan(seed_changes([1.0])["p"])


def test_a_forward_started_at_a_layer_equals_the_whole_forward() -> None:
    _, family, model = setup("fewshot")
    inputs = family.model_inputs(family.eval_sets["train"])
    with torch.no_grad():
        logits, cache = model.run_with_cache(inputs, ["blocks.1.resid_pre"])
        started = model(inputs, start=(1, cache["blocks.1.resid_pre"]))
    assert torch.equal(started, logits)


@pytest.mark.parametrize("name", ["fewshot", "repeated_tokens"])
def test_stacked_interventions_equal_one_forward_each(name: str) -> None:
    """Every generated family (heads ablated with each value, keep one, layers): the stacked,
    layer-sharing path gives each intervention what its own full forward gives."""
    config, family, model = setup(name)
    dissect = DissectConfig(runs=["x"], heads=list(HeadValue))
    interventions = generated(dissect, config.model)
    evaluation = CheckpointEvaluation(model, family, {}, 0, batch_rows=25)  # forces slices
    split = family.eval_splits[0]
    batched = evaluation.run(split, interventions, batched=True)
    alone = evaluation.run(split, interventions, batched=False)
    for setting in [INTACT, *(i.name for i in interventions)]:
        for mine, theirs in zip(batched[setting].joined(), alone[setting].joined(), strict=True):
            for metric in theirs:
                torch.testing.assert_close(
                    mine[metric][0],
                    theirs[metric][0],
                    rtol=1e-5,
                    atol=1e-6,
                    msg=f"{setting} {metric}",
                )

"""The shipped experiments do what the README's Experiments table and clamp table say (slow: each
trains to convergence, seed 0). Every threshold is the README's number with a stated margin for
seed and platform noise; the comment beside it gives what seed 0 measured on the 2-core machine.
A README number that changes must change here too, and a regression to half an effect fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import curve, first_below, heads, read_rows

pytestmark = pytest.mark.slow

LN_512, LN_2 = math.log(512), math.log(2)


def test_smeared_keys_give_a_one_layer_model_induction_and_plain_keys_do_not(
    run_training, tmp_path: Path
) -> None:
    """README: smeared_1l's repeated-segment loss is below 10% of ln 512 by step ~100-150 and
    ~0.25 at step 400, every head's prefix matching ~0.95; plain_1l's stays above 6.1 nats for all
    400 steps, prefix matching ~0.02."""
    smeared = run_training("experiment=smeared_1l", name="smeared")
    plain = run_training("experiment=plain_1l", name="plain")
    rows = read_rows(tmp_path / "smeared")
    repeat = curve(rows, "eval/loss_repeat")
    learned = first_below(repeat, 0.1 * LN_512)
    assert smeared["learning_time"]["step"] == learned  # recomputed from metrics.csv
    assert learned is not None and 100 <= learned <= 150  # measured: 100 (seeds 0-2: 100)
    assert repeat[-1] == (400, pytest.approx(0.25, abs=0.05))  # measured: 0.272
    assert all(p >= 0.90 for p in heads(rows[-1], "prefix_matching/L0"))  # ~0.95: 0.953-0.969
    assert all(v > LN_512 - 0.1 for _, v in curve(rows, "eval/loss_first"))  # measured >= 6.38

    rows = read_rows(tmp_path / "plain")
    assert plain["learning_time"]["step"] is None
    repeat = curve(rows, "eval/loss_repeat")
    assert len(repeat) == 8 and all(v > 6.1 - 0.03 for _, v in repeat)  # measured >= 6.128
    scored = [p for row in rows for p in heads(row, "prefix_matching/L0")]
    assert len(scored) == 9 * 4 and max(scored) < 0.02 + 0.02  # measured 0.023-0.025


def test_fewshot_fast_plateaus_at_ln2_then_generalizes_to_new_pairs_and_classes(
    fewshot_fast,
) -> None:
    """README: a plateau at ln 2 (0.68-0.75) from step ~300 to ~1200, learning time 1700 (seeds
    0-4: 1500-2100), phase change onset 1000, steepest 1500, end 2000; at 5000 steps accuracy
    0.996 (train), 0.99 (held-out pairs and exemplars) and 0.98 (unseen classes)."""
    run_dir = fewshot_fast
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = curve(read_rows(run_dir), "eval/train/loss")
    learned = first_below(losses, 0.4 * LN_2)
    assert summary["learning_time"]["step"] == learned  # recomputed from metrics.csv
    assert learned is not None and abs(learned - 1700) <= 200  # measured: 1700
    plateau = [loss for step, loss in losses if 300 <= step <= 1200]
    assert len(plateau) == 10
    assert all(0.68 - 0.02 <= loss <= 0.75 + 0.02 for loss in plateau)  # measured: 0.680-0.745
    phase = summary["phase_change"]
    assert phase["detected"], phase["reason"]
    for key, readme in (("onset", 1000), ("steepest", 1500), ("end", 2000)):
        assert abs(phase[key] - readme) <= 200, (key, phase[key])  # measured: as the README
    final = summary["final"]
    readme = {"train": 0.996, "heldout_pairs": 0.99, "heldout_exemplars": 0.99}
    readme["unseen_classes"] = 0.98  # measured: 0.996, 0.988, 0.992, 0.984
    for split, accuracy in readme.items():
        assert final[f"eval/{split}/acc"] >= accuracy - 0.02, split


def test_clamping_previous_token_attention_or_subcircuit_a_shortens_the_plateau(
    fewshot_fast, run_training
) -> None:
    """README's clamp table, seed 0 (Singh et al.): unclamped 1700, previous-token attention
    clamped 700 (47% shorter over seeds 0-2), subcircuit A 200 (88% shorter, no plateau)."""
    # Each run ends where its bound below does: the learning time is the first evaluation below
    # the threshold, and nothing before it depends on the run's length (fewshot_fast's learning
    # rate is constant, its batches are keyed by step), so a longer run could only find a
    # learning time that fails the bound anyway.
    short = ("experiment=fewshot_fast", "data.eval_size=500", "trainer.score_every=0")
    prev = run_training(*short, "clamps=prev_token", "trainer.max_steps=900", name="prev")
    a = run_training(*short, "clamps=subcircuit_a", "trainer.max_steps=300", name="a")
    free_at = json.loads((fewshot_fast / "summary.json").read_text())["learning_time"]["step"]
    prev_at, a_at = prev["learning_time"]["step"], a["learning_time"]["step"]
    assert free_at is not None and prev_at is not None and a_at is not None
    assert abs(prev_at - 700) <= 200  # measured: 700 (seeds 0-2: 700-1000)
    assert abs(a_at - 200) <= 100  # measured: 200 (seeds 0-2: 200)
    assert prev_at <= 0.6 * free_at and a_at <= 0.2 * free_at  # 59% and 88% shorter


def test_markov_2l_pauses_at_the_unigram_level_before_the_bigram_stage(
    run_training, tmp_path: Path
) -> None:
    """README (seed 0, the first 700 of its 3000 steps): the loss leaves the uniform guess,
    reaches the in-context unigram predictor's level (1.503) at step 180 (1.509), then falls
    toward the Bayes bigram predictor's (1.221), within a quarter of the unigram-to-bigram gap by
    step ~600; the detector reports two transitions, (onset, steepest, end) = (0, 80, 180) and
    (180, 300, 600)."""
    summary = run_training("experiment=markov_2l", "trainer.max_steps=700", name="markov")
    rows = read_rows(tmp_path / "markov")
    loss = curve(rows, "eval/loss")
    unigram, bigram = rows[-1]["eval/loss_unigram"], rows[-1]["eval/loss_bigram"]
    assert loss[0] == (0, pytest.approx(math.log(5), abs=0.01))  # the uniform guess at step 0
    near_unigram = first_below(loss, unigram + 0.01)
    near_bigram = first_below(loss, bigram + 0.25 * (unigram - bigram))
    assert near_unigram is not None and abs(near_unigram - 180) <= 40  # measured: 180
    assert near_bigram is not None and abs(near_bigram - 600) <= 100  # measured: 580
    phase = summary["phase_change"]
    found = [(t["onset"], t["steepest"], t["end"]) for t in phase["transitions"]]
    assert len(found) == 2, phase
    for got, readme in zip(found, [(0, 80, 180), (180, 300, 600)], strict=True):
        assert all(abs(g - r) <= 40 for g, r in zip(got, readme, strict=True)), found
    (first, second) = phase["transitions"]
    at_first_end = dict(loss)[first["end"]]
    assert abs(at_first_end - unigram) < 0.02  # the pause is at the unigram level
    assert second["drop"] > first["drop"]  # the bigram stage is the headline

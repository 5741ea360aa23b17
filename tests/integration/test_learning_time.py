"""A real run's learning time and phase change in summary.json, recomputed from its metrics.csv
by hand: the first evaluation whose training-split loss is strictly below Singh et al.'s 0.4 ln 2.
Subcircuit A clamped makes fewshot_fast learn within a few hundred steps (README: 300; about 120
at lr 1e-3), so the curve crosses the threshold inside a short, non-slow run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ihlab.metrics.dynamics import detect_phase_change

SHORT = (
    "experiment=fewshot_fast",
    "clamps=subcircuit_a",
    "data.eval_size=100",
    "data.n_train_classes=200",
    "optim.lr=1e-3",
    "trainer.max_steps=200",
    "trainer.eval_every=20",
    "trainer.score_every=0",
    "trainer.threads=1",
)


def eval_curve(metrics: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every row of a metrics.csv that holds `key`, read with the csv module."""
    with metrics.open() as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key)]


def test_learning_time_is_the_first_evaluation_strictly_below_0_4_ln_2(
    run_training, tmp_path: Path
) -> None:
    summary = run_training(*SHORT)
    run_dir = tmp_path / "run"
    curve = eval_curve(run_dir / "metrics.csv", "eval/train/loss")
    threshold = 0.4 * math.log(2)  # 0.2773
    assert [step for step, _ in curve] == list(range(20, 201, 20))
    below = [step for step, loss in curve if loss < threshold]
    assert below, f"the run never learned: {curve}"
    learned = below[0]
    assert curve[0][1] > 2 * threshold  # it had to be learned: not below at the first evaluation
    assert all(loss >= threshold for step, loss in curve if step < learned)
    expected = {"metric": "eval/train/loss", "threshold": threshold, "step": learned}
    assert summary["learning_time"] == expected
    assert json.loads((run_dir / "summary.json").read_text())["learning_time"] == expected
    # The phase change is read off the same curve.
    steps, losses = zip(*curve, strict=True)
    phase = detect_phase_change(list(steps), list(losses)).to_dict()
    assert summary["phase_change"] == {"metric": "eval/train/loss", **phase}

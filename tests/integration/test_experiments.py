"""The shipped experiments do what their configs promise (slow: each trains to convergence)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ihlab.outputs import read_metrics

pytestmark = pytest.mark.slow
LN_64 = math.log(64)


def curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), r[key]) for r in read_metrics(run_dir / "metrics.csv") if key in r]


def test_smeared_keys_give_a_one_layer_model_induction_and_plain_keys_do_not(
    run_training, tmp_path: Path
) -> None:
    smeared = run_training("experiment=smeared_1l", name="smeared")["final"]
    plain = run_training("experiment=plain_1l", name="plain")["final"]
    assert smeared["eval/loss_repeat"] < 0.1 * LN_64
    assert plain["eval/loss_repeat"] > 0.5 * LN_64
    for final in (smeared, plain):
        assert final["eval/loss_first"] > 0.9 * LN_64
    rows = read_metrics(tmp_path / "smeared" / "metrics.csv")
    best_prefix = max(v for k, v in rows[-1].items() if k.startswith("heads/prefix_matching/L0"))
    assert best_prefix > 0.3  # a layer-0 head became an induction head

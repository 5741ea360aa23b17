"""How a multirun trains `seeds=[...]` (train/routes.py): batched where that was measured faster
(overhead-bound models on the CPU, anything on an accelerator), one run per seed where it was
measured slower (compute-bound models on the CPU), said in one line when the study starts; a
single command trains what it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config, quiet
from ihlab.metrics.flops import step_flops
from ihlab.model import ModelIO
from ihlab.train.routes import CPU_BATCHING_FLOPS, flops_per_member_step, seed_route
from ihlab.train.schema import to_train_config

QUICK = [
    "wandb=off",
    "trainer.progress_bar=false",
    "trainer.max_steps=4",
    "trainer.eval_every=2",
    "trainer.score_every=0",
    "data.eval_size=32",
]


def route_of(*overrides: str):
    return seed_route(to_train_config(compose_config(quiet(["seeds=[0,1]", *overrides]))))


@pytest.mark.parametrize(
    ("experiment", "batched"),
    [
        ("fewshot_fast", True),
        ("fewshot_singh_cpu", True),
        ("induction_2l", False),
        ("smeared_1l", False),
        ("markov_2l", False),
    ],
)
def test_the_measured_rule_batches_the_few_shot_models_and_not_the_token_models(
    experiment: str, batched: bool
) -> None:
    route = route_of(f"experiment={experiment}")
    assert route.batched is batched
    assert ("overhead-bound" if batched else "compute-bound") in route.reason
    assert route_of(f"experiment={experiment}", "trainer.accelerator=gpu").batched
    assert route_of(f"experiment={experiment}", "seed_route=batched").batched
    assert not route_of(f"experiment={experiment}", "seed_route=separate").batched


def test_the_rule_reads_the_models_flops_per_member_step() -> None:
    """induction_2l: 2 layers of 4 heads, d_model 64, vocab 64, 64 sequences of 64 tokens whose
    first 63 are read (ModelIO by hand): the count the rule compares, above the threshold."""
    config = to_train_config(compose_config(quiet(["experiment=induction_2l"])))
    io = ModelIO(n_ctx=config.data.seq_len, d_vocab=64, d_vocab_out=64)
    expected = step_flops(config.model, io, 64, config.data.seq_len - 1).total
    assert flops_per_member_step(config) == expected > CPU_BATCHING_FLOPS


def test_a_compute_bound_models_seeds_train_as_one_run_each(
    tmp_path: Path, ihlab_train_main
) -> None:
    args = ["-m", "experiment=induction_2l", "seeds=[0,1]", *QUICK, "hydra.sweep.dir=sweep"]
    result = ihlab_train_main(args, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ihlab-train: seeds")]
    assert line.startswith("ihlab-train: seeds [0, 1] as one run per seed: induction_2l's ")
    assert "compute-bound on the CPU" in line and line.endswith("(docs/speed.md#routes)")
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == ["0_baseline_s0", "1_baseline_s1"]
    for seed, run in enumerate(runs):
        summary = json.loads((tmp_path / "sweep" / run / "summary.json").read_text())
        assert summary["seed"] == seed and summary["status"] == "completed"
        assert "ensemble" not in summary
    rows = [x.split() for x in result.stderr.splitlines() if x.split()[:1] in (["0"], ["1"])]
    assert [r[1:3] for r in rows] == [["completed", "seed=0"], ["completed", "seed=1"]]


def test_an_overhead_bound_models_seeds_train_as_one_batched_job_per_point(
    tmp_path: Path, ihlab_train_main
) -> None:
    args = ["-m", "experiment=fewshot_fast", "clamps=none,prev_token", "seeds=[0,1]", *QUICK]
    result = ihlab_train_main([*args, "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ihlab-train: seeds")]
    assert line.startswith("ihlab-train: seeds [0, 1] as one batched job per point: fewshot_fast")
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0_baseline_s0-1", "1_prev_token_s0-1"]
    for job in jobs:
        record = json.loads((tmp_path / "sweep" / job / "ensemble.json").read_text())
        assert record["seeds"] == [0, 1] and record["status"] == "completed"


def test_a_single_command_trains_its_seeds_as_one_job_and_refuses_separate(
    tmp_path: Path, ihlab_train_main
) -> None:
    args = ["experiment=induction_2l", "seeds=[0,1]", *QUICK, "hydra.run.dir=job"]
    result = ihlab_train_main(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "job" / "ensemble.json").read_text())["seeds"] == [0, 1]
    said = "seeds=[0, 1] trained as one batched job, as asked, though induction_2l's"
    assert said in result.stdout  # the console log
    refused = ihlab_train_main([*args[:-1], "seed_route=separate", "hydra.run.dir=x"], tmp_path)
    assert refused.returncode == 1
    assert "config error: seed_route=separate trains seeds=[0, 1] as one run per seed" in (
        refused.stderr
    )
    assert not (tmp_path / "x" / "checkpoints").exists()

"""`ihlab-train` as a user runs it: from any directory, single runs, multiruns, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ihlab.compare.study import compare

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")  # the console script pip installed
QUICK = [
    "wandb=off",
    "trainer.progress_bar=false",
    "trainer.max_steps=20",
    "trainer.eval_every=10",
    "data.batch_size=16",  # what the command does, not what the model learns
    "data.eval_size=64",
]


def ihlab_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IHLAB_OUTPUTS"}
    return subprocess.run(
        [IHLAB_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_multirun_of_two_jobs_writes_two_complete_run_directories(
    tmp_path: Path, ihlab_train_main
) -> None:
    result = ihlab_train_main(["-m", "seed=0,1", *QUICK], tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun" / "induction_2l").iterdir()
    assert f"2 of 2 jobs completed in {Path('outputs/multirun/induction_2l') / sweep.name}" in (
        result.stderr
    )
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["0_baseline_s0", "1_baseline_s1"]
    for name, seed in zip(runs, (0, 1), strict=True):
        run = sweep / name
        assert (run / ".hydra" / "config.yaml").exists()
        assert (run / ".hydra" / "resolved.yaml").exists()
        assert (run / "metrics.csv").read_text().startswith("step,sequences,")
        assert (run / "checkpoints" / "last.ckpt").exists()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == seed
        assert summary["steps"] == 20


def test_a_multirun_with_a_bad_point_runs_nothing_and_names_every_bad_point(
    tmp_path: Path, ihlab_train_main
) -> None:
    """Every point is validated before the first job starts: a bad value in any point stops the
    multirun at once (exit 1), naming each bad point, its key and the fix, and writes nothing."""
    args = ["-m", "optim.lr=1e-3,-1", "model.n_heads=4,5", *QUICK]
    result = ihlab_train_main(args, tmp_path)
    assert result.returncode == 1
    assert "config error in 3 of 4 sweep points; no job was run" in result.stderr
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("job")]
    assert [line.split(":")[0] for line in lines] == [
        "job 1 (optim.lr=0.001 model.n_heads=5)",
        "job 2 (optim.lr=-1 model.n_heads=4)",
        "job 3 (optim.lr=-1 model.n_heads=5)",
    ]
    assert "model.d_model=64 is not divisible by model.n_heads=5" in lines[0]
    assert "optim.lr=-1.0 must be a finite number > 0" in lines[1]
    assert not (tmp_path / "outputs").exists()


def test_a_multirun_reports_every_jobs_status_and_fails_when_one_did_not_complete(
    tmp_path: Path, ihlab_train_main
) -> None:
    """A job that diverges does not stop the others; the table at the end says which job did not
    complete and why, the exit status is 1, and ihlab-compare still reads the completed job."""
    args = ["-m", "trainer.divergence_factor=10,0.001", *QUICK, "hydra.sweep.dir=sweep"]
    result = ihlab_train_main(args, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "1 of 2 jobs completed in sweep" in result.stderr
    rows = {
        cells[0]: cells
        for line in result.stderr.splitlines()
        if (cells := line.split()) and cells[0] in ("0", "1")
    }
    assert rows["0"][1:3] == ["completed", "trainer.divergence_factor=10"]
    assert rows["1"][1:3] == ["diverged", "trainer.divergence_factor=0.001"]
    assert "diverged at step 0" in " ".join(rows["1"])
    assert "1 of 2 jobs did not complete" in result.stderr
    done = json.loads((tmp_path / "sweep" / "0_baseline_s0" / "summary.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 20
    compare([tmp_path / "sweep"])
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "| baseline | 1 | 0 |" in table
    assert "1_baseline_s0 | diverged" in table


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_heads=5", "model.d_model=64 is not divisible by model.n_heads=5"),
        ("trainer.max_steps=lots", "trainer.max_steps"),  # refused by Hydra as it composes
    ],
)
def test_bad_config_fails_before_training_naming_the_key(
    tmp_path: Path, override: str, expected: str, ihlab_train_main
) -> None:
    result = ihlab_train_main([override, "wandb=off"], tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints"))
    assert not list(tmp_path.glob("outputs/**/metrics.csv"))


@pytest.mark.slow
def test_a_multirun_of_ensemble_jobs_runs_them_on_parallel_workers(tmp_path: Path) -> None:
    """Two conditions x 4 seeds as four ensemble jobs of 2 seeds, two at a time on joblib
    workers: every job writes its record and one run directory per seed."""
    args = ["-m", "launcher=parallel", "clamps=none,prev_token", "seeds=[0,1],[2,3]", *QUICK]
    args.append("seed_route=batched")  # induction_2l's seeds would train one run each
    result = ihlab_train([*args, "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = {
        "0_baseline_s0-1": ("baseline", [0, 1]),
        "1_baseline_s2-3": ("baseline", [2, 3]),
        "2_prev_token_s0-1": ("prev_token", [0, 1]),
        "3_prev_token_s2-3": ("prev_token", [2, 3]),
    }
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == list(jobs)
    for job, (condition, seeds) in jobs.items():
        record = json.loads((tmp_path / "sweep" / job / "ensemble.json").read_text())
        assert record["status"] == "completed" and record["seeds"] == seeds
        for seed in seeds:
            member = tmp_path / "sweep" / job / f"{condition}_s{seed}" / "summary.json"
            summary = json.loads(member.read_text())
            assert summary["seed"] == seed and summary["condition"] == condition
            assert summary["status"] == "completed" and summary["steps"] == 20

"""`ihlab-train` as a user runs it: from any directory, single runs, multiruns, bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")  # the console script pip installed
QUICK = [
    "wandb=off",
    "trainer.progress_bar=false",
    "trainer.max_steps=20",
    "trainer.eval_every=10",
]


def ihlab_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IHLAB_OUTPUTS"}
    return subprocess.run(
        [IHLAB_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_multirun_of_two_jobs_writes_two_complete_run_directories(tmp_path: Path) -> None:
    result = ihlab_train(["-m", "seed=0,1", *QUICK], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun" / "induction_2l").iterdir()
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


@pytest.mark.parametrize("launcher", ["submitit_local", "parallel"])
def test_multirun_through_submitit_and_joblib_launchers(launcher: str, tmp_path: Path) -> None:
    """The SLURM route (submitit, here its local executor) and local parallel jobs (joblib)."""
    args = ["-m", f"launcher={launcher}", "clamps=none,prev_token", *QUICK]
    result = ihlab_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun" / "induction_2l").iterdir()
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_baseline_s0", "1_prev_token_s0"]
    for name in runs:
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 20
        assert (sweep / name / "checkpoints" / "last.ckpt").exists()
    if launcher == "submitit_local":
        assert (sweep / ".submitit").is_dir()


def test_a_failing_job_does_not_stop_the_multirun(tmp_path: Path) -> None:
    result = ihlab_train(["-m", "model.n_heads=5,4", *QUICK], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun" / "induction_2l").iterdir()
    bad = json.loads((sweep / "0_baseline_s0" / "summary.json").read_text())
    good = json.loads((sweep / "1_baseline_s0" / "summary.json").read_text())
    assert bad["status"] == "config_error" and "model.n_heads=5" in bad["error"]
    assert good["status"] == "completed"
    assert "config error" in (sweep / "0_baseline_s0" / "train.log").read_text()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.n_heads=5", "model.d_model=64 is not divisible by model.n_heads=5"),
        ("model.n_layer=3", "model.n_layer"),
        ("trainer.max_steps=lots", "trainer.max_steps"),
    ],
)
def test_bad_config_fails_before_training_naming_the_key(
    tmp_path: Path, override: str, expected: str
) -> None:
    result = ihlab_train([override, "wandb=off"], cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints"))
    assert not list(tmp_path.glob("outputs/**/metrics.csv"))


def test_a_multirun_of_ensemble_jobs_splits_seeds_over_parallel_workers(tmp_path: Path) -> None:
    """Two conditions x 2 seeds in one job each, and 4 seeds split over two parallel jobs."""
    result = ihlab_train(["-m", "clamps=none,prev_token", "seeds=[0,1]", *QUICK], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun" / "induction_2l").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_baseline_s0-1", "1_prev_token_s0-1"]
    for job, condition in zip(jobs, ("baseline", "prev_token"), strict=True):
        record = json.loads((sweep / job / "ensemble.json").read_text())
        assert record["status"] == "completed" and record["seeds"] == [0, 1]
        for seed in (0, 1):
            summary = json.loads(
                (sweep / job / f"{condition}_s{seed}" / "summary.json").read_text()
            )
            assert summary["seed"] == seed and summary["condition"] == condition
    split = ["-m", "launcher=parallel", "seeds=[0,1],[2,3]", *QUICK, "hydra.sweep.dir=split"]
    result = ihlab_train(split, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    done = sorted(p.parent.name + "/" + p.name for p in (tmp_path / "split").glob("*/*_s*"))
    jobs = {0: "0_baseline_s0-1", 1: "0_baseline_s0-1", 2: "1_baseline_s2-3", 3: "1_baseline_s2-3"}
    assert done == [f"{job}/baseline_s{seed}" for seed, job in jobs.items()]

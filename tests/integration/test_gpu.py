"""On a CUDA device: the ensemble command trains hundreds of members, each as its single run would.

Skipped without CUDA (`pytest -m gpu` runs only these). Prints the measured GPU memory per member,
the number the README quotes (run with `-s` to see it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ihlab.runs.tables import read_metrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MEMBERS = 256
RUN = (
    "experiment=fewshot_fast",
    "trainer=gpu",
    "trainer.max_steps=60",
    "trainer.eval_every=30",
    "trainer.score_every=30",
    "trainer.checkpoint_every=60",
    "data.eval_size=128",
)


def test_hundreds_of_members_train_on_one_gpu_each_as_its_single_run(run_training) -> None:
    torch.cuda.reset_peak_memory_stats()
    seeds = ",".join(map(str, range(MEMBERS)))
    job = run_training(*RUN, f"seeds=[{seeds}]", name="ensemble")
    peak = torch.cuda.max_memory_allocated()
    assert [m["status"] for m in job["members"]] == ["completed"] * MEMBERS
    per_member = peak / MEMBERS / 2**20
    print(f"\n{MEMBERS} members of fewshot_fast: {per_member:.2f} MiB of GPU memory per member")
    for seed in (0, MEMBERS - 1):
        single = run_training(*RUN, f"seed={seed}", name=f"single_{seed}")
        assert single["status"] == "completed"
        member = read_metrics(Path(job["members"][seed]["run_dir"]) / "metrics.csv")
        alone = read_metrics(Path(single["run_dir"]) / "metrics.csv")
        assert [r["step"] for r in member] == [r["step"] for r in alone]
        for a, b in zip(member, alone, strict=True):
            for key in ("train/loss", "eval/train/loss"):
                if key in b:
                    # vmap's batched matmuls sum in another order than one member's: CUDA's
                    # float32 (TF32 off in 32-true) keeps that to float noise over 60 steps
                    assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (seed, key)

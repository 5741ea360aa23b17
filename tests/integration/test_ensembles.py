"""Seed ensembles: every member is its single run.

Members' numbers are compared with their single runs within float tolerance, not bit for bit: an
ensemble computes every member's forward under vmap with the explicit attention path, a single
run with PyTorch's fused attention, so float32 sums run in different orders (last-bit
differences, ~1e-7 relative per step) which a short Adam run amplifies mildly. Measured: 3e-7 on
token and 7e-6 (on a value of 3e-3) on clamped few-shot runs after 100 steps; the tests allow
rtol 1e-4 and atol 1e-5 on metrics, atol 1e-4 on weights (Adam's normalized step can turn the
last-bit noise of a near-zero gradient into a weight difference of ~1e-5). Within one code path
(an ensemble and its own resume) results are identical.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from conftest import RUN, SharedRuns, compose_config, quiet, read_offline_wandb
from ihlab.compare.study import compare
from ihlab.data import make_family
from ihlab.model import shape_state
from ihlab.runs.checkpoints import load_lab_model
from ihlab.runs.signals import Interrupted
from ihlab.runs.tables import read_metrics, read_step_table
from ihlab.train.members import MemberBatches, member_batch
from ihlab.train.module import LabModule, Member
from ihlab.train.run import build_module, train
from ihlab.train.schema import to_train_config

# batches of 16: members must equal their single runs, which needs no full-size batch
SHORT = (
    "trainer.max_steps=80",
    "trainer.eval_every=20",
    "trainer.score_every=40",
    "data.batch_size=16",
)
FEWSHOT = ("experiment=fewshot_fast", "data.eval_size=100", "data.n_train_classes=100")
RTOL, ATOL = 1e-4, 1e-5


def run(run_dir: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_config(quiet(["trainer.threads=1", *overrides]))
    return train(to_train_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))


def assert_close_runs(member: Path, single: Path, up_to: int | None = None) -> None:
    """Every metrics.csv value (and table row) of a member equals its single run's (at the steps
    up to `up_to`, where the single run went on longer)."""
    last = math.inf if up_to is None else up_to
    a = {int(r["step"]): r for r in read_metrics(member / "metrics.csv") if r["step"] <= last}
    b = {int(r["step"]): r for r in read_metrics(single / "metrics.csv") if r["step"] <= last}
    assert list(a) == list(b)
    for step in a:
        extra = b[step].keys() - a[step].keys()
        if step == up_to:  # the longer run also trained at its step `up_to`; the member stopped
            extra = {k for k in extra if not k.startswith("train/")}
        assert a[step].keys() <= b[step].keys() and not extra, step
        for key, value in a[step].items():
            assert value == pytest.approx(b[step][key], rel=RTOL, abs=ATOL), (step, key)
    for table in ("per_token_loss.csv", "loss_by_position.csv"):
        if (single / table).exists():
            mine, theirs = read_step_table(member / table), read_step_table(single / table)
            rows = theirs[0] <= last
            assert (mine[0] == theirs[0][rows]).all()
            mine_values, their_values = torch.tensor(mine[2]), torch.tensor(theirs[2][rows])
            assert torch.allclose(mine_values, their_values, RTOL, ATOL)


@pytest.fixture(scope="session")
def token_job(shared_runs: SharedRuns) -> Path:
    """The shared reference runs of seeds 0 and 1 (tests/conftest.py: RUN) as one ensemble job."""
    return shared_runs.get("ensemble", *RUN, "seeds=[0,1]")


def assert_member_is_its_single_run(member_dir: Path, single_dir: Path, seed: int) -> None:
    summary = json.loads((member_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert summary["seed"] == seed and summary["status"] == "completed"
    assert summary["learning_time"] == single["learning_time"]
    assert summary["phase_change"]["detected"] == single["phase_change"]["detected"]
    assert_close_runs(member_dir, single_dir)
    resolved = OmegaConf.load(member_dir / ".hydra" / "resolved.yaml")
    assert resolved.seed == seed and resolved.seeds is None  # its single run's config
    weights = load_lab_model(str(member_dir / "checkpoints" / "last.ckpt")).state_dict()
    own = load_lab_model(str(single_dir / "checkpoints" / "last.ckpt"))
    for name, value in own.state_dict().items():  # Adam's normalized step turns last-bit
        assert torch.allclose(weights[name], value, RTOL, 1e-4), name  # gradient noise of
        # near-zero components into weight differences (measured: up to 1.5e-6 with these tests'
        # batches of 16, 1.6e-5 with batches of 64)


def test_each_member_of_a_token_job_matches_its_single_run(
    token_job: Path, reference: Path, reference_seed1: Path
) -> None:
    job = json.loads((token_job / "ensemble.json").read_text())
    assert job["status"] == "completed" and job["seeds"] == [0, 1]
    singles = {0: reference, 1: reference_seed1}
    for member in job["members"]:
        assert_member_is_its_single_run(
            Path(member["run_dir"]), singles[member["seed"]], member["seed"]
        )


@pytest.mark.slow
def test_each_member_of_a_clamped_fewshot_job_matches_its_single_run(tmp_path: Path) -> None:
    overrides = (*SHORT, *FEWSHOT, "clamps=[prev_token,match]", "trainer.eval_unclamped=true")
    job = run(tmp_path / "job", *overrides, "seeds=[0,1,2]")
    assert job["status"] == "completed" and job["seeds"] == [0, 1, 2]
    for seed in (0, 1, 2):
        run(tmp_path / f"single_{seed}", *overrides, f"seed={seed}")
        (member,) = [m for m in job["members"] if m["seed"] == seed]
        assert_member_is_its_single_run(Path(member["run_dir"]), tmp_path / f"single_{seed}", seed)


def test_a_one_seed_job_is_a_job_with_one_member(tmp_path: Path) -> None:
    """seeds=[5] writes what every ensemble job writes (a multirun's report reads ensemble.json),
    not a single run's files one directory too deep."""
    job = run(tmp_path / "job", *SHORT, "model.n_layers=1", "seeds=[5]")
    assert job["status"] == "completed" and job["seeds"] == [5]
    (member,) = job["members"]
    assert json.loads((tmp_path / "job" / "ensemble.json").read_text())["members"] == [member]
    assert Path(member["run_dir"]).parent == tmp_path / "job"
    summary = json.loads((Path(member["run_dir"]) / "summary.json").read_text())
    assert summary["seed"] == 5 and summary["status"] == "completed" and summary["steps"] == 80
    assert not (tmp_path / "job" / "summary.json").exists()


def test_compare_reads_the_members_of_an_ensemble_job(tmp_path: Path, token_job: Path) -> None:
    result = compare([token_job], out=tmp_path / "report")
    assert sorted(v["seed"] for v in result["runs"]) == [0, 1]
    assert result["rows"][0]["n_runs"] == 2


def interrupt_at(step: int, fn):
    training_step = LabModule.training_step

    def signal_at(self, batch, batch_idx):
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, batch, batch_idx)

    LabModule.training_step = signal_at
    try:
        return fn()
    finally:
        LabModule.training_step = training_step


@pytest.mark.slow  # ~10 s: the quick part stays under 3 minutes
def test_a_killed_ensemble_resumes_every_member_identically(
    tmp_path: Path, token_job: Path
) -> None:
    args = (*RUN, "seeds=[0,1]")
    with pytest.raises(Interrupted):
        interrupt_at(49, lambda: run(tmp_path / "cut", *args))
    record = json.loads((tmp_path / "cut" / "ensemble.json").read_text())
    assert record["status"] == "interrupted" and record["steps"] == 50
    for member in ("baseline_s0", "baseline_s1"):
        summary = json.loads((tmp_path / "cut" / member / "summary.json").read_text())
        assert summary["status"] == "interrupted"
    resumed = run(tmp_path / "cut", *args)
    assert resumed["status"] == "completed"
    assert [s["status"] for s in resumed["segments"]] == ["interrupted", "completed"]
    for member in ("baseline_s0", "baseline_s1"):
        for name in ("metrics.csv", "per_token_loss.csv", "loss_by_position.csv"):
            cut = (tmp_path / "cut" / member / name).read_bytes()
            assert cut == (token_job / member / name).read_bytes(), (member, name)
        segments = json.loads((tmp_path / "cut" / member / "summary.json").read_text())["segments"]
        assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 50), (50, 120)]


@pytest.mark.slow
def test_a_diverging_member_stops_alone(tmp_path: Path, monkeypatch, reference: Path) -> None:
    training_step = LabModule.training_step

    def poison_member_1(self, batch, batch_idx):
        if self.global_step == 25:
            with torch.no_grad():
                self.params["unembed__weight"][1, 0, 0] = float("nan")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(LabModule, "training_step", poison_member_1)
    job = run(
        tmp_path / "job", *RUN, "trainer.max_steps=40", "trainer.checkpoint_every=10", "seeds=[0,1]"
    )
    monkeypatch.undo()
    assert job["status"] == "completed"
    assert [m["status"] for m in job["members"]] == ["completed", "diverged"]
    bad = json.loads((tmp_path / "job" / "baseline_s1" / "summary.json").read_text())
    assert bad["divergence"]["step"] == 25 and bad["steps"] == 25
    assert bad["learning_time"]["step"] is None and not bad["phase_change"]["detected"]
    rows = read_metrics(tmp_path / "job" / "baseline_s1" / "metrics.csv")
    assert max(r["step"] for r in rows) == 20  # nothing logged after it diverged
    assert all(math.isfinite(v) for r in rows for v in r.values())
    kept = [
        load_lab_model(str(p)) for p in (tmp_path / "job/baseline_s1/checkpoints").glob("*.ckpt")
    ]
    assert kept and all(torch.isfinite(p).all() for m in kept for p in m.parameters())
    # member 0 trained on as its single run does (the reference's first 40 steps)
    assert_close_runs(tmp_path / "job" / "baseline_s0", reference, up_to=40)


CLAMPED_CONFIGS = {
    "zero": ["clamps=custom", "clamps.custom.site=blocks.0.attn.z", "clamps.custom.heads=[1]"],
    "mean": ["clamps=custom", "clamps.custom.site=blocks.0.attn.z", "clamps.custom.value=mean"],
    "prev_token": ["clamps=prev_token"],
    "match_copy": ["clamps=match_copy"],
    "prev_token_input": ["clamps=subcircuit_a"],
    "ablate_others": ["clamps=one_head", "+named_heads.kept=[2]"],
    "pattern_preserving": [
        "clamps=custom",
        "clamps.custom.site=blocks.0.attn.z",
        "clamps.custom.heads=[0]",
        "clamps.custom.value=pattern_preserving",
    ],
}


@pytest.mark.parametrize("clamp", list(CLAMPED_CONFIGS), ids=list(CLAMPED_CONFIGS))
@pytest.mark.parametrize(
    "model", ["model=singh_2l", "model=mlp_2l model.positional=rope", "model.smeared_keys=true"]
)
def test_every_clamp_and_model_gives_each_member_its_own_forward(clamp: str, model: str) -> None:
    """The forward of a 3-member job on stacked batches equals each seed's own forward (one
    member), for clamp values that need passes, hand-built ones, MLPs, RoPE and smeared keys:
    batched (one vmap, to float noise) and member by member (as evaluation runs on the CPU:
    exactly)."""
    overrides = quiet([*FEWSHOT, *model.split(), *CLAMPED_CONFIGS[clamp]])
    config = to_train_config(compose_config(overrides))
    seeds = [0, 1, 2]
    tasks = [make_family(config.data, s) for s in seeds]
    job = prepared(build_module(config, [Member(s, t) for s, t in zip(seeds, tasks, strict=True)]))
    batch = MemberBatches(tasks).train_batch(3)
    names = ("blocks.1.attn.pattern",)
    logits, cache = job.run(batch, cache=names)
    looped, looped_cache = job.run(batch, cache=names, batched=False)
    for k, seed in enumerate(seeds):
        alone = prepared(build_module(config, [Member(seed, tasks[k])]))
        own, own_cache = alone.run(MemberBatches([tasks[k]]).train_batch(3), cache=names)
        assert torch.allclose(logits[k], own[0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(cache[names[0]][k], own_cache[names[0]][0], rtol=1e-4, atol=1e-5)
        assert torch.equal(looped[k], own[0])
        assert torch.equal(looped_cache[names[0]][k], own_cache[names[0]][0])
        assert torch.equal(member_batch(batch, k)["labels"], tasks[k].train_batch(3)["labels"])


def prepared(module: LabModule) -> LabModule:
    """A module set up as fit would (its probe batch, its mean clamps' reference)."""
    module.prepare(MemberBatches([m.family for m in module.members]))
    return module


@pytest.mark.parametrize("clamp", ["graft", "induction"])
def test_grafts_and_token_clamps_give_each_member_its_own_forward(
    tmp_path: Path, clamp: str
) -> None:
    donor = tmp_path / "donor.ckpt"
    extra = ["clamps=induction"]
    if clamp == "graft":
        extra = ["clamps=graft", f"clamps.graft.checkpoint={donor}"]
        base = to_train_config(compose_config(quiet(["experiment=induction_2l"])))
        task = make_family(base.data, 7)
        module = build_module(base, [Member(7, task)])
        torch.save(
            {
                "global_step": 0,
                "ihlab_model": shape_state(base.model, task.io),
                "state_dict": {f"params.{k}": v.detach() for k, v in module.params.items()},
            },
            donor,
        )
    config = to_train_config(compose_config(quiet(["experiment=induction_2l", *extra])))
    seeds = [0, 1, 2]
    tasks = [make_family(config.data, s) for s in seeds]
    job = prepared(build_module(config, [Member(s, t) for s, t in zip(seeds, tasks, strict=True)]))
    logits, _ = job.run(MemberBatches(tasks).train_batch(2))
    for k, seed in enumerate(seeds):
        alone = prepared(build_module(config, [Member(seed, tasks[k])]))
        own, _ = alone.run(MemberBatches([tasks[k]]).train_batch(2))
        assert torch.allclose(logits[k], own[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_each_member_logs_its_own_wandb_run(tmp_path: Path) -> None:
    overrides = ["trainer.progress_bar=false", "trainer.threads=1", *SHORT]
    cfg = compose_config([*overrides, "trainer.max_steps=40", "seeds=[0,1]"])
    train(to_train_config(cfg), tmp_path, OmegaConf.to_container(cfg, resolve=True))
    ids = set()
    for seed in (0, 1):
        member = tmp_path / f"baseline_s{seed}"
        record = read_offline_wandb(member)
        assert record["run"].display_name == f"induction_2l-baseline-s{seed}"
        assert record["run"].run_group == "induction_2l/baseline"
        logged = {
            row["trainer/global_step"]: row["eval/loss"]
            for row in record["history"]
            if "eval/loss" in row
        }
        rows = {
            r["step"]: r["eval/loss"]
            for r in read_metrics(member / "metrics.csv")
            if "eval/loss" in r
        }
        assert logged == pytest.approx(rows)  # this member's numbers, not the other's
        ids.add(record["run"].run_id)
    assert len(ids) == 2


@pytest.mark.slow
def test_an_ensemble_launched_by_a_sweep_agent_gives_the_agents_run_to_its_first_member(
    tmp_path: Path, monkeypatch
) -> None:
    """A sweep agent sets WANDB_RUN_ID for the one run it starts: the first member is that run
    (it reports to the sweep), the others get runs of their own instead of all claiming it."""
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    overrides = ["trainer.progress_bar=false", "trainer.threads=1", *SHORT]
    cfg = compose_config([*overrides, "trainer.max_steps=20", "seeds=[3,4,5]"])
    train(to_train_config(cfg), tmp_path, OmegaConf.to_container(cfg, resolve=True))
    ids = [read_offline_wandb(tmp_path / f"baseline_s{s}")["run"].run_id for s in (3, 4, 5)]
    assert ids[0] == "agentrun"
    assert len(set(ids)) == 3 and all(len(i) == 8 and i.isalnum() for i in ids[1:])

"""W&B offline, end to end: a run stopped and resumed in its own directory continues its W&B run
(one id, its curves split at the checkpoint, not doubled), a replaced one starts a new W&B run,
and every key ihlab-dashboard's panels read is one that real runs of both task kinds log."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ihlab.apps.dashboard  # noqa: F401  (registers the dashboard schema)
from conftest import SharedRuns, compose_config, read_offline_wandb
from dashboard_keys import panel_keys, report_panels, workspace_panels
from ihlab.apps.hydra_entry import config_dir
from ihlab.runs.ownership import flat
from ihlab.runs.tables import read_metrics
from ihlab.tracking.dashboard import DashboardConfig, build_report, build_workspace
from ihlab.train.module import LabModule
from ihlab.train.run import train
from ihlab.train.schema import to_train_config
from wandb_records import read_records

TOKENS = (
    "data.batch_size=16",  # what W&B receives is the point, not what the model learns
    "trainer.max_steps=60",
    "trainer.eval_every=20",
    "trainer.score_every=20",
    "trainer.checkpoint_every=20",
)
FEWSHOT = (
    "experiment=fewshot_fast",
    "data.eval_size=200",
    "data.n_train_classes=200",
    "trainer.max_steps=40",
    "trainer.eval_every=20",
    "trainer.score_every=20",
)


def train_with_wandb(run_dir: Path, *overrides: str) -> dict[str, Any]:
    cfg = compose_config(["trainer.progress_bar=false", *overrides])  # W&B offline: the default
    return train(to_train_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))


def failed_at(run_dir: Path, step: int, *overrides: str) -> None:
    """Train until an error at `step` fails the run (on_exception.ckpt and summary written).
    A failure, not a signal: a SIGTERM's handler (interrupts.stop_children) also stops wandb's
    service process, a child of the run, and the run then fails in W&B calls instead."""
    training_step = LabModule.training_step

    def fail_at(self: LabModule, batch: Any, batch_idx: int) -> Any:
        if self.global_step == step:
            raise RuntimeError("boom")
        return training_step(self, batch, batch_idx)

    LabModule.training_step = fail_at
    try:
        with pytest.raises(RuntimeError, match="boom"):
            train_with_wandb(run_dir, *overrides)
    finally:
        LabModule.training_step = training_step


def fail_then_resume(run: Path) -> None:
    failed_at(run, 30, *TOKENS)
    assert train_with_wandb(run, *TOKENS)["status"] == "completed"


@pytest.fixture(scope="session")
def resumed(shared_runs: SharedRuns) -> Path:
    """A token run failed at step 30, then rerun in its own directory: resumed to step 60."""
    return shared_runs.build("wandb_tokens", fail_then_resume)


@pytest.fixture(scope="session")
def fewshot(shared_runs: SharedRuns) -> Path:
    return shared_runs.build("wandb_fewshot", lambda run: train_with_wandb(run, *FEWSHOT))


def segments(run_dir: Path) -> list[list[Any]]:
    """The records of each offline W&B run (one per process) under run_dir, oldest first."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    return [list(read_records(f)) for f in files]


def eval_steps(records: list[Any]) -> list[int]:
    steps = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "eval/loss_repeat" in row:
                steps.append(int(json.loads(row["trainer/global_step"])))
    return steps


def test_a_resumed_run_continues_its_wandb_run(resumed: Path) -> None:
    first, second = segments(resumed)
    runs = [
        next(r.run for r in records if r.WhichOneof("record_type") == "run")
        for records in (first, second)
    ]
    run_id = (resumed / "wandb" / "ihlab-run-id").read_text().strip()
    assert runs[0].run_id == runs[1].run_id == run_id
    assert runs[1].display_name == "induction_2l-baseline-s0"
    summary = json.loads((resumed / "summary.json").read_text())
    # a failure's own checkpoint is never resumed: the rerun goes on from the step-20 checkpoint
    assert [(s["from_step"], s["to_step"]) for s in summary["segments"]] == [(0, 30), (20, 60)]
    csv_evals = [int(r["step"]) for r in read_metrics(resumed / "metrics.csv") if "eval/loss" in r]
    # the W&B run holds each evaluation once: before the failure, then from the resume on
    assert eval_steps(first) == [20]
    assert eval_steps(first) + eval_steps(second) == csv_evals


def test_a_replaced_run_starts_a_new_wandb_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "wandb").mkdir(parents=True)
    (run / "wandb" / "ihlab-run-id").write_text("oldrun01\n")
    train_with_wandb(run, "trainer.max_steps=20", "trainer.eval_every=20", "replace=true")
    (records,) = segments(run)
    (record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert record.run_id != "oldrun01"
    assert (run / "wandb" / "ihlab-run-id").read_text().strip() == record.run_id


def logged_keys(records: list[Any]) -> dict[str, set[str]]:
    """What runs logged, by where a panel reads it: history, media, summary, config."""
    keys: dict[str, set[str]] = {"history": set(), "summary": set(), "config": set()}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind == "summary":
            keys["summary"] |= {i.key or "/".join(i.nested_key) for i in record.summary.update}
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            keys["config"] |= set(flat(config))
    keys["media"] = {k.removesuffix("/_type") for k in keys["history"] if k.endswith("/_type")}
    return keys


def test_every_dashboard_panel_reads_a_key_real_runs_log(resumed: Path, fewshot: Path) -> None:
    records = [r for records in segments(resumed) + segments(fewshot) for r in records]
    logged = logged_keys(records)
    assert read_offline_wandb(fewshot)["run"].run_group == "fewshot_fast/baseline"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("dashboard", overrides=["entity=my-team"])  # the shipped defaults
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, DashboardConfig)
    panels = workspace_panels(build_workspace(config)) + report_panels(build_report(config))
    for where, key in panel_keys(panels):
        if where == "regex":
            assert any(re.search(key, k) for k in logged["history"]), key
        else:
            assert key in logged[where], (where, key)

"""Fault injection: kills, signals, retries, reruns, concurrent runs, divergence, hostile and broken
files. Each case checks the status, the message, and that nothing already written was lost.

Exactness of resume is checked against an uninterrupted run with the same config: the resumed
run's metrics.csv and per-example loss table must be byte-identical.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from conftest import RUN, SharedRuns, train_in_process
from ihlab.errors import ConfigError
from ihlab.runs.checkpoints import (
    CheckpointError,
    PeriodicCheckpoint,
    load_checkpoint,
    load_lab_model,
)
from ihlab.runs.ownership import RunDirError, RunLock
from ihlab.runs.signals import Interrupted
from ihlab.runs.summary import write_summary
from ihlab.runs.tables import read_metrics
from ihlab.train.module import LabModule

IHLAB_TRAIN = str(Path(sys.executable).parent / "ihlab-train")
CLI = ["wandb=off", "trainer.progress_bar=false", *RUN]
EXACT = ("metrics.csv", "per_token_loss.csv", "loss_by_position.csv", "loss_pca.csv")


def run_in_process(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return train_in_process(run_dir, *RUN, *overrides)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (its lock left out), path -> bytes."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def assert_same_run(a: Path, b: Path) -> None:
    for name in EXACT:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "IHLAB_OUTPUTS"}
    return subprocess.Popen(
        [IHLAB_TRAIN, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 300):
    """Poll until `condition()` holds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) too early:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def logged_step(run_dir: Path, step: int) -> Callable[[], bool]:
    """Whether metrics.csv on disk has reached `step`."""

    def reached() -> bool:
        try:
            return any(r["step"] >= step for r in read_metrics(run_dir / "metrics.csv"))
        except (OSError, ValueError):
            return False

    return reached


# Signals and kills


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_checkpoints_writes_interrupted_and_exits_as_killed(
    tmp_path: Path, reference: Path, sig: int, name: str, ihlab_train_main
) -> None:
    """SIGTERM to a run logging to W&B (offline, the default: W&B's service runs in a session of
    its own and must survive the run's last words), SIGINT to one without."""
    wandb = ["wandb.mode=offline"] if sig == signal.SIGTERM else ["wandb=off"]
    proc = start([*CLI[1:], *wandb, "hydra.run.dir=run"], cwd=tmp_path)
    run = tmp_path / "run"
    wait_for(logged_step(run, 40), proc)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -sig, output  # died by the signal: a scheduler sees it killed
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary.get("error")
    assert summary["interruption"]["signal"] == name
    stopped = summary["interruption"]["step"]
    assert 40 <= stopped < 120 and summary["steps"] == stopped
    assert load_checkpoint(run / "checkpoints" / "interrupted.ckpt")["global_step"] == stopped
    rows = read_metrics(run / "metrics.csv")
    assert max(r["step"] for r in rows) >= 40
    assert f"hydra.run.dir={run}" in output  # how to resume
    kept = snapshot(run)
    # The retry resumes: the same command and directory, or ckpt_path alone (its run's directory)
    if sig == signal.SIGTERM:
        result = ihlab_train_main([*CLI, "hydra.run.dir=run"], tmp_path)
    else:
        result = ihlab_train_main([*CLI, f"ckpt_path={run}/checkpoints/interrupted.ckpt"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 120
    assert [s["status"] for s in summary["segments"]] == ["interrupted", "completed"]
    assert summary["resumed_from"] == str(run / "checkpoints" / "interrupted.ckpt")
    assert_same_run(run, reference)
    assert (run / "train.log").read_text().count("starting induction_2l-baseline-s0") == 1
    assert kept["checkpoints/interrupted.ckpt"] == snapshot(run)["checkpoints/interrupted.ckpt"]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(
    tmp_path: Path, reference: Path, ihlab_train_main
) -> None:
    proc = start([*CLI, "hydra.run.dir=run"], cwd=tmp_path)
    run = tmp_path / "run"
    wait_for(lambda: (run / "checkpoints" / "step_000050.ckpt").exists(), proc)
    wait_for(logged_step(run, 60), proc)  # metrics.csv is saved at evaluations: 60 steps to go
    proc.kill()
    proc.wait()
    assert not (run / "summary.json").exists()
    assert not list(run.rglob(".*.tmp"))  # no half-written file with a real name
    result = ihlab_train_main([*CLI, "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"].endswith(".ckpt")
    assert_same_run(run, reference)


@pytest.mark.slow  # ~10 s: the quick part stays under 3 minutes
def test_kill_right_after_any_checkpoint_resumes_exactly(
    tmp_path: Path, monkeypatch, reference: Path
) -> None:
    """What a SIGKILL right after a checkpoint write leaves on disk, for every checkpoint."""
    full = json.loads((reference / "summary.json").read_text())
    save = PeriodicCheckpoint.save

    def save_and_copy(self, trainer, name) -> None:
        save(self, trainer, name)
        if name != "last.ckpt":
            copy = tmp_path / f"killed_at_{trainer.global_step}"
            shutil.copytree(self.folder.parent, copy, ignore=shutil.ignore_patterns(".lock"))

    monkeypatch.setattr(PeriodicCheckpoint, "save", save_and_copy)
    run_in_process(tmp_path / "copied")
    monkeypatch.undo()
    killed = sorted(tmp_path.glob("killed_at_*"))
    assert [p.name for p in killed] == ["killed_at_100", "killed_at_50"]  # 100: evaluation step
    for run in killed:
        summary = run_in_process(run)
        assert summary["learning_time"] == full["learning_time"]
        assert_same_run(run, reference)


@pytest.mark.slow  # ~9 s: the quick part stays under 3 minutes
def test_signals_at_every_kind_of_step_resume_exactly(
    tmp_path: Path, monkeypatch, reference: Path
) -> None:
    """One run stopped by SIGTERM in turn before an evaluation (19), on one (20), before a
    checkpoint (49), before an evaluation that is also a checkpoint (99) and on the last step
    (119), resumed after each: each stop comes after the step it struck in, and the run, in six
    segments, equals the uninterrupted one."""
    training_step = LabModule.training_step
    run = tmp_path / "run"
    for step in (19, 20, 49, 99, 119):

        def signal_at(self, batch, batch_idx, step=step):
            if self.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return training_step(self, batch, batch_idx)

        monkeypatch.setattr(LabModule, "training_step", signal_at)
        with pytest.raises(Interrupted) as info:
            run_in_process(run)
        assert info.value.step == step + 1  # stops after the step it was in
        interrupted = json.loads((run / "summary.json").read_text())
        assert interrupted["status"] == "interrupted" and interrupted["steps"] == step + 1
    monkeypatch.undo()
    summary = run_in_process(run)
    assert summary["status"] == "completed"
    assert [s["to_step"] for s in summary["segments"]] == [20, 21, 50, 100, 120, 120]
    assert_same_run(run, reference)


@pytest.mark.slow
def test_sigterm_mid_multirun_stops_it_and_a_retry_finishes_only_what_is_left(
    tmp_path: Path, ihlab_train_main
) -> None:
    args = ["-m", "seed=0,1,2", *CLI, "hydra.sweep.dir=sweep"]
    proc = start(args, cwd=tmp_path)
    sweep = tmp_path / "sweep"
    wait_for(logged_step(sweep / "1_baseline_s1", 40), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM, output
    assert f"hydra.sweep.dir={sweep}" in output
    status = {
        p.name: json.loads((p / "summary.json").read_text())["status"]
        for p in sorted(sweep.glob("*_s*"))
        if (p / "summary.json").exists()
    }
    assert status == {"0_baseline_s0": "completed", "1_baseline_s1": "interrupted"}
    assert not (sweep / "2_baseline_s2").exists()
    finished = snapshot(sweep / "0_baseline_s0")
    result = ihlab_train_main(args, tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("0_baseline_s0", "1_baseline_s1", "2_baseline_s2"):
        assert json.loads((sweep / name / "summary.json").read_text())["status"] == "completed"
    assert snapshot(sweep / "0_baseline_s0") == finished  # skipped, untouched
    segments = json.loads((sweep / "1_baseline_s1" / "summary.json").read_text())["segments"]
    assert [s["status"] for s in segments] == ["interrupted", "completed"]


@pytest.mark.slow
def test_killing_a_parallel_multirun_stops_its_workers(tmp_path: Path, ihlab_train_main) -> None:
    # Batches of 64 (RUN's are 16): both jobs must still be training when the signal lands, and
    # the two workers may start their jobs seconds apart.
    cli = ["data.batch_size=64" if a.startswith("data.batch_size=") else a for a in CLI]
    args = ["-m", "launcher=parallel", "seed=0,1", *cli, "hydra.sweep.dir=sweep"]
    proc = start(args, cwd=tmp_path)
    sweep = tmp_path / "sweep"
    wait_for(lambda: all(logged_step(sweep / f"{i}_baseline_s{i}", 20)() for i in (0, 1)), proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM, output
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive  # no worker keeps training
    for i in (0, 1):
        summary = json.loads((sweep / f"{i}_baseline_s{i}" / "summary.json").read_text())
        assert summary["status"] == "interrupted"
    # The retry resumes both jobs in this process: a resume does not depend on the launcher, and
    # a pool here would start two more processes, each importing torch and Lightning again.
    retry = [a.replace("launcher=parallel", "launcher=local") for a in args]
    result = ihlab_train_main(retry, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 of 2 jobs completed" in result.stderr
    for i in (0, 1):
        summary = json.loads((sweep / f"{i}_baseline_s{i}" / "summary.json").read_text())
        assert summary["status"] == "completed" and len(summary["segments"]) == 2


POOL_WORKERS = """
import os, signal, sys, time
from pathlib import Path
from joblib.externals.loky import get_reusable_executor
from ihlab.runs.signals import stop_children

def stops_at_once(folder):
    Path(folder, f"ready-{os.getpid()}").touch()
    time.sleep(60)

def stops_after_its_bookkeeping(folder):
    def handle(signum, frame):
        time.sleep(1.0)
        Path(folder, "bookkept").touch()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    signal.signal(signal.SIGTERM, handle)
    Path(folder, f"ready-{os.getpid()}").touch()
    time.sleep(60)

folder = sys.argv[1]
pool = get_reusable_executor(max_workers=2)
jobs = [pool.submit(stops_at_once, folder), pool.submit(stops_after_its_bookkeeping, folder)]
while len(list(Path(folder).glob("ready-*"))) < 2:
    time.sleep(0.05)
stop_children(signal.SIGTERM)
"""


@pytest.mark.slow
def test_a_pool_worker_that_stops_first_does_not_get_the_others_killed(tmp_path: Path) -> None:
    """joblib's pool kills all its workers when one exits; the multirun's SIGTERM handler must
    hold it off until every worker has finished its bookkeeping. Deterministic form of the race
    the parallel-multirun test above can lose: one worker exits at once, the other a second
    later, after writing its file."""
    script = tmp_path / "pool.py"
    script.write_text(POOL_WORKERS)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("ready-*"))) == 2
    assert (tmp_path / "bookkept").exists()


@pytest.mark.slow
def test_slurm_preemption_requeues_through_submitit_and_resumes(
    tmp_path: Path, reference: Path, reference_seed1: Path
) -> None:
    """A multirun of two seeds through launcher=submitit_local (the SLURM route on this
    machine), in its default dated sweep folder (resolved the same in submitit's job processes),
    one job preempted by submitit's signal (USR2): that job checkpoints, writes its summary, is
    requeued and resumes; the other job is untouched. Both equal their uninterrupted runs."""
    args = ["-m", "launcher=submitit_local", "seed=0,1", *CLI]
    proc = start(args, cwd=tmp_path)
    studies = tmp_path / "outputs" / "multirun" / "induction_2l"
    wait_for(lambda: any(logged_step(p, 40)() for p in studies.glob("*/0_baseline_s0")), proc)
    (sweep,) = studies.iterdir()
    run = sweep / "0_baseline_s0"
    holder = int((run / ".lock").read_text().split()[1])  # "pid N on HOST since ..."
    job = psutil.Process(holder)
    assert any("_submit" in part for part in job.cmdline())  # submitit's job process
    job.send_signal(signal.SIGUSR2)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "2 of 2 jobs completed" in output
    assert [p.name for p in studies.iterdir()] == [sweep.name]
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_baseline_s0", "1_baseline_s1"]
    assert (sweep / ".submitit").is_dir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [s["status"] for s in summary["segments"]] == ["interrupted", "completed"]
    assert_same_run(run, reference)
    log = (run / "train.log").read_text()
    assert "received SIGUSR2" in log and "resuming induction_2l" in log
    other = sweep / "1_baseline_s1"
    summary = json.loads((other / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["segments"]) == 1
    assert_same_run(other, reference_seed1)
    for name in runs:
        assert (sweep / name / "checkpoints" / "last.ckpt").exists()


# One run per directory


def test_a_rerun_with_another_config_is_refused_and_loses_nothing(
    tmp_path: Path, reference: Path, ihlab_train_main
) -> None:
    run = SharedRuns.copy(reference, tmp_path / "run")
    before = snapshot(run)
    second = ihlab_train_main(
        [*CLI, "hydra.run.dir=run", "seed=5", "trainer.max_steps=20"], tmp_path
    )
    assert second.returncode == 1
    assert "holds another run: its config differs (seed: 0 -> 5)" in second.stderr
    assert "replace=true" in second.stderr
    assert snapshot(run) == before
    again = ihlab_train_main([*CLI, "hydra.run.dir=run"], tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr
    assert snapshot(run) == before


def test_replace_moves_the_old_run_aside_intact(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_in_process(run, "trainer.max_steps=40")
    before = snapshot(run)
    summary = run_in_process(run, "trainer.max_steps=20", "seed=5", "replace=true")
    assert summary["status"] == "completed" and summary["seed"] == 5
    (aside,) = (run / ".replaced").iterdir()
    assert snapshot(aside) == before
    rows = read_metrics(run / "metrics.csv")
    assert max(r["step"] for r in rows) == 20  # nothing of the old run mixed in


def test_resume_never_refuses_a_used_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_in_process(run, "trainer.max_steps=20")
    with pytest.raises(RunDirError, match="already holds a run and resume=never"):
        run_in_process(run, "trainer.max_steps=20", "resume=never")


@pytest.mark.slow
def test_a_second_live_run_in_the_same_directory_is_refused(
    tmp_path: Path, ihlab_train_main
) -> None:
    """A live run holds its directory's lock (an flock, which the kernel releases when its process
    dies); a second start there is refused and touches nothing."""
    run = tmp_path / "run"
    with RunLock(run):  # what a live run holds while it trains
        second = ihlab_train_main([*CLI, "hydra.run.dir=run"], tmp_path)
        assert second.returncode == 1
        assert "is in use by a live run (pid" in second.stderr
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert ihlab_train_main([*CLI, "hydra.run.dir=run"], tmp_path).returncode == 0


@pytest.mark.slow
def test_a_completed_run_can_be_extended_unless_its_schedule_depends_on_length(
    tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    run_in_process(run, "trainer.max_steps=60")
    extended = run_in_process(run)  # to RUN's 120 steps
    assert extended["steps"] == 120 and extended["resumed_from"].endswith("last.ckpt")
    assert_same_run(run, reference)
    cosine = tmp_path / "cosine"
    run_in_process(cosine, "trainer.max_steps=20", "optim.schedule=cosine")
    with pytest.raises(RunDirError, match=r"trainer\.max_steps: 20 -> 40"):
        run_in_process(cosine, "trainer.max_steps=40", "optim.schedule=cosine")


def test_resume_from_a_checkpoint_outside_a_run_or_into_a_used_directory_is_refused(
    tmp_path: Path, reference: Path
) -> None:
    SharedRuns.copy(reference, tmp_path / "a")
    loose = tmp_path / "loose.ckpt"
    shutil.copy(tmp_path / "a" / "checkpoints" / "step_000050.ckpt", loose)
    with pytest.raises(RunDirError, match="not inside a run directory"):
        run_in_process(tmp_path / "b", f"ckpt_path={loose}")
    run_in_process(tmp_path / "c", "seed=3", "trainer.max_steps=20")
    ckpt = tmp_path / "a" / "checkpoints" / "step_000050.ckpt"
    with pytest.raises(RunDirError, match="holds another run"):  # c's own config is seed 3
        run_in_process(tmp_path / "c", f"ckpt_path={ckpt}", "seed=3")
    with pytest.raises(RunDirError, match="is not empty"):
        run_in_process(tmp_path / "c", f"ckpt_path={ckpt}")


@pytest.mark.slow
def test_a_failed_run_resumes_from_its_last_checkpoint_not_its_failure_state(
    tmp_path: Path, monkeypatch, reference: Path
) -> None:
    """The failure checkpoint may be mid-step: resuming from it would shift the evaluations."""
    training_step = LabModule.training_step

    def fail_at_33(self, batch, batch_idx):
        if self.global_step == 33:
            raise RuntimeError("boom at step 33")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(LabModule, "training_step", fail_at_33)
    with pytest.raises(RuntimeError, match="boom"):
        run_in_process(tmp_path / "run", "trainer.checkpoint_every=10")
    monkeypatch.undo()
    failure = tmp_path / "run" / "checkpoints" / "on_exception.ckpt"
    assert load_checkpoint(failure)["global_step"] == 33
    with pytest.raises(CheckpointError, match="for inspection only"):
        run_in_process(tmp_path / "run", "trainer.checkpoint_every=10", f"ckpt_path={failure}")
    summary = run_in_process(tmp_path / "run", "trainer.checkpoint_every=10")
    assert summary["segments"][-1]["from_step"] == 30
    assert_same_run(tmp_path / "run", reference)  # checkpoint_every changes no number


@pytest.mark.slow
def test_a_run_whose_wandb_cannot_start_fails_before_training_naming_why(
    tmp_path: Path,
) -> None:
    """Online W&B without an API key: the writer's error reaches the run before its first step;
    the run ends `failed` with the message, and its summary is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "IHLAB_OUTPUTS"))}
    env.update(HOME=str(tmp_path), WANDB_BASE_URL="http://127.0.0.1:9")  # no key, no server
    args = [*CLI[1:], "wandb.mode=online", "hydra.run.dir=run"]
    result = subprocess.run(
        [IHLAB_TRAIN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "W&B failed" in summary["error"] and "API key" in summary["error"]
    assert summary["steps"] == 0
    assert "API key" in result.stderr


@pytest.mark.slow
def test_a_run_whose_wandb_writer_dies_mid_run_fails_naming_it_and_keeps_its_numbers(
    tmp_path: Path,
) -> None:
    """The W&B writer process killed mid-run: the run's next W&B call raises, the run ends
    `failed` (exit 1) saying why, and metrics.csv keeps every step it trained."""
    proc = start([*CLI[1:], "hydra.run.dir=run", "trainer.max_steps=100000"], cwd=tmp_path)
    run = tmp_path / "run"
    wait_for(logged_step(run, 40), proc)
    (wandb_writer,) = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "ihlab.tracking.wandb_writer" in p.cmdline()
    ]
    wandb_writer.kill()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "RuntimeError: the W&B writer process stopped"
    steps = [r["step"] for r in read_metrics(run / "metrics.csv")]
    assert steps[0] == 0 and max(steps) >= 40
    assert summary["steps"] >= max(steps)


# Divergence


def test_a_diverging_run_stops_with_status_diverged_and_reports_no_phase_change(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    run_in_process(run, "optim.lr=10", "trainer.checkpoint_every=1")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    divergence = summary["divergence"]
    step = divergence["step"]
    assert divergence["loss"] > divergence["limit"] == pytest.approx(10 * math.log(64))
    assert summary["steps"] == step
    assert summary["learning_time"]["step"] is None
    assert summary["phase_change"]["detected"] is False
    assert summary["phase_change"]["reason"] == "the run diverged"
    kept = {load_checkpoint(p)["global_step"]: p for p in (run / "checkpoints").glob("*.ckpt")}
    assert set(kept) == set(range(1, step))  # every checkpoint before the divergence stays
    assert divergence["last_good_checkpoint"] == (str(kept[step - 1]) if step > 1 else None)
    quarantined = [load_checkpoint(p)["global_step"] for p in divergence["quarantined"]]
    assert quarantined and min(quarantined) >= step  # broken weights, out of resume's reach
    again = run_in_process(run, "optim.lr=10", "trainer.checkpoint_every=1")
    assert again == summary  # a finished (diverged) run is not redone


def test_a_nan_loss_stops_the_run_at_that_step(tmp_path: Path, monkeypatch) -> None:
    training_step = LabModule.training_step

    def poison_at_33(self, batch, batch_idx):
        if self.global_step == 33:
            with torch.no_grad():
                self.params["unembed__weight"][0, 0, 0] = float("nan")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(LabModule, "training_step", poison_at_33)
    run_in_process(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 33
    assert summary["divergence"]["step"] == 33 and summary["divergence"]["loss"] is None  # NaN
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert max(r["step"] for r in rows) == 30
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


def test_diverged_cli_run_exits_non_zero_naming_the_step(tmp_path: Path, ihlab_train_main) -> None:
    result = ihlab_train_main([*CLI, "hydra.run.dir=run", "optim.lr=10"], tmp_path)
    assert result.returncode == 1
    assert "the run diverged at step" in result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


# Hostile and broken files


class Payload:
    """Unpickling this runs `touch <path>`: what a crafted checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def crafted_checkpoint(tmp_path: Path, reference: Path) -> tuple[Path, Path]:
    """A run directory whose last.ckpt carries a payload, and the file the payload would make."""
    SharedRuns.copy(reference, tmp_path / "victim")
    ckpt = tmp_path / "victim" / "checkpoints" / "step_000050.ckpt"
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    state["hyper_parameters"] = Payload(marker)
    torch.save(state, ckpt)
    return ckpt, marker


def test_a_crafted_checkpoint_is_refused_everywhere_and_runs_nothing(
    tmp_path: Path, reference: Path
) -> None:
    ckpt, marker = crafted_checkpoint(tmp_path, reference)
    with pytest.raises(CheckpointError, match=r"arbitrary unpickling.*never runs code"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_lab_model(str(ckpt))
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        run_in_process(tmp_path / "resumed", f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError, match="arbitrary unpickling"):
        run_in_process(tmp_path / "grafted", "clamps=graft", f"clamps.graft.checkpoint={ckpt}")
    grafted = json.loads((tmp_path / "grafted" / "summary.json").read_text())
    assert grafted["status"] == "failed" and "arbitrary unpickling" in grafted["error"]
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the file does carry the payload
        torch.load(ckpt, weights_only=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_broken_explicit_checkpoint_fails_clearly_and_writes_nothing(
    tmp_path: Path, reference: Path, damage: str, ihlab_train_main
) -> None:
    SharedRuns.copy(reference, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "step_000050.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"x" * 99}[damage]
    )
    before = snapshot(tmp_path / "run")
    result = ihlab_train_main([*CLI, f"ckpt_path={ckpt}"], tmp_path)
    assert result.returncode == 1
    assert f"checkpoint {ckpt} is corrupt or truncated" in result.stderr
    assert snapshot(tmp_path / "run") == before


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint(tmp_path: Path, reference: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        interrupt_at(run, 110)
    newest = run / "checkpoints" / "interrupted.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    summary = run_in_process(run)
    assert summary["status"] == "completed"
    assert summary["segments"][-1]["from_step"] == 100  # the newest readable checkpoint
    assert_same_run(run, reference)


def interrupt_at(run_dir: Path, step: int) -> None:
    training_step = LabModule.training_step

    def signal_at(self, batch, batch_idx):
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, batch, batch_idx)

    LabModule.training_step = signal_at
    try:
        run_in_process(run_dir)
    finally:
        LabModule.training_step = training_step


# Atomic writes


def test_a_failed_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "summary.json"
    write_summary(path, {"status": "completed", "steps": 10})
    before = path.read_bytes()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", lambda fd: full_disk(None))
    with pytest.raises(OSError, match="No space left"):
        write_summary(path, {"status": "interrupted", "steps": 20})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.slow
def test_an_in_place_resume_keeps_integer_steps_and_one_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        interrupt_at(run, 30)
    run_in_process(run)
    lines = (run / "metrics.csv").read_text().splitlines()
    steps = [line.split(",")[0] for line in lines[1:]]
    assert all(s.isdigit() for s in steps) and steps == sorted(steps, key=int)
    log = (run / "train.log").read_text()
    assert "starting induction_2l-baseline-s0" in log and "resuming induction_2l" in log
    assert "step 120: eval/loss" in log and log.rstrip().endswith("status completed at step 120")

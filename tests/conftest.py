"""Shared fixtures: compose configs the way `ihlab-train` does, train in-process, and the reference
runs every module shares (trained once per session, whatever the number of pytest-xdist workers).

The suite runs on pytest-xdist workers (pyproject.toml: `-n 2`), each on one torch thread: two
processes with two threads each on two cores slow each other down ~40x. `OMP_NUM_THREADS=1` is
set before torch is imported, so every process a test starts (ihlab-train, its multirun workers)
is single-threaded too.
"""

from __future__ import annotations

import csv
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: see the module doc
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Compiled bytecode is kept even where the environment says not to write it: every process a test
# starts (ihlab-train, its multirun workers, ihlab-probe) would otherwise compile the package's
# modules again, ~1 s of each start on this machine.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.run import train
from ihlab.train.schema import TrainConfig, register_configs, to_train_config

torch.set_num_threads(1)
sys.dont_write_bytecode = False  # and in this process: see PYTHONDONTWRITEBYTECODE above
register_configs()

# The token run every module's fault, resume and output tests compare against: evaluations every
# 20 steps and checkpoints every 50, so interruptions land on evaluation steps, checkpoint steps
# and neither. Batches of 16 sequences (induction_2l trains on 64) and 64 evaluation sequences:
# these tests check bookkeeping, not learning, and a run takes ~2.5 s instead of ~7 s, while a
# signal sent at step 40 still has 80 steps (~2 s) to land before the run ends.
RUN = (
    "trainer.max_steps=120",
    "trainer.eval_every=20",
    "trainer.score_every=40",
    "trainer.checkpoint_every=50",
    "trainer.threads=1",
    "data.batch_size=16",
    "data.eval_size=64",
    "data.eval_batch_size=64",
)


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The composed (unvalidated) config for these command-line overrides (`hydra`: with Hydra's
    own node, e.g. its run mode and sweeper)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)


def quiet(overrides: list[str]) -> list[str]:
    """Tests train without W&B (unless they test it) and without a progress bar."""
    return ["wandb=off", "trainer.progress_bar=false", *overrides]


def train_in_process(run_dir: Path, *overrides: str, wandb: bool = False) -> dict[str, Any]:
    """Train one run in this process, composed as `ihlab-train` would compose it."""
    args = ["trainer.progress_bar=false", *overrides] if wandb else quiet(list(overrides))
    cfg = compose_config(args)
    return train(to_train_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder every xdist worker of this session sees (the base temp's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker_id != "master" else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session", autouse=True)
def model_cache(shared_root: Path) -> Path:
    """One cache of dequantized GGUF weights for the session (ihlab-probe's IHLAB_CACHE): the
    first SmolLM2 load writes it, later loads and CLI runs read it; nothing lands in ~/.cache."""
    folder = shared_root / "ihlab-cache"
    folder.mkdir(exist_ok=True)
    os.environ["IHLAB_CACHE"] = str(folder)
    return folder


@dataclass
class SharedRuns:
    """Reference runs trained once per session and read by every module that needs them: the
    first worker to ask trains it (under a file lock), the others wait and reuse it. A test that
    changes a run works on a copy (`copy`)."""

    root: Path

    def get(self, name: str, *overrides: str, wandb: bool = False) -> Path:
        """A run trained in-process with these overrides."""
        return self.build(name, lambda run_dir: train_in_process(run_dir, *overrides, wandb=wandb))

    def get_all(self, runs: dict[str, tuple[str, ...]]) -> dict[str, Path]:
        """Several runs (name: overrides), each worker starting at its own place in the list: two
        workers asking for the same four runs train two each at once, instead of one training all
        four while the other waits on the first lock."""
        names = list(runs)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        start = (int(worker) if worker.isdigit() else 0) * len(names) // 2 % max(len(names), 1)
        for name in names[start:] + names[:start]:
            self.get(name, *runs[name])
        return {name: self.root / name for name in names}

    def build(self, name: str, make: Callable[[Path], object]) -> Path:
        """A folder made by `make(folder)` once per session (a `.done` marker says it is whole)."""
        folder = self.root / name
        with FileLock(str(self.root / f"{name}.lock")):
            if not (self.root / f"{name}.done").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                make(folder)
                (self.root / f"{name}.done").touch()
        return folder

    @staticmethod
    def copy(run_dir: Path, to: Path) -> Path:
        shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(".lock"))
        return to


@pytest.fixture(scope="session")
def shared_runs(shared_root: Path) -> SharedRuns:
    return SharedRuns(shared_root)


@pytest.fixture(scope="session")
def reference(shared_runs: SharedRuns) -> Path:
    """The uninterrupted `RUN` of induction_2l, seed 0: what every resumed run must reproduce."""
    return shared_runs.get("reference", *RUN)


@pytest.fixture(scope="session")
def reference_seed1(shared_runs: SharedRuns) -> Path:
    """The same run with seed 1."""
    return shared_runs.get("reference_seed1", *RUN, "seed=1")


@pytest.fixture(scope="session")
def induction_2l(shared_runs: SharedRuns) -> Path:
    """`ihlab-train experiment=induction_2l` as the README runs it (seed 0, 1500 steps)."""
    return shared_runs.get("induction_2l", "experiment=induction_2l")


@pytest.fixture(scope="session")
def fewshot_fast(shared_runs: SharedRuns) -> Path:
    """`ihlab-train experiment=fewshot_fast` as the README runs it (seed 0, 5000 steps)."""
    return shared_runs.get("fewshot_fast", "experiment=fewshot_fast")


@pytest.fixture
def make_config() -> Callable[..., TrainConfig]:
    def make(*overrides: str) -> TrainConfig:
        return to_train_config(compose_config(quiet(list(overrides))))

    return make


@pytest.fixture
def run_training(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Train in-process into tmp_path/<name> and return the summary."""

    def run(*overrides: str, name: str = "run", wandb: bool = False) -> dict[str, Any]:
        return train_in_process(tmp_path / name, *overrides, wandb=wandb)

    return run


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def app_runner(
    main: Callable[[], object],
    program: str,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[list[str], Path], CliResult]:
    """`PROGRAM ARGS` run in this process from `cwd` (the app's `main`, as its console script
    calls it, minus the process boundary; outputs under `cwd`): the exit status, and what it
    printed. For the tests of what a command prints and returns; signals and launchers need
    real processes."""

    def run(args: list[str], cwd: Path) -> CliResult:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [program, *args])
        monkeypatch.delenv("IHLAB_OUTPUTS", raising=False)
        capfd.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
                code = 1
            else:
                code = exit_.code or 0
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def ihlab_train_main(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str], Path], CliResult]:
    """`ihlab-train ARGS` in this process (`app_runner`; the console script also starts the W&B
    writer early, which this leaves to the run)."""
    from ihlab.apps.train import main

    return app_runner(main, "ihlab-train", capfd, monkeypatch)


@pytest.fixture
def ihlab_probe_main(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str], Path], CliResult]:
    """`ihlab-probe ARGS` in this process (`app_runner`)."""
    from ihlab.apps.probe import main

    return app_runner(main, "ihlab-probe", capfd, monkeypatch)


def read_offline_wandb(run_dir: Path) -> dict[str, Any]:
    """History, summary, config (the run's and later updates) and file names of the one offline
    W&B run under run_dir, read from its `.wandb` file (tests/wandb_records.py says why not
    through wandb)."""
    import json

    from wandb_records import read_records

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "files": [], "run": None}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
        elif kind == "run":
            out["run"] = record.run
            config = record.run.config.update
            out["config"].update({key(i): json.loads(i.value_json) for i in config})
    return out


# Reading a run's metrics.csv in tests


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as rows of floats (empty cells left out), read with the csv module."""
    with (run_dir / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def curve(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), r[key]) for r in rows if key in r]


def heads(row: dict[str, float], score: str) -> list[float]:
    """Every head's `score` in a row, e.g. score="prefix_matching/L1"."""
    return [v for k, v in row.items() if k.startswith(f"heads/{score}")]


def first_below(points: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, value in points if value < threshold), None)


# Session runs that take a minute to train: the first test to ask for one trains it.
LONG_SHARED_RUNS = ("induction_2l", "fewshot_fast")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort, the same order on every xdist worker): the long ones start
    while the other worker has short ones to take, instead of one of them ending the session
    alone on one core while the other core idles. Before them, one test per long shared run:
    the two workers train those runs side by side at the start, and the other tests that read
    them find them done instead of waiting a minute on the lock."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    firsts = (next((i for i in slow if name in i.fixturenames), None) for name in LONG_SHARED_RUNS)
    builders = {id(item) for item in firsts if item is not None}
    items.sort(key=lambda item: (not item.get_closest_marker("slow"), id(item) not in builders))

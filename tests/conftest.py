"""Shared fixtures: compose configs the way `ihlab-train` does, and train in-process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ihlab.apps.hydra_entry import config_dir
from ihlab.train.run import train
from ihlab.train.schema import TrainConfig, register_configs, to_train_config

os.environ.setdefault("WANDB_SILENT", "true")
register_configs()


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of dequantized GGUF weights for the session (ihlab-probe's IHLAB_CACHE): the
    first SmolLM2 load writes it, later loads and CLI runs read it; nothing lands in ~/.cache."""
    folder = tmp_path_factory.mktemp("ihlab-cache")
    os.environ["IHLAB_CACHE"] = str(folder)
    return folder


def compose_config(overrides: list[str]) -> DictConfig:
    """The composed (unvalidated) config for these command-line overrides."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def quiet(overrides: list[str]) -> list[str]:
    """Tests train without W&B (unless they test it) and without a progress bar."""
    return ["wandb=off", "trainer.progress_bar=false", *overrides]


@pytest.fixture
def make_config() -> Callable[..., TrainConfig]:
    def make(*overrides: str) -> TrainConfig:
        return to_train_config(compose_config(quiet(list(overrides))))

    return make


@pytest.fixture
def run_training(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Train in-process into tmp_path/<name> and return the summary."""

    def run(*overrides: str, name: str = "run", wandb: bool = False) -> dict[str, Any]:
        args = list(overrides) if wandb else quiet(list(overrides))
        if wandb:
            args = ["trainer.progress_bar=false", *args]
        cfg = compose_config(args)
        run_dir = tmp_path / name
        return train(to_train_config(cfg), run_dir, OmegaConf.to_container(cfg, resolve=True))

    return run


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

"""What a dissection will do, checked before any model is evaluated: the runs (run directories,
the members of seed-ensemble jobs, the jobs of multirun folders), each run's config, the
checkpoints chosen, the interventions and the splits. Every bad input fails here with a
ConfigError naming it: a folder with no run, a run without checkpoints, a missing step, a
checkpoint of another experiment, an intervention a site cannot take, a split the data lacks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihlab.clamps.checks import check_clamps
from ihlab.data import make_family
from ihlab.data.base import DataFamily
from ihlab.dissect.spec import Checkpoints, DissectConfig, Intervention, generated
from ihlab.errors import ConfigError
from ihlab.model import from_shape_state
from ihlab.runs.checkpoints import CheckpointError, load_checkpoint
from ihlab.runs.discovery import find_runs, is_run_dir
from ihlab.runs.files import DIVERGED, FAILURE, RunFiles
from ihlab.runs.summary import UnreadableRecord, read_summary
from ihlab.train.schema import TrainConfig, read_run_config


@dataclass
class RunPlan:
    """One run to dissect: where it is, its name in the tables, its config and data family, the
    chosen checkpoints by step, its record (for its phase change), the interventions, the
    splits."""

    path: Path
    name: str
    config: TrainConfig
    family: DataFamily
    checkpoints: dict[int, Path]
    record: dict[str, Any]
    interventions: list[Intervention]
    splits: list[str]

    @property
    def condition(self) -> str:
        return f"{self.config.name}/{self.config.condition}"


def run_checkpoints(run: Path) -> dict[int, Path]:
    """Every checkpoint of a run by step (`step_*.ckpt` first; `last.ckpt` or `interrupted.ckpt`
    for a step no periodic one has); not the failure state or the diverged ones. An unreadable
    one (truncated, corrupt) is refused, named, rather than skipped: a dissection across training
    would silently lose that step, and a file that the lab's atomic writes cannot leave half
    written means the folder was damaged, which the user should know before trusting the rest."""
    found: dict[int, Path] = {}
    folder = RunFiles(run).checkpoints
    paths = sorted(folder.glob("step_*.ckpt")) + sorted(
        p for p in folder.glob("*.ckpt") if not p.name.startswith("step_")
    )
    for path in paths:
        if path.name == FAILURE or path.parent.name == DIVERGED:
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:  # atomic writes never leave one: the folder was damaged
            raise ConfigError(
                f"runs: {err} Fix: move it out of {folder} (its step is then not dissected), or "
                "leave the run out of runs."
            ) from None
        found.setdefault(int(state["global_step"]), path)
    return dict(sorted(found.items()))


def chosen_steps(config: DissectConfig, run: Path, available: dict[int, Path]) -> dict[int, Path]:
    if not available:
        raise ConfigError(
            f"runs: {run} has no checkpoints, so there is nothing to dissect. Fix: train it with "
            "checkpoints (trainer.checkpoint_every=N), or leave it out of runs."
        )
    if config.steps is not None:
        missing = [s for s in config.steps if s not in available]
        if missing:
            raise ConfigError(
                f"steps: {run} has no checkpoint at step(s) {missing}; it has {list(available)}. "
                "Fix: choose among them, or checkpoints=all."
            )
        return {s: available[s] for s in config.steps}
    if config.checkpoints == Checkpoints.last:
        last = max(available)
        return {last: available[last]}
    return available


def check_checkpoint(path: Path, config: TrainConfig, family: DataFamily) -> None:
    """The checkpoint holds this run's model: its shape and the data's sizes are the run's."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"runs: {err}") from None
    if "ihlab_model" not in state:
        raise ConfigError(f"runs: {path} was not written by ihlab-train (no model config in it).")
    model, io = from_shape_state(state["ihlab_model"])
    if model != config.model or io != family.io:
        raise ConfigError(
            f"runs: checkpoint {path} is another experiment's: its model {model} and data sizes "
            f"{io} differ from its run's config ({config.model}, {family.io}). Fix: keep every "
            "run's checkpoints in its own checkpoints/ folder."
        )


def plan_runs(config: DissectConfig) -> list[RunPlan]:
    """Every run and what to do with it; ConfigError for bad input, before any evaluation."""
    try:
        paths = find_runs(config.runs)
    except ValueError as err:
        raise ConfigError(f"runs: {err}") from None
    if not paths:
        raise ConfigError(
            f"runs={config.runs}: no run directory (summary.json or metrics.csv) there or one or "
            "two levels below. Fix: give run directories, seed-ensemble jobs or multirun folders."
        )
    plans = []
    for path in paths:
        run_config = read_run_config(path)
        family = make_family(run_config.data, run_config.seed)
        checkpoints = chosen_steps(config, path, run_checkpoints(path))
        for ckpt in checkpoints.values():
            check_checkpoint(ckpt, run_config, family)
        interventions = generated(config, run_config.model)
        for i in interventions:
            section = "interventions" if i.family == "clamp" else f"dissect[{i.name}]"
            check_clamps(i.clamps, run_config.model, run_config.data, section)
        splits = list(config.splits) if config.splits is not None else list(family.eval_splits)
        unknown = [s for s in splits if s not in family.eval_splits]
        if unknown:
            raise ConfigError(
                f"splits: {unknown} are not evaluation splits of {path}'s data; it has "
                f"{list(family.eval_splits)}."
            )
        try:
            record = read_summary(RunFiles(path).summary) or {}
        except UnreadableRecord:
            record = {}
        plans.append(
            RunPlan(path, path.name, run_config, family, checkpoints, record, interventions, splits)
        )
    names = [p.name for p in plans]
    for p in plans:  # two runs of one name (members of different jobs): name them by their path
        if names.count(p.name) > 1:
            p.name = f"{p.path.parent.name}/{p.path.name}"
    return plans


def default_out(config: DissectConfig) -> Path:
    """`out`, else the first folder of `runs` that is not itself a run, else the current one."""
    if config.out is not None:
        return Path(config.out)
    folders = [Path(p) for p in config.runs if not is_run_dir(Path(p))]
    return folders[0] if folders else Path.cwd()

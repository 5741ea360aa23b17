"""Every W&B sweep file launches: it is a well-formed grid sweep of project ihlab, and every grid
point's command line, built the way `wandb agent` builds it, composes through Hydra into a valid
online run on one thread, with its own W&B name and its condition's group.

W&B's JSON-schema check of sweep files lives in its `sweeps` package, which pins numpy<2 and would
downgrade the lab's numpy, so it is not installed; the server applies it on `wandb sweep`. Here the
files are checked against the documented grid-sweep shape, and the command lines come from the
installed wandb's own agent code (`create_sweep_command_args`, the `${...}` macros)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from conftest import compose_config
from ihlab.tracking.wandb_run import WandbMode
from ihlab.train.schema import to_train_config

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))
TOP_KEYS = {"program", "project", "entity", "name", "description", "method", "metric"}
TOP_KEYS |= {"parameters", "command", "early_terminate", "run_cap"}


def load(path: Path) -> dict[str, Any]:
    sweep = yaml.safe_load(path.read_text())
    assert isinstance(sweep, dict)
    return sweep


def grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values (a `value` is a one-value list)."""
    params = sweep["parameters"]
    names = list(params)
    choices = [
        params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names
    ]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def agent_argv(sweep: dict[str, Any], point: dict[str, Any]) -> list[str]:
    """The command `wandb agent` runs for one grid point (wandb_agent.Agent._command_run)."""
    command = {"args": {k: {"value": v} for k, v in point.items()}, "program": sweep["program"]}
    macros = create_sweep_command_args(command)
    macros["program"] = [sweep["program"]]
    argv: list[str] = []
    for item in create_sweep_command(list(sweep["command"])):
        item = str(item)
        is_macro = item.startswith("${") and item.endswith("}")
        argv += (macros.get(item[2:-1]) or []) if is_macro else [item]
    return argv


def test_there_are_sweep_files() -> None:
    assert [p.name for p in SWEEPS] == [
        "data_dependence.yaml",
        "singh_clamps.yaml",
        "singh_fig4b.yaml",
        "singh_fig5b.yaml",
        "singh_fig6_classes.yaml",
        "singh_fig6_labels.yaml",
        "singh_scaling.yaml",
        "smeared_vs_plain.yaml",
    ]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_a_sweep_file_is_a_grid_sweep_of_project_ihlab(path: Path) -> None:
    sweep = load(path)
    assert set(sweep) <= TOP_KEYS, set(sweep) - TOP_KEYS
    assert sweep["project"] == "ihlab" and sweep["program"] == "ihlab-train"
    assert sweep["method"] == "grid"
    assert sweep["metric"]["goal"] in ("minimize", "maximize") and sweep["metric"]["name"]
    for name, spec in sweep["parameters"].items():
        assert set(spec) in ({"values"}, {"value"}), name
        assert "values" not in spec or (isinstance(spec["values"], list) and spec["values"])
    assert sweep["command"][0] == "${program}" and sweep["command"][-1] == "${args_no_hyphens}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_grid_point_composes_into_its_own_online_run(path: Path) -> None:
    sweep = load(path)
    points = grid(sweep)
    names, groups = [], {}
    for point in points:
        argv = agent_argv(sweep, point)
        assert argv[0] == "ihlab-train"
        cfg = compose_config(argv[1:], hydra=True)
        # None: RUN without -m; a study experiment (a multirun by itself) is told RUN
        assert cfg.hydra.mode in (None, RunMode.RUN)
        with open_dict(cfg):
            del cfg["hydra"]  # what ihlab-train validates: the job's config
        config = to_train_config(cfg)  # every value checked, as before any work
        for key, value in point.items():
            if key not in ("experiment", "clamps"):  # config groups, not keys
                assert OmegaConf.select(cfg, key) == value, key
        assert config.wandb.mode == WandbMode.online and config.wandb.project == "ihlab"
        assert config.trainer.threads == 1
        names.append(config.run_name)
        condition = tuple((k, str(v)) for k, v in point.items() if k != "seed")
        groups.setdefault(config.group, set()).add(condition)
    assert len(set(names)) == len(points)  # every run its own W&B name
    # one group per condition: the seeds of a condition together, conditions apart
    assert all(len(conditions) == 1 for conditions in groups.values())
    conditions = {tuple((k, str(v)) for k, v in p.items() if k != "seed") for p in points}
    assert len(groups) == len(conditions)

"""ihlab-dashboard builds its workspace and report offline from conf/dashboard.yaml: the panels the
config asks for, on the step axis, runs grouped by their W&B group. That every key is one real runs
log: tests/integration/test_wandb.py."""

from __future__ import annotations

import pytest
import wandb_workspaces.reports.v2 as wr
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import ihlab.apps.dashboard  # noqa: F401  (registers the dashboard schema)
from dashboard_keys import panel_keys, report_panels, workspace_panels
from ihlab.apps.hydra_entry import config_dir
from ihlab.tracking.dashboard import DashboardConfig, build_report, build_workspace


@pytest.fixture(scope="module")
def config() -> DashboardConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("dashboard", overrides=["entity=my-team", "config_keys=[condition,seed]"])
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, DashboardConfig)
    return config


def expected_keys(config: DashboardConfig) -> list[tuple[str, str]]:
    """The keys the config asks for, in panel order, written out independently of dashboard.py."""
    keys: list[tuple[str, str]] = []
    for curve in config.curves:
        keys += [("history", "trainer/global_step"), ("history", curve)]
    for score in config.head_scores:
        keys += [("history", "trainer/global_step"), ("regex", f"^heads/{score}/L[0-9]+H[0-9]+$")]
    keys += [("media", m) for m in config.media]
    columns = [("config", k) for k in config.config_keys] + [("summary", s) for s in config.summary]
    keys += columns
    for s in config.summary:
        for k in config.config_keys:
            keys += [("config", k), ("summary", s)]
    return keys


def test_the_config_file_composes_with_its_defaults(config: DashboardConfig) -> None:
    assert (config.entity, config.project) == ("my-team", "ihlab")
    assert config.curves == ["eval/train/loss", "eval/loss_repeat", "eval/icl_score"]
    assert config.summary == ["learning_time", "phase_change/onset"]


def test_the_workspace_holds_the_panels_the_config_asks_for(config: DashboardConfig) -> None:
    workspace = build_workspace(config)
    assert (workspace.entity, workspace.project, workspace.name) == (
        "my-team",
        "ihlab",
        "ihlab: phase changes",
    )
    assert list(panel_keys(workspace_panels(workspace))) == expected_keys(config)
    spec = workspace._to_model().model_dump(by_alias=True, exclude_none=True)  # offline
    assert spec["spec"]["section"]["runSets"][0]["grouping"] == [
        {"section": "run", "name": "group"}
    ]
    settings = spec["spec"]["section"]["settings"]
    assert (settings["xAxis"], settings["maxRuns"]) == ("trainer/global_step", 100)
    curves = workspace.sections[0].panels
    assert [(p.groupby_aggfunc, p.groupby_rangefunc, p.aggregate) for p in curves] == [
        ("mean", "stddev", True)
    ] * len(config.curves)
    heads = [p for p in workspace.sections[1].panels if isinstance(p, wr.LinePlot)]
    assert [p.aggregate for p in heads] == [False] * len(config.head_scores)


def test_the_report_holds_the_same_panels_over_grouped_runs(config: DashboardConfig) -> None:
    report = build_report(config)
    assert (report.entity, report.project, report.title) == ("my-team", "ihlab", config.name)
    assert list(panel_keys(report_panels(report))) == expected_keys(config)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert [rs.groupby for grid in grids for rs in grid.runsets] == [["group"]] * len(grids)

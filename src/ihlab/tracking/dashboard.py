"""The W&B workspace and report for watching phase changes, as code (`ihlab-dashboard`,
ihlab.apps.dashboard).

Builds, with wandb-workspaces (`pip install "ihlab[dashboard]"`), a workspace and a report of the
same panels over the project's runs, grouped by their W&B group (`<experiment>/<condition>`):
- the learning curves (`curves`: the learning-time metrics and the ICL score) on the optimizer-step
  axis, mean per condition with a +-1 s.d. band over seeds;
- every head's score over steps, one panel per score (`head_scores`), runs not pooled (head LxHy
  of one seed is not that of another), and the media (`media`: head-score heatmaps and loss by
  position, with a step slider);
- learning time and phase-change onset (`summary`) against `config_keys`: a parallel-coordinates
  panel and one scatter per pair.
Then saves both to W&B (this needs `wandb login` and the network; nothing else here does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ihlab.sites import head_key_regex
from ihlab.tracking.wandb_writer import STEP_KEY as STEP  # every metric's x-axis

GROUP = "Group"  # the W&B run group: <experiment>/<condition>
MAX_RUNS = 100  # runs (or groups) a panel draws; W&B's default, 10, is less than a sweep


@dataclass
class DashboardConfig:
    entity: str = MISSING  # W&B user or team that owns the project
    project: str = "ihlab"
    name: str = "ihlab: phase changes"  # the workspace's name and the report's title
    curves: list[str] = field(default_factory=list)  # history keys: mean +- s.d. per condition
    head_scores: list[str] = field(default_factory=list)  # scores logged as heads/<score>/LxHy
    media: list[str] = field(default_factory=list)  # image keys (a step slider each)
    summary: list[str] = field(default_factory=list)  # run-summary keys against config_keys
    config_keys: list[str] = field(default_factory=list)  # dotted keys of the resolved config


def _wr() -> Any:
    """wandb_workspaces.reports.v2 (the panels and reports), imported when first needed."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as err:
        raise ImportError(
            'ihlab-dashboard needs wandb-workspaces: pip install "ihlab[dashboard]"'
        ) from err
    return wr


def curve_panels(config: DashboardConfig) -> list[Any]:
    """One line panel per learning curve: the mean per group with a +-1 s.d. band."""
    wr = _wr()
    return [
        wr.LinePlot(
            title=f"{key}: mean +- s.d. over seeds",
            x=STEP,
            y=[key],
            groupby=GROUP,
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
            aggregate=True,
        )
        for key in config.curves
    ]


def head_panels(config: DashboardConfig) -> list[Any]:
    """One line panel per head score (every head, every run), then one media panel per key."""
    wr = _wr()
    lines = [
        wr.LinePlot(
            title=f"{score} score of every head",
            x=STEP,
            metric_regex=head_key_regex(score),
            aggregate=False,
        )
        for score in config.head_scores
    ]
    media = [
        wr.MediaBrowser(title=key, media_keys=[key], gallery_axis="step") for key in config.media
    ]
    return lines + media


def onset_panels(config: DashboardConfig) -> list[Any]:
    """Learning time and phase-change onset against the config keys: parallel coordinates over
    all of them, and one scatter per (config key, summary key)."""
    wr = _wr()
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in config.config_keys]
    columns += [
        wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(s)) for s in config.summary
    ]
    scatters = [
        wr.ScatterPlot(title=f"{s} against {k}", x=wr.Config(k), y=wr.SummaryMetric(s))
        for s in config.summary
        for k in config.config_keys
    ]
    title = "learning time and onset by config"
    return [wr.ParallelCoordinatesPlot(title=title, columns=columns), *scatters]


SECTIONS = {
    "Learning curves by condition": curve_panels,
    "Head scores": head_panels,
    "Learning time and phase-change onset": onset_panels,
}


def build_workspace(config: DashboardConfig) -> Any:
    """The workspace (not saved): the sections above, runs grouped by their W&B group, the
    step axis everywhere, up to MAX_RUNS runs per panel, the summary keys pinned in the runs
    table."""
    _wr()
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    return ws.Workspace(
        entity=config.entity,
        project=config.project,
        name=config.name,
        sections=[
            ws.Section(name=name, panels=panels(config), is_open=True)
            for name, panels in SECTIONS.items()
        ],
        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=MAX_RUNS),
        runset_settings=ws.RunsetSettings(
            groupby=[expr.Metric(GROUP)],
            pinned_columns=["run:displayName", *(f"summary:{s}" for s in config.summary)],
        ),
    )


def build_report(config: DashboardConfig) -> Any:
    """The report (not saved): the same sections, each a panel grid over the project's runs
    grouped by their W&B group."""
    wr = _wr()
    blocks: list[Any] = [
        wr.P(
            "Runs grouped by <experiment>/<condition>; x-axis: optimizer steps. Made by "
            "ihlab-dashboard."
        )
    ]
    for name, panels in SECTIONS.items():
        runset = wr.Runset(entity=config.entity, project=config.project, groupby=["group"])
        blocks += [wr.H2(name), wr.PanelGrid(runsets=[runset], panels=panels(config))]
    return wr.Report(entity=config.entity, project=config.project, title=config.name, blocks=blocks)

"""The W&B keys a dashboard's panels read, as (where, key) pairs, walked from the panel objects:
("history", key), ("regex", pattern over history keys), ("media", image key), ("summary", key),
("config", dotted key)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import wandb_workspaces.reports.v2 as wr


def metric_key(metric: Any) -> tuple[str, str]:
    if isinstance(metric, wr.Config):
        return "config", metric.name
    if isinstance(metric, wr.SummaryMetric):
        return "summary", metric.name
    raise AssertionError(f"unexpected metric {metric!r}")


def panel_keys(panels: Iterable[Any]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        if isinstance(panel, wr.LinePlot):
            yield "history", panel.x
            yield from (("history", y) for y in panel.y)
            if panel.metric_regex:
                yield "regex", panel.metric_regex
        elif isinstance(panel, wr.MediaBrowser):
            yield from (("media", key) for key in panel.media_keys)
        elif isinstance(panel, wr.ParallelCoordinatesPlot):
            yield from (metric_key(column.metric) for column in panel.columns)
        elif isinstance(panel, wr.ScatterPlot):
            yield metric_key(panel.x)
            yield metric_key(panel.y)
        else:
            raise AssertionError(f"unexpected panel {panel!r}")


def workspace_panels(workspace: Any) -> list[Any]:
    return [panel for section in workspace.sections for panel in section.panels]


def report_panels(report: Any) -> list[Any]:
    return [p for block in report.blocks if isinstance(block, wr.PanelGrid) for p in block.panels]

"""A dissection's figures:
- `attribution.png` (Olsson et al.'s per-head attribution across training): per condition, the
  change of the chosen metric when each head is ablated alone (rows) at every dissected step
  (columns), the runs' phase change (median onset and end over seeds) marked;
- `progress.png` (Singh et al.'s progress measures): per condition, the metric of the intact
  model and under each evaluation-time clamp against the step;
- `wiring.png`: the wiring matrices (tables.wiring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ihlab.dissect.evaluate import INTACT


def _blank(path: Path, text: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attribution(
    path: Path,
    seed_rows: Sequence[Mapping[str, Any]],
    family: str,
    metric: str,
    split: str,
    phases: Mapping[str, tuple[float, float]],
) -> None:
    """attribution.png: one panel per condition (rows: heads, columns: steps)."""
    conditions = list(dict.fromkeys(r["condition"] for r in seed_rows if r["family"] == family))
    if not conditions:
        _blank(path, f"no {family} interventions")
        return
    fig, axes = plt.subplots(
        1, len(conditions), figsize=(6 * len(conditions), 4.5), squeeze=False, layout="constrained"
    )
    for ax, condition in zip(axes[0], conditions, strict=True):
        mine = [
            r
            for r in seed_rows
            if r["condition"] == condition
            and r["family"] == family
            and r["metric"] == metric
            and r["split"] == split
        ]
        steps = sorted({r["step"] for r in mine})
        heads = sorted({(r["layer"], r["head"], r["intervention"]) for r in mine})
        grid = np.full((len(heads), len(steps)), np.nan)
        for r in mine:
            grid[
                heads.index((r["layer"], r["head"], r["intervention"])), steps.index(r["step"])
            ] = r["change"]
        top = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-top, vmax=top)
        ax.set_yticks(range(len(heads)), [h[2].split()[0] for h in heads], fontsize=7)
        ticks = range(0, len(steps), max(1, len(steps) // 10))
        ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks], fontsize=7, rotation=45)
        if condition in phases and steps:
            for at, style in zip(phases[condition], ("--", ":"), strict=True):
                if not math.isnan(at):
                    x = float(np.interp(at, steps, range(len(steps))))
                    ax.axvline(x, color="k", linestyle=style, linewidth=1)
        title = f"{condition}\nchange of {metric} ({split}) with each head ablated alone"
        ax.set(xlabel="step (dashed: phase-change onset, dotted: end)", ylabel="head ablated")
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_progress(
    path: Path, seed_rows: Sequence[Mapping[str, Any]], metric: str, split: str
) -> None:
    """progress.png: the metric intact and under each evaluation-time clamp, over steps."""
    conditions = list(dict.fromkeys(r["condition"] for r in seed_rows if r["family"] == "clamp"))
    if not conditions:
        _blank(path, "no evaluation-time clamps (interventions) in this dissection")
        return
    fig, axes = plt.subplots(1, len(conditions), figsize=(6 * len(conditions), 4), squeeze=False)
    for ax, condition in zip(axes[0], conditions, strict=True):
        mine = [
            r
            for r in seed_rows
            if r["condition"] == condition
            and r["metric"] == metric
            and r["split"] == split
            and r["family"] in (INTACT, "clamp")
        ]
        for name in dict.fromkeys(r["intervention"] for r in mine):
            points = sorted((r["step"], r["value"]) for r in mine if r["intervention"] == name)
            style = "k-" if name == INTACT else "-"
            ax.plot(*zip(*points, strict=True), style, marker=".", label=name)
        ax.set(xlabel="step", ylabel=metric, title=f"{condition} ({split})")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_wiring(
    path: Path, matrices: Mapping[str, tuple[str, list[str], list[str], np.ndarray]]
) -> None:
    if not matrices:
        _blank(path, "no wiring: needs the heads family and two layers or more")
        return
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(6 * len(matrices), 5), squeeze=False, layout="constrained"
    )
    for ax, (condition, (score, sources, readers, matrix)) in zip(
        axes[0], matrices.items(), strict=True
    ):
        top = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_xticks(range(len(readers)), readers, fontsize=7, rotation=90)
        ax.set(xlabel="reading head", ylabel="ablated head", title=f"{condition}: {score}")
        fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)

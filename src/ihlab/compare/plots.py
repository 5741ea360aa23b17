"""The plots of `ihlab-compare`: learning-time survival curves, curves per condition, phase-change
onsets per seed, head scores."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from ihlab.metrics.grids import draw_head_grid
from ihlab.sites import parse_head_key


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample s.d. of the finite values (NaN where there are too few)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    mean = float(x.mean()) if len(x) else math.nan
    return mean, float(x.std(ddof=1)) if len(x) > 1 else math.nan


def _colors(groups: Sequence[str]) -> dict[str, Any]:
    cycle = plt.get_cmap("tab10")
    return {g: cycle(i % 10) for i, g in enumerate(groups)}


def plot_curves(
    path: Path,
    curves: Mapping[str, Sequence[Mapping[int, float]]],
    metric: str,
    threshold: float | None,
) -> None:
    """curves.png: per group, the mean of `metric` over runs at each step, with a ±1 s.d. band."""
    colors = _colors(list(curves))
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, runs in curves.items():
        steps = sorted({s for run in runs for s in run})
        if not steps:
            continue
        stats = [mean_sd([run[s] for run in runs if s in run]) for s in steps]
        mean = np.array([m for m, _ in stats])
        sd = np.nan_to_num(np.array([s for _, s in stats]))
        ax.plot(steps, mean, color=colors[g], label=f"{g} (n={len(runs)})")
        ax.fill_between(steps, mean - sd, mean + sd, color=colors[g], alpha=0.2, linewidth=0)
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label="learning threshold")
    ax.set(xlabel="optimizer steps", ylabel=metric, title=f"{metric}: mean ± 1 s.d. over seeds")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_time(path: Path, fits: Mapping[str, Any], rule: str) -> None:
    """learning_time.png: per group, the Kaplan-Meier share of runs that have not learned yet
    against optimizer steps, with its 95% band; censored runs (never crossed the threshold by
    their last step) are marked "+" where they end."""
    colors = _colors(list(fits))
    fig, ax = plt.subplots(figsize=(7, 4))
    for g, fit in fits.items():
        n, censored = len(fit.durations), int((~fit.event_observed.astype(bool)).sum())
        fit.plot_survival_function(
            ax=ax,
            color=colors[g],
            ci_alpha=0.15,
            show_censors=True,
            censor_styles={"marker": "+", "ms": 12, "mew": 2},
            label=f"{g} (n={n}, {censored} censored)",
        )
    ax.set_ylim(-0.03, 1.03)
    ax.set(
        xlabel="optimizer steps",
        ylabel="share of runs not yet learned",
        title=f"Kaplan-Meier: learning time ({rule}); +: censored",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


ONSET_STYLES = {  # kind -> (marker, filled, legend label)
    "onset": ("o", True, "phase-change onset"),
    "learned": ("o", False, "no phase change detected: learning time"),
    "never": ("^", False, "no phase change, never learned: last step"),
}


def plot_onsets(path: Path, values: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> None:
    """onsets.png: phase-change onset per run, one column per group (filled); runs without a
    detected phase change are hollow at their learning time (triangles: never learned: last step).
    """
    colors = _colors(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(groups) + 2), 4))
    used: dict[str, None] = {}
    for i, g in enumerate(groups):
        vs = [v for v in values if v["group"] == g]
        for j, v in enumerate(vs):
            x = i + (0.25 * (j / (len(vs) - 1) - 0.5) if len(vs) > 1 else 0.0)
            kind = "onset" if v["onset"] is not None else "learned" if v["learned"] else "never"
            marker, filled, _ = ONSET_STYLES[kind]
            y = v["onset"] if kind == "onset" else v["learning_time"]
            face = colors[g] if filled else "none"
            ax.plot(x, y, marker, color=colors[g], markerfacecolor=face, markersize=7)
            used[kind] = None
    legend = [
        Line2D([], [], marker=m, color="k", markerfacecolor="k" if f else "none", ls="", label=t)
        for m, f, t in (ONSET_STYLES[k] for k in ONSET_STYLES if k in used)
    ]
    if legend:
        ax.legend(handles=legend, fontsize="small")
    ax.set_xticks(range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set(ylabel="optimizer steps", title="phase-change onset per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def final_head_scores(rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """Score kind -> (layers, heads) grid from the last metrics row with head scores (NaN where a
    head has no score)."""
    scored = [row for row in rows if any(parse_head_key(k) for k in row)]
    if not scored:
        return {}
    found = [(p, v) for k, v in scored[-1].items() if (p := parse_head_key(k))]
    grids: dict[str, np.ndarray] = {}
    for kind in dict.fromkeys(p[0] for p, _ in found):
        cells = [(p[1], p[2], v) for p, v in found if p[0] == kind]
        grid = np.full((max(c[0] for c in cells) + 1, max(c[1] for c in cells) + 1), np.nan)
        for layer, head, v in cells:
            grid[layer, head] = v
        grids[kind] = grid
    return grids


def mean_grids(grids: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of grids of possibly different shapes (padded with NaN), NaN-aware."""
    shape = tuple(max(g.shape[i] for g in grids) for i in range(2))
    stack = np.full((len(grids), *shape), np.nan)
    for i, g in enumerate(grids):
        stack[i, : g.shape[0], : g.shape[1]] = g
    counts = np.isfinite(stack).sum(axis=0)
    sums = np.nansum(stack, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def plot_heads(path: Path, heads: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """heads.png: one column per group, one row per score kind, each cell the group's mean final
    head scores (layers down, heads across), on the score's whole range (head_grids.py)."""
    groups = [g for g in heads if heads[g]]
    kinds = list(dict.fromkeys(k for g in groups for k in heads[g]))
    if not kinds:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no head scores in these runs", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    fig, axes = plt.subplots(
        len(kinds),
        len(groups),
        figsize=(2.8 * len(groups) + 1.2, 2.2 * len(kinds) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for r, kind in enumerate(kinds):
        image = None
        for c, g in enumerate(groups):
            ax = axes[r, c]
            if kind not in heads[g]:
                ax.axis("off")
                continue
            image = draw_head_grid(ax, heads[g][kind], kind, f"{g}: {kind}")
        if image is not None:
            fig.colorbar(image, ax=axes[r, :].tolist())
    fig.suptitle("final head scores, mean over each group's runs")
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""One per-token-loss PCA fitted jointly over a study's runs (Olsson et al.'s joint PCA of their
1-, 2- and 3-layer models), and its trajectories.

Every run's `per_token_loss.csv` holds, per evaluation, the loss of fixed examples at fixed
positions. Runs whose summaries carry the same `eval_set` fingerprint scored the same examples,
so their rows are stacked (every checkpoint of every run) and projected on the first two
principal components of the stack; runs of another fingerprint get their own fit (a synthetic
family draws its evaluation set from the seed, so a study over seeds has one fit per seed; text
runs share their windows, so one fit serves them all). A run without a fingerprint (written
before the lab recorded one) or with fewer than 3 finite rows is left out.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np

from ihlab.compare.plots import _colors
from ihlab.metrics.dynamics import per_token_loss_pca
from ihlab.runs.files import LOSS_BY_POSITION, PER_TOKEN_LOSS, RunFiles
from ihlab.runs.tables import read_step_table


class StudyRun(Protocol):
    """What the fit reads of a run (`ihlab.compare.study.Run`)."""

    path: Path
    group: str
    summary: dict[str, Any]


def joint_loss_pca(runs: Sequence[StudyRun]) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Rows (dir, group, eval_set, step, pc1, pc2) of every checkpoint of every run, projected
    with its fingerprint's joint fit; and each fit's explained variance by fingerprint."""
    tables: dict[str, list[tuple[StudyRun, np.ndarray, np.ndarray]]] = {}
    for run in runs:
        path = RunFiles(run.path).table(PER_TOKEN_LOSS)
        fingerprint = run.summary.get("eval_set")
        if fingerprint is None or not path.exists():
            continue
        steps, _, losses = read_step_table(path)
        finite = np.isfinite(losses).all(axis=1)
        if finite.sum() >= 3:
            tables.setdefault(fingerprint, []).append((run, steps[finite], losses[finite]))
    rows, explained = [], {}
    for fingerprint, members in sorted(tables.items()):
        if len({losses.shape[1] for _, _, losses in members}) > 1:
            continue  # cannot happen for one evaluation set; refuse to stack ragged rows
        coords, share = per_token_loss_pca(np.concatenate([x for _, _, x in members]))
        explained[fingerprint] = share.tolist()
        start = 0
        for run, steps, _ in members:
            for step, (pc1, pc2) in zip(steps, coords[start : start + len(steps)], strict=True):
                rows.append(
                    {
                        "dir": str(run.path),
                        "group": run.group,
                        "eval_set": fingerprint,
                        "step": int(step),
                        "pc1": float(pc1),
                        "pc2": float(pc2),
                    }
                )
            start += len(steps)
    return rows, explained


def plot_loss_pca(
    path: Path, rows: Sequence[Mapping[str, Any]], explained: Mapping[str, Sequence[float]]
) -> None:
    """Each run's trajectory in its fit's (pc1, pc2) plane, coloured by group, one panel per
    evaluation set; a dot marks the first checkpoint."""
    fits = sorted({r["eval_set"] for r in rows})
    fig, axes = plt.subplots(1, max(len(fits), 1), figsize=(4.6 * max(len(fits), 1), 4.2))
    axes = np.atleast_1d(axes)
    colors = _colors(sorted({r["group"] for r in rows}))
    for ax, fit in zip(axes, fits, strict=False):
        labelled: set[str] = set()
        for run in dict.fromkeys(r["dir"] for r in rows if r["eval_set"] == fit):
            points = [r for r in rows if r["dir"] == run]
            group = points[0]["group"]
            x, y = [p["pc1"] for p in points], [p["pc2"] for p in points]
            label = None if group in labelled else group
            labelled.add(group)
            ax.plot(x, y, "-", color=colors[group], lw=1.2, alpha=0.8, label=label)
            ax.plot(x[:1], y[:1], "o", color=colors[group], ms=4)
        share = explained[fit]
        ax.set(
            title=f"evaluation set {fit[:8]}",
            xlabel=f"PC1 ({100 * share[0]:.0f}%)",
            ylabel=f"PC2 ({100 * share[1]:.0f}%)" if len(share) > 1 else "PC2",
        )
        ax.legend(fontsize=7)
    if not fits:
        axes[0].text(0.5, 0.5, "no per-token losses to project", ha="center", va="center")
    fig.suptitle("Per-token-loss PCA, fitted jointly over the runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_index_profile(losses: np.ndarray, bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Loss over log-spaced context indices and its derivative with respect to ln(index), as
    Olsson et al. plot the phase change. `losses` (steps, positions) is the mean loss at each
    target position (target t is token index t + 1); positions are averaged within each of
    `bins` log-spaced bins of the index (each bin's centre is the geometric mean of its indices),
    then differentiated by central differences in ln(index). Returns the centres (bins,) and
    the binned loss and its derivative stacked, (2, steps, bins)."""
    index = np.arange(1, losses.shape[1] + 1, dtype=float)  # token index of each target
    edges = np.unique(np.geomspace(1, index[-1] + 1, bins + 1).astype(int))
    groups = [(lo <= index) & (index < hi) for lo, hi in itertools.pairwise(edges)]
    groups = [g for g in groups if g.any()]
    centres = np.array([np.exp(np.log(index[g]).mean()) for g in groups])
    binned = np.stack([losses[:, g].mean(axis=1) for g in groups], axis=1)  # (steps, bins)
    slope = np.gradient(binned, np.log(centres), axis=1) if len(centres) > 1 else binned * 0
    return centres, np.stack([binned, slope])


def plot_loss_by_position(
    path: Path, profiles: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Per group (rows): the loss over training step x log context index, and its derivative
    with respect to ln(index) (negative: later tokens predicted better). `profiles` maps a group
    to (steps (n,), mean loss_by_position (n, positions))."""
    fig, axes = plt.subplots(len(profiles), 2, figsize=(10, 3.2 * len(profiles)), squeeze=False)
    for (group, (steps, losses)), (left, right) in zip(profiles.items(), axes, strict=True):
        centres, (binned, slope) = log_index_profile(losses)
        extent = (np.log10(centres[0]), np.log10(centres[-1]), steps[-1], steps[0])
        image = left.imshow(binned, aspect="auto", extent=extent, cmap="viridis")
        fig.colorbar(image, ax=left, label="loss (nats)")
        bound = float(np.nanmax(np.abs(slope))) or 1.0
        image = right.imshow(
            slope, aspect="auto", extent=extent, cmap="RdBu_r", vmin=-bound, vmax=bound
        )
        fig.colorbar(image, ax=right, label="d loss / d ln(index)")
        for ax, what in ((left, "loss"), (right, "derivative")):
            ax.set(title=f"{group}: {what}", xlabel="log10 token index", ylabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def group_loss_profiles(
    runs: Sequence[StudyRun], groups: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group, the mean `loss_by_position.csv` over its runs that evaluated at the same steps
    as its first one (steps (n,), loss (n, positions)); groups without the table are left out."""
    profiles = {}
    for group in groups:
        tables = []
        for run in runs:
            path = RunFiles(run.path).table(LOSS_BY_POSITION)
            if run.group == group and path.exists():
                steps, _, losses = read_step_table(path)
                finite = np.isfinite(losses).all(axis=1)
                tables.append((steps[finite], losses[finite]))
        same = [t for t in tables if tables and np.array_equal(t[0], tables[0][0])]
        if same and len(same[0][0]):
            profiles[group] = (same[0][0], np.mean([t[1] for t in same], axis=0))
    return profiles

"""Draws the Singh et al. figures of docs/singh.md from the CPU-scale studies, as the paper draws
them (training-split loss against sequences seen), and prints each study's Kaplan-Meier medians in
sequences. Run from the repository root after the studies (commands in docs/singh.md):

    python docs/plot_singh.py outputs/studies
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ihlab.stats.groups import kaplan_meier, median_learning_time
from ihlab.theory.figure import METRIC, StudyRun, draw, mean_curve, measured_curves, study_runs
from ihlab.theory.subcircuits import solve_conditions

DOCS = Path(__file__).parent
FIG5B = {  # condition -> (label, colour): the paper's Figure 5b colours
    "one_head": ("no clamp", "black"),
    "one_head+prev_token": ("previous-token head", "tab:orange"),
    "one_head+subcircuit_a": ("layer 1 (A)", "tab:red"),
    "one_head+match": ("match (B)", "tab:green"),
    "one_head+copy": ("copy (C)", "tab:blue"),
    "one_head+subcircuit_a+copy": ("layer 1 + copy (A, C)", "tab:purple"),
}
FIG6_COLUMNS = {  # condition prefix -> the paper's column title
    "one_head": "Normal training",
    "one_head+subcircuit_a+copy": "Subcircuit B evolution",
    "one_head+match": "Subcircuit C evolution",
    "one_head+subcircuit_a": "Subcircuits B, C evolution",
}


def style(ax: plt.Axes, title: str = "") -> None:
    """The paper's axes: training loss 0-1.5 against sequences seen, in scientific notation."""
    ax.set(xlabel="# sequences seen", ylim=(0, 1.5), title=title)
    ax.title.set_fontsize(9)
    ax.ticklabel_format(style="sci", axis="x", scilimits=(0, 0))


def runs_of(study: Path) -> dict[str, list[StudyRun]]:
    """condition -> the study's completed runs."""
    runs = {
        c: [r for r in rs if r.summary is not None and r.summary.get("status") == "completed"]
        for c, rs in study_runs(study, METRIC).items()
    }
    return {c: rs for c, rs in runs.items() if rs}


def km_row(name: str, runs: list) -> str:
    """| condition | seeds | learning time: KM median [95% CI] in sequences | learned |"""
    batch = runs[0].batch_size
    steps = [r.summary["learning_time"]["step"] for r in runs]
    learned = [step is not None for step in steps]
    times = [
        r.summary["steps"] if step is None else step for r, step in zip(runs, steps, strict=True)
    ]
    m = median_learning_time(kaplan_meier(times, learned, name))

    def seq(x: float) -> str:
        return "not reached" if not np.isfinite(x) else f"{x * batch / 1000:.3g}k"

    per_seed = " / ".join(
        f"{t * batch / 1000:.3g}k" + ("" if ok else "+")
        for t, ok in zip(times, learned, strict=True)
    )
    ci = f"[{seq(m['median_ci_low'])}, {seq(m['median_ci_high'])}]"
    return f"| {name} | {per_seed} | {seq(m['median'])} {ci} | {sum(learned)}/{len(runs)} |"


def table(runs: dict[str, list], order: list[str]) -> str:
    head = "| condition | learning time per seed (sequences) | KM median [95% CI] | learned |"
    lines = [head, "|---|---|---|---|"]
    return "\n".join(lines + [km_row(c, runs[c]) for c in order if c in runs])


def figure_4b(study: Path) -> None:
    runs = runs_of(study)
    order = sorted(runs, key=lambda c: int(c.rsplit("H", 1)[1]))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, c in enumerate(order):
        ax.plot(*mean_curve(runs[c]), color=plt.cm.viridis(i / 7), label=c.replace("only_", ""))
    style(ax, "Figure 4b (CPU scale): one layer-2 head trained alone (mean of 5 seeds)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(DOCS / "singh_fig4b.png", dpi=120)
    print(table(runs, order))


def figure_5b(study: Path) -> None:
    runs = runs_of(study)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for c, (label, colour) in FIG5B.items():
        if c in runs:
            ax.plot(*mean_curve(runs[c]), color=colour, label=label)
    style(ax, "Figure 5b (CPU scale): one head kept, each clamp (mean of 5 seeds)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "singh_fig5b.png", dpi=120)
    print(table(runs, list(FIG5B)))
    draw(solve_conditions(), measured_curves(study), DOCS / "singh_toy.png")


def figure_6(studies: dict[str, Path]) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), sharey=True)
    for row, (axis, study) in enumerate(studies.items()):
        runs = runs_of(study)
        counts = sorted({int(c.rsplit(axis, 1)[1]) for c in runs})
        for col, (prefix, title) in enumerate(FIG6_COLUMNS.items()):
            ax = axes[row, col]
            for k, n in enumerate(counts):
                c = f"{prefix}_{axis}{n}"
                if c in runs:
                    ax.plot(*mean_curve(runs[c]), color=plt.cm.plasma(k / 3), label=f"{n} {axis}")
            style(ax, title if row == 0 else "")
            ax.legend(fontsize=7)
        axes[row, 0].set_ylabel("training loss")
        order = [f"{p}_{axis}{n}" for p in FIG6_COLUMNS for n in counts]
        print(table(runs, order))
    fig.tight_layout()
    fig.savefig(DOCS / "singh_fig6.png", dpi=120)


def main(root: Path) -> None:
    figure_4b(root / "singh_fig4b_cpu")
    figure_5b(root / "singh_fig5b_cpu")
    sixes = {"classes": root / "singh_fig6_classes_cpu", "labels": root / "singh_fig6_labels_cpu"}
    if all(p.is_dir() for p in sixes.values()):
        figure_6(sixes)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/studies"))

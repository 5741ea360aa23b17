"""The toy model's learning curves (Singh et al. Figure 5a) beside the measured ones.

Left: the toy model's loss per iteration under each clamp condition, coloured as the paper colours
them. Right (with a study): the mean over seeds of the training split's loss of the lab's runs
whose conditions play the same roles: nothing clamped (the single-head model), subcircuit C
clamped (perfect copy), and two subcircuits clamped so that only one is left to learn (layer 1 +
copy), against sequences seen, the paper's unit.

    python -m ihlab.theory.figure --study outputs/multirun/singh_fig5b_cpu --out fig5a.png
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import OmegaConf

from ihlab.runs.discovery import find_runs
from ihlab.runs.files import RunFiles
from ihlab.runs.summary import read_summary
from ihlab.runs.tables import read_metrics
from ihlab.theory.subcircuits import Trajectory, solve_conditions

COLOURS = {
    "None": (0.0, 0.0, 0.0),
    "c": (55 / 256, 126 / 256, 184 / 256),
    "b, c": (152 / 256, 78 / 256, 163 / 256),
}
MEASURED = {  # toy condition -> the lab's condition in the same role
    "None": "one_head",
    "c": "one_head+copy",
    "b, c": "one_head+subcircuit_a+copy",
}
METRIC = "eval/train/loss"


class StudyRun(NamedTuple):
    """One run of a study: its batch size, summary (None: none yet) and {step: metric}."""

    batch_size: int
    summary: dict[str, Any] | None
    curve: dict[int, float]


def study_runs(study: Path, metric: str = METRIC) -> dict[str, list[StudyRun]]:
    """Condition -> the study's runs of it (those with a resolved config)."""
    out: dict[str, list[StudyRun]] = {}
    for run in find_runs([study]):
        files = RunFiles(run)
        if not files.resolved.is_file():
            continue
        cfg = OmegaConf.load(files.resolved)
        curve = {int(r["step"]): r[metric] for r in read_metrics(files.metrics) if metric in r}
        summary = read_summary(files.summary)
        out.setdefault(str(cfg.condition), []).append(
            StudyRun(int(cfg.data.batch_size), summary, curve)
        )
    return out


def mean_curve(runs: Sequence[StudyRun]) -> tuple[np.ndarray, np.ndarray]:
    """(sequences seen, mean of the runs' metric) at the steps every one of them logged."""
    steps = sorted(set.intersection(*(set(r.curve) for r in runs)))
    mean = np.array([np.mean([r.curve[s] for r in runs]) for s in steps])
    return np.array(steps) * runs[0].batch_size, mean


def measured_curves(
    study: Path, conditions: Mapping[str, str] = MEASURED, metric: str = METRIC
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per toy condition: (sequences seen, mean of `metric` over the runs, number of runs), from
    the study's runs of the mapped condition, at the steps every one of them logged."""
    by_condition = study_runs(study, metric)
    return {
        toy: (*mean_curve(by_condition[lab]), len(by_condition[lab]))
        for toy, lab in conditions.items()
        if by_condition.get(lab)
    }


def draw(
    trajectories: Mapping[str, Trajectory],
    measured: Mapping[str, tuple[np.ndarray, np.ndarray, int]] | None,
    path: Path,
) -> None:
    """The figure described above, written to `path`."""
    panels = 2 if measured else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    toy = axes[0, 0]
    for name, t in trajectories.items():
        toy.plot(t.loss, color=COLOURS.get(name), label=name)
    toy.set(xlabel="Iterations", ylabel="Loss", title="Toy model (rank-1, d = 20)")
    toy.legend(title="Clamped variable")
    if measured:
        ax = axes[0, 1]
        for name, (x, y, n) in measured.items():
            ax.plot(x, y, color=COLOURS.get(name), label=f"{MEASURED.get(name, name)} ({n})")
        ax.set(xlabel="# sequences seen", ylabel="training loss", title="Measured (mean of seeds)")
        ax.ticklabel_format(style="sci", axis="x", scilimits=(0, 0))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, help="a study whose runs give the measured curves")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    measured = measured_curves(args.study) if args.study else None
    draw(solve_conditions(args.dim, args.seed), measured, args.out)


if __name__ == "__main__":
    main()

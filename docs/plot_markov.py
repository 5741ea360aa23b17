"""The Markov figure of docs/experiments.md: a run's evaluation loss with the uniform, in-context
unigram and Bayes bigram predictors' losses on the same sequences, and the detected transitions
shaded.

    python docs/plot_markov.py outputs/markov_2l/<run> docs/markov_stages.png
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(run: Path, out: Path) -> None:
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("eval/loss")]
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.plot(steps, [float(r["eval/loss"]) for r in rows], color="black", label="model")
    for key, colour in (("uniform", "tab:grey"), ("unigram", "tab:orange"), ("bigram", "tab:blue")):
        level = float(rows[-1][f"eval/loss_{key}"])
        ax.axhline(level, color=colour, linestyle="--", label=f"{key} predictor ({level:.3f})")
    summary = json.loads((run / "summary.json").read_text())
    transitions = summary["phase_change"]["transitions"]
    if transitions:  # the stages, not the long tail after them
        ax.set_xlim(0, min(steps[-1], 2.5 * transitions[-1]["end"]))
    for i, t in enumerate(transitions):
        ax.axvspan(t["onset"], t["end"], color="tab:green", alpha=0.15 + 0.1 * i, lw=0)
        ax.axvline(t["steepest"], color="tab:green", lw=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval loss (nats)")
    ax.set_title("markov_2l: transitions shaded (onset to end), steepest points as lines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The probe's files: heads.csv/png, results.csv/md/png and predictions.csv."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ihlab.metrics.grids import score_limits
from ihlab.probe.models import LoadedModel
from ihlab.probe.results import Cell, ResultRow


def write_heads(out: Path, scores: dict[str, torch.Tensor], loaded: LoadedModel) -> None:
    """heads.csv (layer, head, kv_head, then every score) and heads.png (one heatmap per score)."""
    names = list(scores)
    group = loaded.n_heads // loaded.n_kv_heads
    with (out / "heads.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", "kv_head", *names])
        for layer in range(loaded.n_layers):
            for head in range(loaded.n_heads):
                values = [f"{float(scores[s][layer, head]):.6f}" for s in names]
                writer.writerow([layer, head, head // group, *values])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 0.18 * loaded.n_layers + 2))
    for ax, name in zip(axes, names, strict=True):
        low, high = score_limits(name)
        image = ax.imshow(scores[name].cpu().numpy(), vmin=low, vmax=high, aspect="auto")
        ax.set(title=name, xlabel="query head", ylabel="layer")
        fig.colorbar(image, ax=ax)
    fig.suptitle(loaded.name)
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=110)
    plt.close(fig)


def _format(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    if isinstance(value, list):
        return " ".join(f"{v:.2f}" for v in value)
    return "" if value is None else value


def write_results_csv(out: Path, rows: Sequence[ResultRow]) -> None:
    """results.csv: one line per task, shots and column, every field of its Cell."""
    fields = [f.name for f in dataclasses.fields(Cell)]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "shots", "condition", *fields])
        for row in rows:
            for column, cell in row.cells.items():
                values = [_format(getattr(cell, name)) for name in fields]
                writer.writerow([row.task, row.shots, column, *values])


def write_predictions(out: Path, rows: Sequence[ResultRow], columns: dict[str, list[str]]) -> None:
    """predictions.csv: per prompt (of `tasks.seeds` in order) and condition, whether it was
    answered correctly and its label margin (nats), for analyses the tables do not make."""
    with (out / "predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "shots", "prompt", "condition", "correct", "margin"])
        for row in rows:
            for column, names in columns.items():
                o = row.outcomes[column]
                for name, right, margins in zip(names, o.correct, o.margin, strict=True):
                    pairs = zip(right.tolist(), margins.tolist(), strict=True)
                    for prompt, (r, m) in enumerate(pairs):
                        writer.writerow([row.task, row.shots, prompt, name, int(r), f"{m:.4f}"])


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def results_markdown(rows: Sequence[ResultRow], model: str) -> str:
    """The results table (accuracy, interval, margin change, p-values) and the knockout vs
    ablation table."""
    n = rows[0].cells["full"].n
    lines = [
        f"# In-context learning with induction heads intervened on: {model}",
        "",
        f"{n} prompts per row. Accuracy (%) of the argmax of label log-likelihood with Wilson's "
        "95% interval; random: mean over head draws (min-max in brackets). Δ margin: mean change "
        "of the label log-likelihood margin from the full model (nats, ± 95%). p: McNemar's "
        "exact test on the same prompts (a random control: its correctness averaged over draws).",
        "",
        "| task | shots | condition | accuracy % [95% CI] | Δ margin | p vs full | p vs random |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for column, c in row.cells.items():
            spread = (
                f" ({min(c.seed_accuracies):.1f}-{max(c.seed_accuracies):.1f})"
                if c.seed_accuracies
                else ""
            )
            accuracy = f"{c.accuracy:.1f} [{c.ci_low:.1f}, {c.ci_high:.1f}]{spread}"
            change = (
                "" if column == "full" else f"{c.margin_change:+.2f} ± {c.margin_change_ci:.2f}"
            )
            lines.append(
                f"| {row.task} | {row.shots} | {column} | {accuracy} | {change} "
                f"| {_p(c.p_vs_full)} "
                f"| {_p(c.p_vs_random)} |"
            )
    lines += [
        "",
        "Knockout vs ablation of the same heads, on the same prompts: share of prompts answered "
        "correctly under one only, mean margin difference (knockout - ablated, nats, ± 95%), "
        "McNemar p and Wilcoxon signed-rank p on the margins.",
        "",
        "| task | shots | heads | discordant % | margin KO - ablated | McNemar p | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for column, c in row.cells.items():
            if c.p_vs_ablated is not None:
                lines.append(
                    f"| {row.task} | {row.shots} | {column.removesuffix(' IH knockout')} "
                    f"| {c.discordant_vs_ablated:.1f} "
                    f"| {c.margin_vs_ablated:+.3f} ± {c.margin_vs_ablated_ci:.3f} "
                    f"| {_p(c.p_vs_ablated)} | {_p(c.p_margin_vs_ablated)} |"
                )
    return "\n".join(lines) + "\n"


def plot_results(out: Path, rows: Sequence[ResultRow], model: str) -> None:
    """results.png: accuracy with 95% intervals per row and column (chance dotted), and the
    per-prompt margin changes from the full model as box plots."""
    columns = list(rows[0].cells)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(rows) * len(columns)), 7))
    width = 0.8 / len(columns)
    x = np.arange(len(rows))
    for i, column in enumerate(columns):
        cells = [row.cells[column] for row in rows]
        heights = [c.accuracy for c in cells]
        errors = [[c.accuracy - c.ci_low for c in cells], [c.ci_high - c.accuracy for c in cells]]
        top.bar(x + i * width, heights, width, yerr=errors, capsize=2, label=column)
        changes = [row.margin_changes(column).numpy() for row in rows]
        box = bottom.boxplot(
            changes, positions=x + i * width, widths=0.8 * width, patch_artist=True
        )
        for patch in box["boxes"]:
            patch.set_facecolor(f"C{i}")
    for ax in (top, bottom):
        ax.set_xticks(x + 0.4 - width / 2, [f"{r.task}\n{r.shots}-shot" for r in rows], fontsize=8)
    for k, row in enumerate(rows):
        top.hlines(100 / row.n_options, k - width / 2, k + 0.8 - width / 2, "gray", ":")
    top.set(ylabel="accuracy (%)", ylim=(0, 100), title=model)
    top.legend(fontsize=7, ncol=2)
    bottom.axhline(0, color="gray", linestyle=":", linewidth=1)
    bottom.set(ylabel="Δ label margin vs full (nats)")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)

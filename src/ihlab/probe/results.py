"""One results row (task x shots): every column's accuracy, margin change and paired tests.

Decisions:
- a random control is several conditions (one per seed): its accuracy is their mean, its interval
  Wilson's at that mean for the row's prompt count, and the seeds' own accuracies are kept (the
  spread over head draws);
- a comparison with a random control pairs each prompt's correctness with the control's mean
  correctness over its seeds (McNemar's exact test generalised as the sign test it is);
- margins are compared per prompt; a random control's margin per prompt is the mean over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ihlab.probe.columns import Column
from ihlab.stats.paired import correct, margin, mcnemar, mean_interval, signed_rank, wilson


@dataclass
class Outcomes:
    """Per-prompt outcomes of a column: (seeds, prompt) correctness and margins (one seed unless
    it is a random control)."""

    correct: Tensor
    margin: Tensor

    @classmethod
    def of(cls, logliks: Sequence[Tensor], labels: Tensor) -> Outcomes:
        return cls(
            torch.stack([correct(x, labels) for x in logliks]),
            torch.stack([margin(x, labels) for x in logliks]),
        )

    def p_against(self, other: Outcomes) -> float:
        """McNemar's exact p on per-prompt correctness (averaged over seeds)."""
        return mcnemar(self.correct.double().mean(dim=0), other.correct.double().mean(dim=0))


@dataclass
class Cell:
    """One column of one row; accuracies and intervals in %, margins in nats."""

    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    seed_accuracies: list[float]  # a random control's per-seed accuracies, else []
    margin: float  # mean label margin
    margin_change: float  # mean change from the full model on the same prompts
    margin_change_ci: float  # 95% half-width
    p_vs_full: float | None = None
    p_vs_random: float | None = None
    p_vs_ablated: float | None = None  # knockout vs ablation of the same heads (McNemar)
    margin_vs_ablated: float | None = None  # mean margin, knockout minus ablation
    margin_vs_ablated_ci: float | None = None
    p_margin_vs_ablated: float | None = None  # Wilcoxon signed-rank on the margins
    discordant_vs_ablated: float | None = None  # % of prompts right under one only


@dataclass
class ResultRow:
    """A results row: its cells, and the per-prompt outcomes they summarise."""

    task: str
    shots: int
    n_options: int
    cells: dict[str, Cell]
    outcomes: dict[str, Outcomes]

    def margin_changes(self, column: str) -> Tensor:
        """(prompt,) change of the label margin from the full model (mean over seeds)."""
        return self.outcomes[column].margin.mean(dim=0) - self.outcomes["full"].margin[0]


def make_row(
    task: str,
    shots: int,
    columns: Sequence[Column],
    logliks: dict[str, Tensor],
    labels: Tensor,
) -> ResultRow:
    """A row from each condition's option log-likelihoods, (prompt, option), and the labels."""
    outcomes = {
        c.name: Outcomes.of([logliks[cond.name] for cond in c.conditions], labels) for c in columns
    }
    n_options = int(torch.isfinite(logliks["full"][0]).sum())
    return ResultRow(task, shots, n_options, _cells(columns, outcomes), outcomes)


def _cells(columns: Sequence[Column], outcomes: dict[str, Outcomes]) -> dict[str, Cell]:
    full = outcomes["full"]
    cells = {}
    for column in columns:
        o = outcomes[column.name]
        n = o.correct.shape[1]
        accuracies = 100 * o.correct.double().mean(dim=1)
        accuracy = float(accuracies.mean())
        low, high = wilson(accuracy / 100 * n, n)
        change, change_ci = mean_interval(o.margin.mean(dim=0) - full.margin[0])
        cell = Cell(
            n=n,
            accuracy=accuracy,
            ci_low=100 * low,
            ci_high=100 * high,
            seed_accuracies=accuracies.tolist() if len(accuracies) > 1 else [],
            margin=float(o.margin.mean()),
            margin_change=change,
            margin_change_ci=change_ci,
        )
        if column.name != "full":
            cell.p_vs_full = o.p_against(full)
        if column.control is not None:
            cell.p_vs_random = o.p_against(outcomes[column.control])
        if column.ablated is not None:
            _compare_with_ablation(cell, o, outcomes[column.ablated])
        cells[column.name] = cell
    return cells


def _compare_with_ablation(cell: Cell, knockout: Outcomes, ablated: Outcomes) -> None:
    cell.p_vs_ablated = knockout.p_against(ablated)
    difference = knockout.margin[0] - ablated.margin[0]
    cell.margin_vs_ablated, cell.margin_vs_ablated_ci = mean_interval(difference)
    cell.p_margin_vs_ablated = signed_rank(knockout.margin[0], ablated.margin[0])
    discordant = knockout.correct[0] != ablated.correct[0]
    cell.discordant_vs_ablated = 100 * float(discordant.double().mean())

"""The results table's columns: the full model, then per head selection its induction heads
ablated, the same heads knocked out and the matched random control, then any extra interventions.

A column knows what it is compared with: every column with the full model, an IH column with its
selection's random control, a knockout column with the ablation of the same heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ihlab.probe.conditions import Condition, Head, check_heads, intervention_condition
from ihlab.probe.config import ProbeConfig
from ihlab.probe.selection import parse_head, random_heads, top_heads


@dataclass
class Column:
    """A result column: one condition, or several (a random control: one per seed)."""

    name: str
    conditions: list[Condition]
    control: str | None = None  # the random control column this one is compared with
    ablated: str | None = None  # knockout: the column ablating the same heads


def check_heads_exist(cfg: ProbeConfig, n_layers: int, n_heads: int) -> None:
    """Every head named in `select.heads` and `interventions` exists in a model of this shape."""
    check_heads([parse_head(h) for h in cfg.select.heads], n_layers, n_heads, "select.heads")
    for name, spec in cfg.interventions.items():
        condition = intervention_condition(name, spec)
        check_heads(condition.heads, n_layers, n_heads, f"interventions.{name}")


def columns(cfg: ProbeConfig, prefix: torch.Tensor) -> list[Column]:
    """The columns for a model whose prefix-matching scores are `prefix` (layer, head); named
    heads are checked by `check_heads_exist` before the model is loaded."""
    n_heads = prefix.shape[1]
    result = [Column("full", [Condition("full")])]
    selections: list[tuple[str, list[Head]]] = []
    if cfg.select.heads:
        selections.append(("selected", [parse_head(h) for h in cfg.select.heads]))
    selections += [(f"{p:g}%", top_heads(prefix, p)) for p in cfg.select.percents]
    ablation = cfg.select.ablation
    for label, heads in selections:
        ablated, knockout, control = (
            f"{label} IH ablated",
            f"{label} IH knockout",
            f"{label} random",
        )
        randoms = [
            Condition(f"{control} s{s}", "ablate", random_heads(heads, n_heads, s), ablation)
            for s in cfg.select.random_seeds
        ]
        result += [
            Column(ablated, [Condition(ablated, "ablate", heads, ablation)], control=control),
            Column(knockout, [Condition(knockout, "knockout", heads)], control, ablated),
            Column(control, randoms),
        ]
    for name, spec in cfg.interventions.items():
        result.append(Column(name, [intervention_condition(name, spec)]))
    return result

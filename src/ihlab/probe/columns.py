"""The results table's columns: the full model, then per head selection its induction heads
ablated, the same heads knocked out and the matched random control, then any extra interventions.

A column knows what it is compared with: every column with the full model, an IH column with its
selection's random control, a knockout column with the ablation of the same heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ihlab.clamps import ClampConfig, check_value
from ihlab.errors import ConfigError
from ihlab.probe.evaluate import Condition
from ihlab.probe.interventions import (
    MODE_SITES,
    Ablation,
    Head,
    check_heads,
    parse_head,
    random_heads,
    top_heads,
)
from ihlab.sites import parse_site

if TYPE_CHECKING:
    from ihlab.probe.config import ProbeConfig


@dataclass
class Column:
    """A result column: one condition, or several (a random control: one per seed)."""

    name: str
    conditions: list[Condition]
    control: str | None = None  # the random control column this one is compared with
    ablated: str | None = None  # knockout: the column ablating the same heads


def intervention_condition(name: str, spec: ClampConfig) -> Condition:
    """A result column from a clamp spec: an ablation value (zero, mean) at `blocks.{l}.attn.z`,
    or knockout at `blocks.{l}.attn.scores`, on the listed heads."""
    layer, kind = parse_site(spec.site)
    key = f"interventions.{name}"
    check_value(spec, key)
    if layer is None or not spec.heads:
        raise ConfigError(f"{key}: give a per-layer site blocks.<l>.attn.* and its heads.")
    heads = [(layer, h) for h in spec.heads]
    if kind == MODE_SITES["ablate"] and spec.value in {a.value for a in Ablation}:
        return Condition(name, "ablate", heads, Ablation(spec.value))
    if kind == MODE_SITES["knockout"] and spec.value == "knockout":
        return Condition(name, "knockout", heads)
    raise ConfigError(
        f"{key}: the probe supports value zero or mean at attn.z and value knockout at "
        f"attn.scores, got value {spec.value} at {spec.site}."
    )


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

"""A probe condition: one forward per prompt, the full model or an intervention on chosen heads,
as the lab's clamps (the same values, `ClampSet` and `SiteHooks` as in training).

- ablation at `blocks.{l}.attn.z`: value `zero` (the head's d_head slice of the output projection's
  input set to 0, Crosbie & Shutova's appendix) or `mean` (held at its mean over reference
  prompts, the paper's main text);
- knockout at `blocks.{l}.attn.scores`: value `knockout`, -inf before the softmax from every token
  to the tokens that followed earlier occurrences of the same token or the same category, in the
  selected heads only (the paper's attention knockout of the induction pattern).
Extra result columns are clamp specs (`interventions.<column>`), turned into conditions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ihlab.choices import Choice
from ihlab.clamps.checks import check_value
from ihlab.clamps.engine import Clamp, ClampSet
from ihlab.clamps.spec import ClampConfig
from ihlab.errors import ConfigError
from ihlab.sites import head_name, parse_site

Head = tuple[int, int]  # (layer, query head)
MODE_SITES = {"ablate": "attn.z", "knockout": "attn.scores"}  # where each kind of condition acts


class Ablation(Choice):
    """The clamp value an ablation holds heads at (names of `ihlab.clamps.values`)."""

    zero = "zero"
    mean = "mean"


@dataclass
class Condition:
    """One forward per prompt: `full` (no intervention), `ablate` or `knockout` of heads."""

    name: str
    mode: str = "full"  # full | ablate | knockout
    heads: list[Head] = field(default_factory=list)
    ablation: Ablation = Ablation.zero

    @property
    def first_layer(self) -> int:
        """The lowest layer the condition changes (0 for `full`: nothing to share)."""
        return min((layer for layer, _ in self.heads), default=0)

    def clamp_set(self, n_layers: int, n_heads: int) -> ClampSet:
        """The condition as the lab's clamps: one per layer with selected heads."""
        if self.mode == "full":
            return ClampSet([], n_layers)
        value = self.ablation.value if self.mode == "ablate" else "knockout"
        return ClampSet(head_clamps(self.heads, self.mode, value, n_heads), n_layers)


def head_clamps(heads: Sequence[Head], mode: str, value: str, n_heads: int) -> list[Clamp]:
    """One clamp per layer holding `heads` at `value`, at the site of `mode` (MODE_SITES)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [
        Clamp(
            f"L{layer}",
            ClampConfig(site=f"blocks.{layer}.{MODE_SITES[mode]}", value=value, heads=sorted(hs)),
            n_heads,
        )
        for layer, hs in sorted(by_layer.items())
    ]


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


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, key: str) -> None:
    """Raise a ConfigError naming `key` for a head a model of this shape does not have."""
    for layer, head in heads:
        if not (layer < n_layers and head < n_heads):
            raise ConfigError(
                f"{key}: head {head_name(layer, head)} does not exist: the model has {n_layers} "
                f"layers x {n_heads} heads. Fix: name heads L0H0 to "
                f"{head_name(n_layers - 1, n_heads - 1)}."
            )

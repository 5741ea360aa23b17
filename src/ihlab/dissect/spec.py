"""What to dissect (`conf/dissect.yaml`, `ihlab-dissect`'s keys) and the interventions it
generates.

An intervention is a set of clamps (the lab's `ClampConfig`, the same site, heads, positions and
value vocabulary as training) applied on top of the run's own clamps, at evaluation only. The
generated families:
- `heads`: every head of every layer ablated alone, once per value listed (`zero`, `mean`,
  `pattern_preserving`, `value_preserving`: the later layers' patterns or values held at the
  intact forward's); named `L1H3 zero`;
- `keep_one`: in each layer, every head but one ablated (zero), named `keep L1H3`;
- `layers`: a whole layer's attention output (and its MLP's, if it has one) zeroed, `layer 1`.
The wiring matrix (which earlier-layer heads each later head reads from) is read off the `heads`
family: the change of every later head's induction score when an earlier head is ablated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from ihlab.choices import Choice
from ihlab.clamps.spec import ClampConfig
from ihlab.errors import ConfigError
from ihlab.model import ModelConfig
from ihlab.sites import head_name
from ihlab.tracking.wandb_run import WandbMode

ABLATION_SITE = "attn.z"  # a head's output, before the output projection


class HeadValue(Choice):
    """The values `heads` may ablate every head with (names of ihlab.clamps.values)."""

    zero = "zero"
    mean = "mean"
    pattern_preserving = "pattern_preserving"
    value_preserving = "value_preserving"


class Checkpoints(Choice):
    all = "all"  # every checkpoint the run kept (step_*.ckpt, and last.ckpt's step)
    last = "last"  # the run's last step


@dataclass
class DissectConfig:
    runs: list[str] = MISSING  # run directories, seed-ensemble jobs and/or multirun folders
    checkpoints: Checkpoints = Checkpoints.all
    steps: list[int] | None = None  # these steps instead (each must have a checkpoint)
    heads: list[HeadValue] = field(default_factory=lambda: [HeadValue.zero])
    keep_one: bool = True
    layers: bool = True
    interventions: dict[str, ClampConfig] = field(default_factory=dict)  # any clamp, by name
    splits: list[str] | None = None  # None: every evaluation split of the run's data
    metric: str | None = None  # the attribution figure's; None: icl_score if defined, else loss
    batched: bool = True  # interventions as a batch axis and shared lower layers (false: a loop)
    batch_rows: int = 4096  # most sequences x interventions in one stacked forward
    out: str | None = None  # None: the first folder in `runs` that is not itself a run
    wandb: WandbMode = WandbMode.disabled  # offline / online: a `dissect` W&B run per run

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows={self.batch_rows} must be >= 1.")
        if self.steps is not None and (not self.steps or min(self.steps) < 0):
            raise ConfigError(f"steps={self.steps}: give one or more steps >= 0, or null.")
        if not self.runs:
            raise ConfigError("runs is empty. Fix: runs=[DIR,...] (run, job or multirun folders).")


@dataclass(frozen=True)
class Intervention:
    """One evaluation-time intervention: its clamps by name, and where it came from (`family`:
    heads/<value>, keep_one, layers or clamp; the `layer` and `head` it is about, if any)."""

    name: str
    family: str
    clamps: dict[str, ClampConfig]
    layer: int | None = None
    head: int | None = None


def generated(config: DissectConfig, model: ModelConfig) -> list[Intervention]:
    """The generated families for a model of this shape, then the listed clamps."""
    out: list[Intervention] = []
    layers, heads = range(model.n_layers), range(model.n_heads)
    for value in config.heads:
        out += [
            Intervention(
                f"{head_name(layer, head)} {value.value}",
                f"heads/{value.value}",
                {
                    "ablate": ClampConfig(
                        site=f"blocks.{layer}.{ABLATION_SITE}", value=value.value, heads=[head]
                    )
                },
                layer,
                head,
            )
            for layer in layers
            for head in heads
        ]
    if config.keep_one and model.n_heads > 1:
        out += [
            Intervention(
                f"keep {head_name(layer, head)}",
                "keep_one",
                {
                    "keep": ClampConfig(
                        site=f"blocks.{layer}.{ABLATION_SITE}", value="ablate_others", heads=[head]
                    )
                },
                layer,
                head,
            )
            for layer in layers
            for head in heads
        ]
    if config.layers:
        for layer in layers:
            clamps = {"attn": ClampConfig(site=f"blocks.{layer}.attn.out")}
            if not model.attn_only:
                clamps["mlp"] = ClampConfig(site=f"blocks.{layer}.mlp.out")
            out.append(Intervention(f"layer {layer}", "layers", clamps, layer))
    out += [
        Intervention(name, "clamp", {name: clamp}) for name, clamp in config.interventions.items()
    ]
    return out

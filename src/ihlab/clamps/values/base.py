"""The clamp-value interface and its registry: one small class per `value` name.

A value says what a clamp's selected entries hold. Each class states, beside the value itself:
- `check`: what a clamp with this value needs (site, data, fields), as a ConfigError naming the fix;
- `needs_pass`: whether the value comes from another forward run before the clamped one (`passes`)
  or is built when the site is reached (`intervention`);
- `differentiable`, the gradient rule: whether gradient reaches parameters through the value held
  at the clamp's entries (values this model computes) or not (hand-built values, another run's
  activations). The clamped entries never pass gradient to what they replace: every value acts as
  where(mask, value, x).
A new value kind is one module in this package: define the class and decorate it with `register`.
ihlab-probe applies the same classes, through the same `ClampSet` and `SiteHooks`, to pretrained
models. A value receives what it acts on (a `Target`: site, heads, positions, mask) and the
forward's `ClampContext`, never the whole clamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ihlab.clamps.context import ClampContext, Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.errors import ConfigError
from ihlab.sites import Intervention

PATTERN_SITES = ("attn.pattern",)
OPTIONAL_FIELDS = ("constant", "strength", "source", "reference_size", "checkpoint")


@dataclass
class Where:
    """What a value's check may look at: the clamp's site, the model, the data's inputs."""

    key: str  # clamps.<name>, for messages
    site: str
    layer: int | None
    kind: str  # the site kind: attn.z, resid_post, logits, ...
    sites: list[str]  # every site of the model
    n_layers: int
    inputs: frozenset[str]  # what the data's batches offer values (tokens, labels, target)

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.key}: {message}")


class ClampValue:
    """Base class: a value that holds nothing. Subclasses set `name` and override what they need."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # the ClampConfig fields only this kind reads
    needs_pass: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False

    def __init__(self, cfg: ClampConfig) -> None:
        self.cfg = cfg

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        """Raise where.fail(...) for a clamp this value cannot honour."""

    @classmethod
    def head_site(cls, c: ClampConfig) -> str:
        """The site whose heads `heads` / `select` name."""
        return c.site

    def heads(self, chosen: list[int], n_heads: int) -> list[int]:
        """The heads whose entries are held, from the heads the clamp names."""
        return chosen

    def reads(self) -> list[str]:
        """Sites of the clamped forward the value reads (they are cached for it)."""
        return []

    def reference_size(self) -> int:
        """Sequences of the run's fixed reference batch the value needs (0: none)."""
        return 0

    def prepare(self, target: Target, model_cfg: Any, io: Any) -> None:
        """Load what the value needs before step 0 (a graft's source model)."""

    def to(self, device: torch.device) -> None:
        """Move what `prepare` loaded."""

    def entries(self, target: Target, ctx: ClampContext, x: Tensor) -> Tensor:
        """Boolean mask, broadcastable to x, of the entries held."""
        return target.mask(x)

    def value(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        """The held value, broadcastable to x (direct values). `store`: the forward's cache."""
        raise NotImplementedError(f"value {self.name} is computed by a pass")

    def intervention(
        self, target: Target, ctx: ClampContext, store: dict[str, Tensor]
    ) -> Intervention:
        """The site function of a direct value: where(entries, value, x)."""

        def apply(x: Tensor) -> Tensor:
            return torch.where(self.entries(target, ctx, x), self.value(target, ctx, store, x), x)

        return apply

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        """Run the auxiliary forward; return the clamped forward's (site, intervention)s."""
        raise NotImplementedError(f"value {self.name} needs no pass")


VALUES: dict[str, type[ClampValue]] = {}


def register(cls: type[ClampValue]) -> type[ClampValue]:
    """Class decorator: make `cls` the value named `cls.name`."""
    if cls.name in VALUES:
        raise ValueError(f"clamp value {cls.name!r} is registered twice")
    VALUES[cls.name] = cls
    return cls


def check_fields(c: ClampConfig, where: Where, defaults: Any) -> None:
    """A field set away from its default that this value does not read is a mistake: name it."""
    cls = VALUES[c.value]
    for name in OPTIONAL_FIELDS:
        if name in cls.fields or getattr(c, name) == getattr(defaults, name):
            continue
        users = sorted(v.name for v in VALUES.values() if name in v.fields)
        raise where.fail(f"{name} is only used by value {' / '.join(users)}.")


def need_ablation_site(name: str, where: Where) -> None:
    """Head ablations act on a head's values or output."""
    if where.kind not in ("attn.v", "attn.z"):
        raise where.fail(f"value {name} ablates heads at attn.v or attn.z, got {where.site!r}.")

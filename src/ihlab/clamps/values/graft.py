"""Graft: the site holds what another run's trained model computes there on the same inputs
(that model frozen, so no gradient through the value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ihlab.clamps.context import Passes, Target
from ihlab.clamps.spec import ClampConfig
from ihlab.clamps.values.base import ClampValue, Where, register
from ihlab.errors import ConfigError
from ihlab.runs.checkpoints import CheckpointError, load_lab_model
from ihlab.sites import Intervention, SiteHooks


def load_graft_model(checkpoint: str, model_cfg: Any, io: Any, site: str) -> nn.Module:
    """The trained model of another run's checkpoint, frozen, checked to fit this run's site."""
    try:
        model = load_lab_model(checkpoint)
    except CheckpointError as err:
        raise ConfigError(f"graft checkpoint {err}") from err
    same = ("n_heads", "head_dim", "d_model")
    if model.io != io or any(getattr(model.cfg, k) != getattr(model_cfg, k) for k in same):
        raise ConfigError(
            f"graft checkpoint {checkpoint}: its model or data shape differs from this run's "
            f"({model.cfg}, {model.io}), so its {site} cannot stand in for this model's."
        )
    if site not in model.sites:
        raise ConfigError(f"graft checkpoint {checkpoint}: its model has no site {site!r}.")
    return model.requires_grad_(False)


@register
class Graft(ClampValue):
    """The site of `checkpoint`'s model on this forward's inputs."""

    name = "graft"
    fields = ("checkpoint",)
    needs_pass = True

    @classmethod
    def check(cls, c: ClampConfig, where: Where) -> None:
        if c.checkpoint is None:
            raise where.fail("value graft needs checkpoint=PATH (a checkpoint of another run).")
        if not Path(c.checkpoint).exists():
            raise where.fail(f"checkpoint={c.checkpoint!r} does not exist. Fix: give a .ckpt path.")

    def prepare(self, target: Target, model_cfg: Any, io: Any) -> None:
        self.model = load_graft_model(self.cfg.checkpoint, model_cfg, io, target.site)

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def passes(self, target: Target, aux: Passes) -> list[tuple[str, Intervention]]:
        hooks = SiteHooks(cache=[target.site])
        with torch.no_grad():
            self.model(aux.ctx.inputs, hooks)
        return [(target.site, target.holding(hooks.cache[target.site]))]

"""Optimizer and learning-rate schedule: Adam or AdamW, optional warm-up, then constant or decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ihlab.choices import Choice
from ihlab.errors import ConfigError


class OptimizerName(Choice):
    adam = "adam"
    adamw = "adamw"


class Schedule(Choice):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    schedule: Schedule = Schedule.constant  # after warm-up
    min_lr_ratio: float = 0.0  # floor of the cosine/linear decay, as a fraction of lr

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "eps": self.eps}
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"optim.{key}={value} must be a finite number > 0. Fix: set optim.{key}, "
                    "e.g. optim.lr=1e-3."
                )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"optim.weight_decay={self.weight_decay} must be a finite number >= 0."
            )
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"optim.{key}={value} must be in [0, 1) (Adam's moment decay). Fix: e.g. "
                    "optim.beta1=0.9 optim.beta2=0.999."
                )
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")

    @property
    def scheduled(self) -> bool:
        """Whether the lr ever differs from `lr` (else no scheduler is attached)."""
        return self.warmup_steps > 0 or self.schedule != Schedule.constant


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if cfg.name == OptimizerName.adam else torch.optim.AdamW
    return cls(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of cfg.lr at an optimizer step: linear warm-up, then the schedule to max_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == Schedule.constant:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    decay = (
        0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == Schedule.cosine
        else 1 - progress
    )
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

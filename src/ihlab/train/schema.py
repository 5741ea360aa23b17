"""Structured configs: the schema every Hydra config of `ihlab-train` is validated against.

Hydra checks keys and types as it composes (an unknown key or a wrong type fails naming the key);
`to_train_config` then builds the dataclasses, whose `__post_init__` checks values and
cross-field rules (e.g. `model.d_model` divisible by `model.n_heads`) and raises `ConfigError`
naming the key and the fix. Both happen before any data is made or any model is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ihlab.choices import Choice
from ihlab.clamps.checks import check_clamps
from ihlab.clamps.spec import ClampConfig
from ihlab.data import FAMILY_CONFIGS, DataConfig
from ihlab.data.base import family_config_of
from ihlab.errors import ConfigError, to_config
from ihlab.model import ModelConfig
from ihlab.runs.files import RunFiles
from ihlab.runs.naming import register_resolvers
from ihlab.tracking.wandb_run import WandbConfig
from ihlab.train.optim import OptimConfig

MAX_SEED = 2**32 - 1
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    accelerator: str = "cpu"  # "gpu" works where CUDA is available
    devices: int = 1
    # Lightning's precision of the training steps: 32-true, or bf16-mixed (bfloat16 autocast,
    # float32 weights); evaluation and head scores always run in float32 (train/module.py).
    # Measured slower than 32-true on every experiment here (docs/speed.md), so not the default.
    precision: str = "32-true"
    eval_every: int = 100  # steps between evaluations of every split
    eval_at_start: bool = False  # also evaluate the initial model (step 0)
    score_every: int = 100  # steps between per-head scores on the probe batch (0: never)
    log_every: int = 10  # steps between logged training scalars
    checkpoint_every: int = 500  # steps between periodic checkpoints (last.ckpt is always kept)
    # CPU threads for torch (0: torch's default, one per core). Jobs that share cores, such as a
    # parallel multirun, must split them: two 2-thread jobs on 2 cores run ~10x slower than 1+1.
    threads: int = 0
    progress_bar: bool = True
    progress_refresh: int = 10  # steps between progress-bar redraws
    gradient_clip_val: float | None = None
    # Lightning's deterministic mode; CPU kernels are already deterministic for a fixed thread
    # count (tests check identical metrics), and this costs ~15% of CPU throughput.
    deterministic: bool = False
    # With clamps: also evaluate (and score heads) without them, logged under "unclamped/".
    eval_unclamped: bool = False
    # A training loss above divergence_factor x ln(output size) (the uniform guess's loss), or a
    # non-finite one, stops the run with status "diverged". 0: only non-finite losses stop it.
    divergence_factor: float = 10.0

    def __post_init__(self) -> None:
        for key in ("max_steps", "eval_every", "log_every", "checkpoint_every", "progress_refresh"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"trainer.{key}={getattr(self, key)} must be >= 1. Fix: set trainer.{key} to "
                    "a positive number of steps."
                )
        if self.devices < 1:
            raise ConfigError(f"trainer.devices={self.devices} must be >= 1.")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision={self.precision} is not a precision the lab trains in. Fix: "
                f"set trainer.precision to one of {', '.join(PRECISIONS)} (16-mixed on a GPU only)."
            )
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            raise ConfigError(
                "trainer.precision=16-mixed needs a GPU (float16 autocast). Fix: use "
                "trainer.precision=bf16-mixed on the CPU, or trainer=gpu."
            )
        if self.threads < 0:
            raise ConfigError(f"trainer.threads={self.threads} must be >= 0 (0: torch's default).")
        if self.score_every < 0:
            raise ConfigError(f"trainer.score_every={self.score_every} must be >= 0 (0: never).")
        clip = self.gradient_clip_val
        if clip is not None and not (math.isfinite(clip) and clip > 0):
            raise ConfigError(
                f"trainer.gradient_clip_val={clip} must be a finite number > 0, or null for no "
                "clipping."
            )
        if not (math.isfinite(self.divergence_factor) and self.divergence_factor >= 0):
            raise ConfigError(
                f"trainer.divergence_factor={self.divergence_factor} must be a finite number "
                ">= 0 (0: stop only on non-finite losses)."
            )


class SeedRoute(Choice):
    """How a multirun trains `seeds=[...]` (train/routes.py)."""

    auto = "auto"  # batched where that is measured faster (routes.seed_route), else one per seed
    batched = "batched"  # one seed-ensemble job
    separate = "separate"  # one run per seed


class ResumeMode(Choice):
    auto = "auto"  # a directory holding this same run, unfinished: continue it; finished: skip
    never = "never"  # refuse any directory that already holds a run


@dataclass
class TrainConfig:
    name: str = "default"  # experiment name: W&B group prefix and output folder
    # Condition within the experiment; conf/train.yaml derives it from the clamp names.
    condition: str = "baseline"
    seed: int = 0
    # A seed ensemble: these seeds trained as one batched computation, each writing the run
    # directory its single run would (train/members.py). None: one run of `seed`.
    seeds: list[int] | None = None
    # How a multirun trains `seeds`: auto picks by measurement (train/routes.py); a single
    # command (no -m) always trains them as one batched job.
    seed_route: SeedRoute = SeedRoute.auto
    ckpt_path: str | None = None  # resume from this checkpoint (in its own run directory)
    resume: ResumeMode = ResumeMode.auto  # what a start in a directory holding this run does
    replace: bool = False  # move whatever the run directory holds aside, then start fresh
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING  # a family's DataConfig, typed by the data group's schema (data/*.py)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    clamps: dict[str, ClampConfig] = field(default_factory=dict)  # name -> clamp (clamps/spec.py)
    # Heads an experiment names for its clamp presets, read as ${named_heads.<name>}: e.g. the
    # few-shot experiments' `kept` layer-2 head and `prev_token` layer-1 head (Singh et al.).
    named_heads: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataConfig):
            raise ConfigError(
                f"data must come from a data config (data={'|'.join(sorted(FAMILY_CONFIGS))}), "
                f"got {type(self.data).__name__}."
            )
        for key, seed in [("seed", self.seed), *(("seeds", s) for s in self.seeds or [])]:
            if not 0 <= seed <= MAX_SEED:
                where = f"seed={seed}" if key == "seed" else f"seeds={self.seeds}: {seed}"
                raise ConfigError(
                    f"{where} must be between 0 and {MAX_SEED} (numpy's seed range; "
                    "Lightning would silently replace anything else by 0)."
                )
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(
                f"seeds={self.seeds} must list distinct seeds, at least one. Fix: e.g. "
                "seeds=[0,1,2,3], or seed=3 for one run."
            )
        check_clamps(self.clamps, self.model, self.data)

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.condition}-s{self.seed}"

    @property
    def group(self) -> str:
        return f"{self.name}/{self.condition}"


def register_configs() -> None:
    """Put the schemas where the YAML files in conf/ find them; register the config resolvers."""
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, schema in FAMILY_CONFIGS.items():
        cs.store(group="schema/data", name=name, node=schema)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Validated dataclasses from a composed config; ConfigError names the bad key and the fix."""
    return to_config(cfg, TrainConfig)


def read_run_config(run_dir: Path) -> TrainConfig:
    """The validated config a run trained with, from its `.hydra/resolved.yaml` (its data family
    told by its data keys, `family_config_of`); ConfigError naming the file if it cannot be read
    or no longer validates."""
    path = RunFiles(Path(run_dir)).resolved
    try:
        stored = OmegaConf.load(path)
        schema = OmegaConf.structured(TrainConfig)
        schema.data = OmegaConf.structured(family_config_of(stored.data.keys()))
        return to_config(OmegaConf.merge(schema, stored), TrainConfig)
    except (OSError, ValueError, OmegaConfBaseException) as err:
        raise ConfigError(f"{path}: not a readable ihlab-train config ({err}).") from None

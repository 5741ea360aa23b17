"""Structured configs: the schema every Hydra config of `ihlab-train` is validated against.

Hydra checks keys and types as it composes (an unknown key or a wrong type fails naming the key);
`to_train_config` then builds the dataclasses, whose `__post_init__` checks values and
cross-field rules (e.g. `model.d_model` divisible by `model.n_heads`) and raises `ConfigError`
naming the key and the fix. Both happen before any data is made or any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, ValidationError

from ihlab.clamps import ClampConfig, check_clamps
from ihlab.data import FewShotConfig, RepeatedTokensConfig
from ihlab.errors import ConfigError
from ihlab.model import ModelConfig
from ihlab.optim import OptimConfig


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    accelerator: str = "cpu"  # "gpu" works where CUDA is available
    devices: int = 1
    precision: str = "32-true"
    eval_every: int = 100  # steps between evaluations of every split
    score_every: int = 100  # steps between per-head scores on the probe batch (0: never)
    log_every: int = 10  # steps between logged training scalars
    checkpoint_every: int = 500  # steps between periodic checkpoints (last.ckpt is always kept)
    icl_early: int | None = None  # target positions of the ICL score; None: the data's default
    icl_late: int | None = None
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

    def __post_init__(self) -> None:
        for key in ("max_steps", "eval_every", "log_every", "checkpoint_every", "progress_refresh"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}={getattr(self, key)} must be >= 1.")
        if self.threads < 0:
            raise ConfigError(f"trainer.threads={self.threads} must be >= 0 (0: torch's default).")
        if self.score_every < 0:
            raise ConfigError(f"trainer.score_every={self.score_every} must be >= 0 (0: never).")


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "ihlab"
    entity: str | None = None
    job_type: str = "train"
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    name: str = "default"  # experiment name: W&B group prefix and output folder
    # Condition within the experiment; conf/train.yaml derives it from the clamp names.
    condition: str = "baseline"
    seed: int = 0
    ckpt_path: str | None = None  # resume from this checkpoint
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING  # RepeatedTokensConfig | FewShotConfig, typed by the data group's schema
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    clamps: dict[str, ClampConfig] = field(default_factory=dict)  # name -> clamp (clamps.py)

    def __post_init__(self) -> None:
        if not isinstance(self.data, RepeatedTokensConfig | FewShotConfig):
            raise ConfigError(
                f"data must come from a data config (data=repeated_tokens or data=fewshot), "
                f"got {type(self.data).__name__}."
            )
        check_clamps(self.clamps, self.model, self.data)

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.condition}-s{self.seed}"

    @property
    def group(self) -> str:
        return f"{self.name}/{self.condition}"


def clamp_condition(clamps: DictConfig) -> str:
    """The default condition name: the clamp names joined by "+", or "baseline" without clamps."""
    return "+".join(str(name) for name in clamps) or "baseline"


def register_configs() -> None:
    """Put the schemas where the YAML files in conf/ find them; register the config resolvers."""
    OmegaConf.register_new_resolver("clamp_condition", clamp_condition, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/data", name="repeated_tokens", node=RepeatedTokensConfig)
    cs.store(group="schema/data", name="fewshot", node=FewShotConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Validated dataclasses from a composed config; ConfigError names the bad key and the fix."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"{err.full_key} is required (??? in the config). Fix: set it on the command line, "
            f"e.g. {err.full_key}=VALUE."
        ) from err
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}: {err.msg}") from err
    if not isinstance(config, TrainConfig):
        raise ConfigError("the config is not a train config: compose it from conf/train.yaml.")
    return config

"""Errors the lab raises for bad input (each names the problem and the fix), and the one way a
composed Hydra config becomes a validated dataclass."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, ValidationError

T = TypeVar("T")
E = TypeVar("E", bound=Enum)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key (e.g. `model.d_model`) and the fix."""


def choice(kind: type[E], value: object, key: str, what: str) -> E:
    """`value` as a member of `kind` (a dataclass built directly, not through Hydra, may hold the
    plain string); otherwise a ConfigError naming `key`, saying it is not `what`, listing the
    choices."""
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(str(member.value) for member in kind)
        message = f"{key}={value} is not {what}. Fix: set {key} to one of {names}."
        raise ConfigError(message) from None


def to_config(cfg: DictConfig, schema: type[T]) -> T:
    """The dataclass `schema` built from a composed config. Hydra has checked keys and types as
    it composed; here the dataclasses' own checks run (their `__post_init__` raises ConfigError
    naming the key), and a missing (???) or ill-typed value becomes a ConfigError naming it."""
    try:
        config = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ConfigError(
            f"{err.full_key} is required (??? in the config). Fix: set it on the command line, "
            f"e.g. {err.full_key}=VALUE."
        ) from err
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}: {err.msg}") from err
    except InterpolationResolutionError as err:
        cause: BaseException | None = err  # a ConfigError of one of the lab's resolvers, if any
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise ConfigError(f"{err.full_key}: {cause}") from err
    if not isinstance(config, schema):
        raise ConfigError(f"the config is not a {schema.__name__}: compose it from its YAML file.")
    return config

"""The config resolvers of `conf/`: how run directories are named
(`outputs/<experiment>/<time>_<condition>_s<seed>`, a multirun's `<job>_<condition>_s<seed>`, a
resume in a checkpoint's own run directory), the heads an experiment names for clamp presets, and
values a study sets per condition.
`ihlab-compare` registers them too, to read the unresolved `.hydra/config.yaml` of runs that have
no `resolved.yaml`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ihlab.errors import ConfigError
from ihlab.runs.files import CHECKPOINTS


def clamp_condition(clamps: Iterable[str]) -> str:
    """The default condition name: the clamp names joined by "+", or "baseline" without clamps."""
    return "+".join(str(name) for name in clamps) or "baseline"


def per_condition(clamps: Iterable[str], values: Mapping[str, Any], default: Any) -> Any:
    """`${per_condition:${clamps},{one_head: 62500},9375}`: a value chosen by the clamp condition
    (`clamp_condition`), `default` for a condition not listed. A study whose conditions run for
    different lengths (Singh et al.'s normal training against its clamp runs) says so in one
    sweep."""
    return values.get(clamp_condition(clamps), default)


def seed_tag(seed: int, seeds: list[int] | None) -> str:
    """The seed part of a run directory's name: "s3", or for an ensemble "s0-7" (a range) or
    "s0+2+5"."""
    if not seeds:
        return f"s{seed}"
    listed = [int(s) for s in seeds]
    consecutive = listed == list(range(listed[0], listed[0] + len(listed)))
    return (
        f"s{listed[0]}-{listed[-1]}"
        if consecutive and len(listed) > 1
        else "s" + "+".join(map(str, listed))
    )


def run_dir_of(ckpt_path: str | None, new_dir: str) -> str:
    """The run directory of a run: with `ckpt_path` inside `<run>/checkpoints/`, that run's
    directory (a resume continues in place), else `new_dir`."""
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).expanduser()
        if ckpt.parent.name == CHECKPOINTS:
            return str(ckpt.parent.parent)
    return new_dir


def named_heads(name: str, _root_: DictConfig) -> list[int] | None:
    """`${named_heads:kept}` in a clamp preset: the heads the experiment names `kept`.

    A preset is merged on its own first (its root has no `named_heads`): None there. In the
    composed config, a name the experiment does not give is a ConfigError naming the fix.
    """
    if "named_heads" not in _root_:
        return None
    heads = _root_.named_heads.get(name)
    if heads is None:
        raise ConfigError(
            f"this clamp preset keeps or clamps the heads named_heads.{name}, which the "
            "experiment does not name. Fix: use an experiment that names them "
            f"(experiment=fewshot_singh_cpu) or name them: +named_heads.{name}=[HEAD]."
        )
    return list(heads)


def register_resolvers() -> None:
    """Make the resolvers available to OmegaConf (idempotent)."""
    OmegaConf.register_new_resolver("clamp_condition", clamp_condition, replace=True)
    OmegaConf.register_new_resolver("ihlab_run_dir", run_dir_of, replace=True)
    OmegaConf.register_new_resolver("per_condition", per_condition, replace=True)
    OmegaConf.register_new_resolver("ihlab_seed_tag", seed_tag, replace=True)
    OmegaConf.register_new_resolver("named_heads", named_heads, replace=True)

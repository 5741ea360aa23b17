"""How run directories are named: the config resolvers that `conf/train.yaml` uses to build
`outputs/<experiment>/<time>_<condition>_s<seed>` (and a multirun's `<job>_<condition>_s<seed>`),
and to resume in a checkpoint's own run directory. `ihlab-compare` registers them too, to read
the unresolved `.hydra/config.yaml` of runs that have no `resolved.yaml`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from ihlab.runs.files import CHECKPOINTS


def clamp_condition(clamps: Iterable[str]) -> str:
    """The default condition name: the clamp names joined by "+", or "baseline" without clamps."""
    return "+".join(str(name) for name in clamps) or "baseline"


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


def register_resolvers() -> None:
    """Make the resolvers available to OmegaConf (idempotent)."""
    OmegaConf.register_new_resolver("clamp_condition", clamp_condition, replace=True)
    OmegaConf.register_new_resolver("ihlab_run_dir", run_dir_of, replace=True)
    OmegaConf.register_new_resolver("ihlab_seed_tag", seed_tag, replace=True)

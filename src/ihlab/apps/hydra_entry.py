"""The one entry helper of the Hydra apps (`ihlab-train`, `ihlab-compare`, `ihlab-probe`,
`ihlab-dashboard`): where the configs live, and how a bad config ends the process.

Each app composes `conf/<name>.yaml` against the schema its library registered, hands the config
to one function, and ends with one line naming the bad key if the config was refused:
`ihlab-<app>: config error: <key>: <what and the fix>`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig

from ihlab.errors import ConfigError

T = TypeVar("T")


def config_dir() -> str:
    """The absolute path of the `conf/` folder: packaged inside ihlab (wheel installs) or at the
    repository root (source checkouts), whatever the current directory."""
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "conf"
    return str(packaged if packaged.is_dir() else here.parents[3] / "conf")


def hydra_app(app: str, config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], T]]:
    """Decorate an app's function of the composed config into its entry point: Hydra composes
    `conf/<config_name>.yaml` (validated against the registered schema) and calls it; a refused
    config ends the process with `ihlab-<app>: config error: ...` (exit status 1)."""

    def decorate(run: Callable[[DictConfig], T]) -> Callable[[], T]:
        @hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)
        @functools.wraps(run)
        def main(cfg: DictConfig) -> Any:
            try:
                return run(cfg)
            except ConfigError as err:
                raise SystemExit(f"ihlab-{app}: config error: {err}") from None

        return main

    return decorate

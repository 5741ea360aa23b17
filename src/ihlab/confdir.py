"""Where the Hydra configs live: `conf/` packaged inside ihlab (wheel installs) or at the
repository root (source checkouts). A module of its own so that the apps that only need the path
(compare, probe, dashboard) do not import training code."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """The absolute path of the `conf/` folder, whatever the current directory."""
    packaged = Path(__file__).resolve().parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")

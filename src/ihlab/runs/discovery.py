"""Finding run directories: among given paths, in multirun folders, inside ensemble jobs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ihlab.runs.files import RunFiles


def is_run_dir(path: Path) -> bool:
    """A run directory has a summary.json (finished) or a metrics.csv (still going)."""
    files = RunFiles(path)
    return files.summary.is_file() or files.metrics.is_file()


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories among `paths`; a folder that is not a run is searched one and two levels
    down (a multirun folder, an ensemble job, or the folder holding several). Hidden folders are
    skipped. ValueError naming a path that is not a directory."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path}: no such directory.")
        if is_run_dir(path):
            found[path.resolve()] = None
            continue
        below = sorted(
            d
            for d in [*path.glob("*"), *path.glob("*/*")]
            if d.is_dir() and not any(p.startswith(".") for p in d.relative_to(path).parts)
        )
        found.update((d.resolve(), None) for d in below if is_run_dir(d))
    return list(found)

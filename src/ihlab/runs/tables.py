"""The run directory's tables: `metrics.csv` (every logged scalar, one row per logging step,
columns `step` and `sequences` first) and the per-evaluation step tables (one vector per step,
e.g. per-example losses), each read and written here and nowhere else."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ihlab.runs.atomic import open_atomic

FIRST_COLUMNS = ("step", "sequences")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (empty cells left out; `step` and `sequences`
    as ints); ValueError naming the file and line if it is not a metrics.csv."""
    rows = []
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames[:2]) != list(FIRST_COLUMNS):
            raise ValueError(
                f"{path} is not a metrics.csv: its header must start with step,sequences."
            )
        for row in reader:
            try:
                values: dict[str, float] = {
                    k: float(v) for k, v in row.items() if v not in ("", None) and k is not None
                }
                values["step"], values["sequences"] = int(values["step"]), int(values["sequences"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path}, line {reader.line_num}: not a metrics row ({err})."
                ) from None
            rows.append(values)
    return rows


def write_metrics(path: Path, rows: Mapping[int, Mapping[str, float]]) -> None:
    """metrics.csv from rows by step (atomically): `step`, `sequences`, then every other column
    any row has, sorted; a row leaves the columns it lacks empty."""
    keys = sorted({k for row in rows.values() for k in row} - set(FIRST_COLUMNS))
    with open_atomic(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIRST_COLUMNS, *keys])
        writer.writeheader()
        for step in sorted(rows):
            writer.writerow({k: _fmt(v) for k, v in rows[step].items()})


def _fmt(value: float) -> str | int:
    return value if isinstance(value, int) else repr(float(value))


class StepTable:
    """A CSV holding one vector per step (loss by position, per-example losses): header
    `step,<names>`, rows ordered by step and rewritten on every save. An existing file is read
    first, so a resumed run keeps its earlier rows (`truncate_after` drops the ones it redoes)."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names = Path(path), list(names)
        self.rows: dict[int, list[float]] = {}
        if self.path.exists():
            steps, _, values = read_step_table(self.path)
            self.rows = {int(s): list(v) for s, v in zip(steps, values, strict=True)}

    def add(self, step: int, values: Sequence[float]) -> None:
        self.rows[step] = [float(v) for v in values]

    def truncate_after(self, step: int) -> None:
        self.rows = {s: r for s, r in self.rows.items() if s <= step}

    def save(self) -> None:
        with open_atomic(self.path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *self.names])
            for step in sorted(self.rows):
                writer.writerow([step, *self.rows[step]])


def read_step_table(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(steps (n,), column names, values (n, columns)) of a StepTable CSV; ValueError naming the
    file if it is not one."""
    try:
        with Path(path).open() as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = [[float(x) for x in row] for row in reader]
        data = np.array(rows, dtype=float).reshape(len(rows), len(header))
    except (StopIteration, ValueError) as err:
        raise ValueError(f"{path} is not a readable step table ({err or 'empty file'}).") from None
    return data[:, 0].astype(int), header[1:], data[:, 1:]

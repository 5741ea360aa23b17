"""Data families (tasks): infinite seeded training streams, fixed evaluation sets, probe batches,
and what each family measures (base.py). Every module of this package is imported here, so a
family registers itself just by being a file in it."""

from __future__ import annotations

import importlib
import pkgutil

from ihlab.data.base import (
    FAMILY_NAMES,
    TASKS,
    Batch,
    DataConfig,
    LearningTime,
    ModelIO,
    SplitMetrics,
    Task,
    make_datamodule,
)
from ihlab.data.fewshot import FeatureSource, FewShotConfig, FewShotDataModule, Split
from ihlab.data.repeated import RepeatedTokensConfig, RepeatedTokensDataModule
from ihlab.data.stream import BatchStream

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "FAMILY_NAMES",
    "TASKS",
    "Batch",
    "BatchStream",
    "DataConfig",
    "FeatureSource",
    "FewShotConfig",
    "FewShotDataModule",
    "LearningTime",
    "ModelIO",
    "RepeatedTokensConfig",
    "RepeatedTokensDataModule",
    "Split",
    "SplitMetrics",
    "Task",
    "make_datamodule",
]

"""Data: infinite seeded training streams, fixed evaluation sets and probe batches."""

from __future__ import annotations

import lightning as L

from ihlab.data.base import ModelIO
from ihlab.data.fewshot import FeatureSource, FewShotConfig, FewShotDataModule, Split
from ihlab.data.repeated import RepeatedTokensConfig, RepeatedTokensDataModule
from ihlab.data.stream import BatchStream

__all__ = [
    "BatchStream",
    "FeatureSource",
    "FewShotConfig",
    "FewShotDataModule",
    "ModelIO",
    "RepeatedTokensConfig",
    "RepeatedTokensDataModule",
    "Split",
    "make_datamodule",
]


def make_datamodule(cfg: RepeatedTokensConfig | FewShotConfig, seed: int) -> L.LightningDataModule:
    """The datamodule for a data config, chosen by the config's type."""
    if isinstance(cfg, RepeatedTokensConfig):
        return RepeatedTokensDataModule(cfg, seed)
    if isinstance(cfg, FewShotConfig):
        return FewShotDataModule(cfg, seed)
    raise TypeError(
        f"make_datamodule got a {type(cfg).__name__}; expected RepeatedTokensConfig or "
        "FewShotConfig (convert an OmegaConf config with OmegaConf.to_object first)."
    )

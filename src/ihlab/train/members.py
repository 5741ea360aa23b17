"""Seed ensembles: the members (seeds) of one job trained as one batched computation.

A job's members share one config and differ only in their seed. Their parameters live stacked on a
leading member axis, so one optimizer step updates all of them; Adam's update is elementwise, so
each member moves exactly as its own single run would (gradient clipping is applied per member,
and a diverging member is taken out of the loss alone). Each member draws exactly the init and
the batches its single run would (the same derived seeds), from its own data family.

The forward of all members is one `torch.func.vmap` of `functional_call` over the member axis, on
batches stacked the same way. Inside it every member sees single-run shapes, so the model, its
sites, every clamp value and every metric work unchanged: that is why vmap, rather than batched
matmuls written into the model. Attention takes the explicit path under vmap (PyTorch's fused
kernel has no batching rule). With one member no vmap is used at all: a single run computes
exactly what it always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ihlab.data.base import Batch, DataFamily
from ihlab.data.loaders import fixed_loader, stream_loader


def param_key(name: str) -> str:
    """A parameter's name as a ParameterDict key (no dots allowed there)."""
    return name.replace(".", "__")


def param_name(key: str) -> str:
    """Inverse of `param_key`."""
    return key.replace("__", ".")


def stack(batches: Sequence[Batch]) -> Batch:
    """Members' batches (same keys and shapes) on a leading member axis: (member, ...)."""
    return {key: torch.stack([b[key] for b in batches]) for key in batches[0]}


def member_batch(batch: Batch, member: int) -> Batch:
    """One member's slice of a stacked batch."""
    return {key: value[member] for key, value in batch.items()}


def member_state(params: Mapping[str, Tensor], member: int) -> dict[str, Tensor]:
    """One member's parameters, by the model's own names, from stacked ones (keys `param_key`)."""
    return {param_name(key): value[member] for key, value in params.items()}


class MemberBatches(L.LightningDataModule):
    """The batches of a job's members, one data family (seed) each, stacked on a member axis:
    (member, batch, ...); evaluation sets are cut into batches along the sequences (axis 1). A
    single run is a job of one member."""

    def __init__(self, families: Sequence[DataFamily]) -> None:
        super().__init__()
        self.families = list(families)
        self.eval_splits = self.families[0].eval_splits

    def train_batch(self, step: int) -> Batch:
        return stack([family.train_batch(step) for family in self.families])

    def train_dataloader(self) -> DataLoader:
        return stream_loader(self, self.train_batch)

    @cached_property
    def eval_sets(self) -> dict[str, Batch]:
        """Every member's fixed evaluation sequences per split, (member, eval_size, ...)."""
        return {s: stack([f.eval_sets[s] for f in self.families]) for s in self.eval_splits}

    def val_dataloader(self) -> list[DataLoader]:
        size = self.families[0].cfg.eval_batch_size
        return [fixed_loader(self.eval_sets[s], size, axis=1) for s in self.eval_splits]

    def probe_batch(self) -> Batch:
        return stack([family.probe_batch() for family in self.families])

    def reference_batch(self, n: int) -> Batch:
        return stack([family.reference_batch(n) for family in self.families])

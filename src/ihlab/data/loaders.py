"""Loaders shared by the datamodules: the infinite training stream and fixed evaluation sets.

Training batches are a pure function of (seed, step), so a run resumed at step s sees exactly the
batches s, s+1, ... that an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset


class BatchStream(IterableDataset):
    """Yields make_batch(step) for step = start_step(), start_step() + 1, ... forever.

    `start_step` is read at the first `next()`, not at `iter()`, so a Trainer that restores
    `global_step` from a checkpoint after building the iterator still resumes at the right step.
    """

    def __init__(
        self, make_batch: Callable[[int], dict[str, Tensor]], start_step: Callable[[], int]
    ) -> None:
        super().__init__()
        self.make_batch = make_batch
        self.start_step = start_step

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        step = self.start_step()
        while True:
            yield self.make_batch(step)
            step += 1


class FixedBatches(Dataset):
    """A fixed set of examples (a dict of tensors) served as consecutive slices of `batch_size`
    along `axis`: item i is the i-th batch, a view, so no row is copied or restacked."""

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, axis: int = 0) -> None:
        self.tensors, self.batch_size, self.axis = tensors, batch_size, axis
        self.n = next(iter(tensors.values())).shape[axis]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.batch_size
        return {
            k: v.narrow(self.axis, start, min(self.batch_size, self.n - start))
            for k, v in self.tensors.items()
        }


def fixed_loader(tensors: dict[str, Tensor], batch_size: int, axis: int = 0) -> DataLoader:
    """Batches of a fixed evaluation set, in order: slices of `batch_size` examples along
    `axis` (1 for sets stacked on a leading member axis)."""
    return DataLoader(FixedBatches(tensors, batch_size, axis), batch_size=None, shuffle=False)


def stream_loader(
    datamodule: LightningDataModule, make_batch: Callable[[int], dict[str, Tensor]]
) -> DataLoader:
    """A datamodule's infinite training loader, starting at its trainer's global step."""

    def start_step() -> int:
        return datamodule.trainer.global_step if datamodule.trainer is not None else 0

    return DataLoader(BatchStream(make_batch, start_step), batch_size=None, num_workers=0)

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


class TensorDictDataset(Dataset):
    """A fixed set of examples held as a dict of tensors that share their first dimension."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {key: value[i] for key, value in self.tensors.items()}


def fixed_loader(tensors: dict[str, Tensor], batch_size: int) -> DataLoader:
    """Batches of a fixed evaluation set, in order; the default collate restacks the rows."""
    return DataLoader(TensorDictDataset(tensors), batch_size=batch_size, shuffle=False)


def stream_loader(
    datamodule: LightningDataModule, make_batch: Callable[[int], dict[str, Tensor]]
) -> DataLoader:
    """A datamodule's infinite training loader, starting at its trainer's global step."""

    def start_step() -> int:
        return datamodule.trainer.global_step if datamodule.trainer is not None else 0

    return DataLoader(BatchStream(make_batch, start_step), batch_size=None, num_workers=0)

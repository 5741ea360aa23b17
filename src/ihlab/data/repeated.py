"""Repeated random tokens: the simplest data on which induction heads form.

A sequence is [BOS] + random prefix + a random segment repeated 1 + n_repeats times. Every token of
the repeats after the first one can be predicted by copying what followed the same token earlier;
nothing else can be predicted at all, so the loss on the repeats isolates in-context copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ihlab.data.base import ModelIO
from ihlab.data.stream import BatchStream, fixed_loader
from ihlab.errors import ConfigError
from ihlab.seeding import generator


@dataclass
class RepeatedTokensConfig:
    """Repeated-token sequences; `bos` prepends token id `vocab_size`."""

    vocab_size: int = 64
    prefix_len: int = 0
    segment_len: int = 32
    n_repeats: int = 1
    bos: bool = False
    batch_size: int = 64
    eval_size: int = 512
    eval_batch_size: int = 256
    probe_size: int = 32

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ConfigError(
                f"data.vocab_size={self.vocab_size} must be at least 2: with one token there is "
                "nothing to copy. Fix: raise data.vocab_size."
            )
        if self.segment_len < 2:
            raise ConfigError(
                f"data.segment_len={self.segment_len} must be at least 2: a repeat of one token "
                "leaves nothing for induction to predict. Fix: raise data.segment_len."
            )
        if self.n_repeats < 1:
            raise ConfigError(
                f"data.n_repeats={self.n_repeats} must be at least 1: without a repeat there is "
                "nothing to copy. Fix: set data.n_repeats >= 1."
            )
        if self.prefix_len < 0:
            raise ConfigError(
                f"data.prefix_len={self.prefix_len} must be >= 0. Fix: set data.prefix_len=0 "
                "for no prefix."
            )
        for key in ("batch_size", "eval_size", "eval_batch_size", "probe_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"data.{key}={getattr(self, key)} must be positive. Fix: set data.{key} >= 1."
                )

    @property
    def seq_len(self) -> int:
        """Tokens per sequence: BOS, prefix, the segment and its repeats."""
        return int(self.bos) + self.prefix_len + self.segment_len * (1 + self.n_repeats)


def sample_repeated(cfg: RepeatedTokensConfig, n: int, g: torch.Generator) -> Tensor:
    """n sequences of [BOS] + prefix + segment * (1 + n_repeats), shape (n, seq_len)."""
    fresh = torch.randint(cfg.vocab_size, (n, cfg.prefix_len + cfg.segment_len), generator=g)
    prefix, segment = fresh[:, : cfg.prefix_len], fresh[:, cfg.prefix_len :]  # (n, P), (n, S)
    parts = [prefix, segment.repeat(1, 1 + cfg.n_repeats)]  # (n, P), (n, S * (1 + R))
    if cfg.bos:
        parts.insert(0, torch.full((n, 1), cfg.vocab_size))  # (n, 1)
    return torch.cat(parts, dim=1)  # (n, seq_len)


class RepeatedTokensDataModule(L.LightningDataModule):
    """Training stream, one fixed eval set, a probe batch and the target masks for scoring."""

    eval_splits = ("eval",)

    def __init__(self, cfg: RepeatedTokensConfig, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        d_vocab = cfg.vocab_size + int(cfg.bos)
        self.io = ModelIO(n_ctx=cfg.seq_len, d_vocab=d_vocab, d_vocab_out=d_vocab)

    def train_batch(self, step: int) -> dict[str, Tensor]:
        """The training batch of one step: a pure function of (seed, step)."""
        g = generator(self.seed, "train", step)
        return {"tokens": sample_repeated(self.cfg, self.cfg.batch_size, g)}  # (batch, seq)

    def train_dataloader(self) -> DataLoader:
        stream = BatchStream(
            self.train_batch,
            start_step=lambda: self.trainer.global_step if self.trainer is not None else 0,
        )
        return DataLoader(stream, batch_size=None, num_workers=0)

    @cached_property
    def eval_set(self) -> dict[str, Tensor]:
        """The fixed evaluation sequences, made once from the seed."""
        g = generator(self.seed, "eval", "eval")
        return {"tokens": sample_repeated(self.cfg, self.cfg.eval_size, g)}  # (eval_size, seq)

    def val_dataloader(self) -> list[DataLoader]:
        return [fixed_loader(self.eval_set, self.cfg.eval_batch_size)]

    @cached_property
    def _probe_tokens(self) -> Tensor:
        return sample_repeated(self.cfg, self.cfg.probe_size, generator(self.seed, "probe"))

    def probe_batch(self) -> dict[str, Tensor]:
        """A small fixed batch for attention probes; "ids" are the tokens themselves."""
        tokens = self._probe_tokens  # (probe_size, seq)
        return {"tokens": tokens, "ids": tokens}

    @property
    def _first_repeat_start(self) -> int:
        """Position of the first token of the first repeat."""
        return int(self.cfg.bos) + self.cfg.prefix_len + self.cfg.segment_len

    def target_masks(self) -> dict[str, Tensor]:
        """Split the seq_len - 1 next-token targets (target t predicts token t + 1) in two.

        "first": targets no copying can predict (after BOS, the prefix, the first occurrence of
        the segment and the first token of the first repeat); "repeat": all the others.
        """
        t = torch.arange(self.cfg.seq_len - 1)  # (seq - 1,)
        repeat = t >= self._first_repeat_start  # (seq - 1,) predicts a repeat token but the first
        return {"first": ~repeat, "repeat": repeat}

    def icl_positions(self) -> tuple[int, int]:
        """Default (early, late) targets for the ICL score.

        early: the middle of the first occurrence, chosen so it predicts a token still inside
        that occurrence; late: the last target.
        """
        early = self._first_repeat_start - self.cfg.segment_len + (self.cfg.segment_len - 1) // 2
        return early, self.cfg.seq_len - 2

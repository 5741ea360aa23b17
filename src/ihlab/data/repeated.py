"""Repeated random tokens: the simplest data on which induction heads form.

A sequence is [BOS] + random prefix + a random segment repeated 1 + n_repeats times. Every token of
the repeats after the first one can be predicted by copying what followed the same token earlier;
nothing else can be predicted at all, so the loss on the repeats isolates in-context copying.

With a fixed segment length the repeat of position i is always at i + segment_len, and a purely
positional head ("attend 31 back") solves the task without induction: even a 1-layer model with
plain keys does. `min_segment_len` draws each sequence's segment length from
[min_segment_len, segment_len] and fills the freed room with random prefix tokens (the length of
every sequence stays `seq_len`), so only content-based copying (an induction head) works.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ihlab.data.base import ModelIO
from ihlab.data.stream import fixed_loader, stream_loader
from ihlab.errors import ConfigError
from ihlab.seeding import generator


@dataclass
class RepeatedTokensConfig:
    """Repeated-token sequences; `bos` prepends token id `vocab_size`."""

    vocab_size: int = 64
    prefix_len: int = 0
    segment_len: int = 32  # the longest segment
    min_segment_len: int | None = None  # None: every segment is segment_len long
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
        if self.min_segment_len is not None and not 2 <= self.min_segment_len <= self.segment_len:
            raise ConfigError(
                f"data.min_segment_len={self.min_segment_len} must be between 2 and "
                f"data.segment_len={self.segment_len}. Fix: lower it, or null for fixed segments."
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


def sample_repeated(cfg: RepeatedTokensConfig, n: int, g: torch.Generator) -> dict[str, Tensor]:
    """n sequences: "tokens" (n, seq_len) and "repeat_mask" (n, seq_len - 1).

    repeat_mask[t] marks the next-token targets that copying can predict: the repeats, except the
    first token of the first repeat (target t predicts token t + 1).
    """
    seq, reps = cfg.seq_len, 1 + cfg.n_repeats
    shortest = cfg.min_segment_len or cfg.segment_len
    fresh = torch.randint(cfg.vocab_size, (n, seq), generator=g)  # (n, seq)
    seg = torch.randint(shortest, cfg.segment_len + 1, (n, 1), generator=g)  # (n, 1)
    first = seq - reps * seg  # (n, 1) start of the first occurrence of the segment
    pos = torch.arange(seq)  # (seq,)
    in_segment = pos >= first  # (n, seq)
    source = torch.where(in_segment, first + (pos - first) % seg, pos)  # (n, seq)
    tokens = fresh.gather(1, source)  # (n, seq) repeats copy the first occurrence
    if cfg.bos:
        tokens[:, 0] = cfg.vocab_size
    repeat_mask = pos[:-1] >= first + seg  # (n, seq - 1)
    return {"tokens": tokens, "repeat_mask": repeat_mask}


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
        return sample_repeated(self.cfg, self.cfg.batch_size, generator(self.seed, "train", step))

    def train_dataloader(self) -> DataLoader:
        return stream_loader(self, self.train_batch)

    def reference_batch(self, n: int) -> dict[str, Tensor]:
        """n fixed training-distribution sequences, e.g. for a mean clamp."""
        return sample_repeated(self.cfg, n, generator(self.seed, "reference"))

    @cached_property
    def eval_set(self) -> dict[str, Tensor]:
        """The fixed evaluation sequences, made once from the seed."""
        return sample_repeated(self.cfg, self.cfg.eval_size, generator(self.seed, "eval", "eval"))

    def val_dataloader(self) -> list[DataLoader]:
        return [fixed_loader(self.eval_set, self.cfg.eval_batch_size)]

    @cached_property
    def _probe(self) -> dict[str, Tensor]:
        return sample_repeated(self.cfg, self.cfg.probe_size, generator(self.seed, "probe"))

    def probe_batch(self) -> dict[str, Tensor]:
        """A small fixed batch for attention probes; "ids" are the tokens themselves."""
        return {**self._probe, "ids": self._probe["tokens"]}

    def icl_positions(self) -> tuple[int, int]:
        """Default (early, late) targets for the ICL score.

        early: the middle of the first occurrence of the longest segment (a target no copying can
        predict, whatever the segment length); late: the last target (always in a repeat).
        """
        first = self.cfg.seq_len - (1 + self.cfg.n_repeats) * self.cfg.segment_len
        return first + (self.cfg.segment_len - 1) // 2, self.cfg.seq_len - 2

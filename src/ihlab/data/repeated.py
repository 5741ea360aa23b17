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

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ihlab.data.base import Batch, LearningTime, SplitMetrics, Terms, register_family
from ihlab.data.tokens import TokenDataConfig, TokenFamily, TokenSplitMetrics
from ihlab.errors import ConfigError
from ihlab.model import ModelIO


@dataclass
class RepeatedTokensConfig(TokenDataConfig):
    """Repeated-token sequences; `bos` prepends token id `vocab_size`."""

    vocab_size: int = 64
    prefix_len: int = 0
    segment_len: int = 32  # the longest segment
    min_segment_len: int | None = None  # None: every segment is segment_len long
    n_repeats: int = 1
    bos: bool = False

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
        self.check_sizes()

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


class RepeatedSplitMetrics(TokenSplitMetrics):
    """Adds the loss on the first occurrence of the segment (nothing to copy) and on its repeats
    (everything to copy)."""

    def __init__(
        self, n_examples: int, n_positions: int, icl: tuple[int, int], band: int = 0
    ) -> None:
        super().__init__(n_examples, n_positions, icl, band)
        self.loss_first, self.loss_repeat = MeanMetric(), MeanMetric()

    def update(self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor) -> None:
        super().update(batch, logits, targets, token_loss)
        repeat = batch["repeat_mask"]  # (batch, pos)
        self.loss_first.update(token_loss[~repeat])
        self.loss_repeat.update(token_loss[repeat])

    def compute(self) -> dict[str, Tensor]:
        first, repeat = self.loss_first.compute(), self.loss_repeat.compute()
        return {**super().compute(), "loss_first": first, "loss_repeat": repeat}

    def terms(
        self, batch: Batch, logits: Tensor, targets: Tensor, token_loss: Tensor
    ) -> dict[str, Terms]:
        repeat = batch["repeat_mask"].double()  # (seq, pos)
        loss = token_loss.detach().double()
        return {
            **super().terms(batch, logits, targets, token_loss),
            "loss_first": ((loss * (1 - repeat)).sum(dim=1), (1 - repeat).sum(dim=1)),
            "loss_repeat": ((loss * repeat).sum(dim=1), repeat.sum(dim=1)),
        }


@register_family("repeated_tokens", RepeatedTokensConfig)
class RepeatedTokens(TokenFamily):
    """Repeated random tokens; batches carry a "repeat_mask" of the targets copying can predict."""

    def __init__(self, cfg: RepeatedTokensConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        d_vocab = cfg.vocab_size + int(cfg.bos)
        self.io = ModelIO(n_ctx=cfg.seq_len, d_vocab=d_vocab, d_vocab_out=d_vocab)

    def sample(self, split: str, n: int, g: torch.Generator) -> Batch:
        batch = sample_repeated(self.cfg, n, g)
        return {**batch, "ids": batch["tokens"][:, :-1]}

    def learning_time(self) -> LearningTime:
        """The repeated segment's loss below 10% of the uniform guess's (ln vocab)."""
        return LearningTime("eval/loss_repeat", 0.1 * math.log(self.cfg.vocab_size))

    def train_scalars(self, batch: Batch, token_loss: Tensor, correct: Tensor) -> dict[str, Tensor]:
        repeat = batch["repeat_mask"]  # (batch, pos)
        return {
            "train/loss": token_loss.mean(),
            "train/loss_first": token_loss[~repeat].mean(),
            "train/loss_repeat": token_loss[repeat].mean(),
        }

    def split_metrics(self) -> SplitMetrics:
        n = self.cfg.model_positions
        return RepeatedSplitMetrics(self.pca_examples, n, self.icl_positions(), self.cfg.icl_band)

    def default_icl_positions(self) -> tuple[int, int]:
        """early: the middle of the first occurrence of the longest segment (a target no copying
        can predict, whatever the segment length); late: the last target (always in a repeat)."""
        first = self.cfg.seq_len - (1 + self.cfg.n_repeats) * self.cfg.segment_len
        return first + (self.cfg.segment_len - 1) // 2, self.cfg.seq_len - 2

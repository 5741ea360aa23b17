"""Natural text (Olsson et al.'s setting): random windows of a tokenized corpus.

The corpus (corpus.py) is tokenized once into a cached token file (cache.py): the training
split's documents, each followed by the end-of-text token, then the validation split's. A training
batch is `batch_size` windows of `seq_len` tokens at random offsets of the training tokens, drawn
from the run's seed and the step (so different seeds see different windows, one seed the same
ones on every rerun and resume). The evaluation windows are fixed and the same for every seed:
`eval_size` windows spread evenly over the validation tokens. Windows ignore document
boundaries, as in the paper's training: a window may cross the end-of-text token into the next
document (the default corpus's documents are books of ~10k-200k tokens, so few do).

The ICL score is Olsson et al.'s: the loss at context index 500 minus the loss at index 50 (with
`seq_len` 513, targets 500 and 50); for shorter contexts the defaults are index n-1 and n/10.
Head scores are measured as the paper measures them, on repeated random tokens (not on text),
from the probe batch. The random tokens are drawn from those that occur in the training split: a
token the model never saw keeps its initial embedding, so a probe over the whole vocabulary (a
byte-level BPE of 512 on the default corpus never uses 171 of its byte tokens) would understate
every head's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from ihlab.choices import Choice
from ihlab.data.base import Batch, LearningTime, register_family
from ihlab.data.repeated import RepeatedTokensConfig, sample_repeated
from ihlab.data.text.cache import Digest, TokenFile, cached_bpe, documents_digest, prepare
from ihlab.data.text.corpus import Document, bible_documents, file_documents, hf_documents
from ihlab.data.text.tokenizer import TokenizerKind, read_tokenizer, smollm2_tokenizer
from ihlab.data.tokens import TokenDataConfig, TokenFamily
from ihlab.errors import ConfigError
from ihlab.model import ModelIO
from ihlab.runs.files import cache_root

DEFAULT_TRANSLATIONS = ("kjv", "asv", "web", "ylt", "dar", "bbe")
OLSSON_ICL = (50, 500)  # the paper's context indices (contexts of 512)
PROBE_SEGMENT = 50  # head scores' repeated random segment (Olsson et al.'s prefix matching)


class TextSource(Choice):
    bible = "bible"  # data.translations, installed by pip
    files = "files"  # data.paths
    hf = "hf"  # data.dataset (a hub name or a save_to_disk folder), data.dataset_split


@dataclass
class TextConfig(TokenDataConfig):
    """Windows of `seq_len` tokens of a tokenized corpus."""

    source: TextSource = TextSource.bible
    translations: list[str] = field(default_factory=lambda: list(DEFAULT_TRANSLATIONS))
    paths: list[str] = field(default_factory=list)
    dataset: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    val_share: float = 0.1  # files and hf: the share of documents held out for validation
    tokenizer: TokenizerKind = TokenizerKind.bpe
    vocab_size: int = 2048  # the BPE's size (tokenizer=bpe)
    tokenizer_path: str | None = None  # tokenizer=file
    seq_len: int = 513
    cache_dir: str | None = None  # default: $IHLAB_CACHE/text
    icl_threshold: float = -0.3  # learning time: the ICL score below this (nats)
    # The loss at one position of 256 fixed windows has a standard error of ~0.2 nats on text,
    # as large as the effect; averaging the targets within 10 of each index (40-60, 490-510)
    # cuts it to ~0.05 (docs/text.md). 0: the two positions alone, as the paper's definition.
    icl_band: int = 10
    eval_size: int = 256
    eval_batch_size: int = 32
    batch_size: int = 8
    probe_size: int = 8

    def __post_init__(self) -> None:
        self.source = TextSource(self.source)
        self.tokenizer = TokenizerKind(self.tokenizer)
        if self.seq_len < 3:
            raise ConfigError(
                f"data.seq_len={self.seq_len} must be at least 3 tokens. Fix: raise data.seq_len."
            )
        if self.tokenizer == TokenizerKind.bpe and not 257 <= self.vocab_size <= 2**16:
            raise ConfigError(
                f"data.vocab_size={self.vocab_size}: a byte-level BPE needs at least 257 tokens "
                "(256 bytes and the end-of-text token) and the token file holds at most 65536. "
                "Fix: e.g. data.vocab_size=2048."
            )
        if self.tokenizer == TokenizerKind.file and not self.tokenizer_path:
            raise ConfigError(
                "data.tokenizer=file needs data.tokenizer_path (a tokenizer.json). Fix: set it, "
                "or data.tokenizer=bpe."
            )
        if self.source == TextSource.files and not self.paths:
            raise ConfigError(
                "data.source=files needs data.paths: files, folders or globs of UTF-8 text or "
                "JSONL. Fix: e.g. 'data.paths=[corpus/*.txt]'."
            )
        if self.source == TextSource.hf and not self.dataset:
            raise ConfigError(
                "data.source=hf needs data.dataset: a hub name or a save_to_disk folder. Fix: "
                "e.g. data.dataset=roneneldan/TinyStories."
            )
        if self.source != TextSource.bible and not 0 < self.val_share < 1:
            raise ConfigError(
                f"data.val_share={self.val_share} must be between 0 and 1 (exclusive): both "
                "splits need documents. Fix: e.g. data.val_share=0.1."
            )
        self.check_sizes()


def documents(cfg: TextConfig) -> list[Document]:
    """The configured source's documents, each marked training or validation."""
    if cfg.source == TextSource.bible:
        return bible_documents(cfg.translations)
    if cfg.source == TextSource.files:
        return file_documents(cfg.paths, cfg.text_field, cfg.val_share)
    assert cfg.dataset is not None
    return hf_documents(cfg.dataset, cfg.dataset_split, cfg.text_field, cfg.val_share)


def windows(tokens: np.ndarray, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length) windows of `tokens` beginning at `starts`."""
    index = starts.numpy()[:, None] + np.arange(length)  # (n, length)
    return torch.from_numpy(tokens[index].astype(np.int64))


@register_family("text", TextConfig)
class Text(TokenFamily):
    """Windows of a tokenized corpus: batches hold "tokens" (batch, seq_len) and "ids"."""

    def __init__(self, cfg: TextConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.io = ModelIO(n_ctx=cfg.seq_len, d_vocab=self.vocab, d_vocab_out=self.vocab)

    @cached_property
    def corpus(self) -> list[Document]:
        docs = documents(self.cfg)
        for split, validation in (("training", False), ("validation", True)):
            if not any(d.validation == validation and d.text.strip() for d in docs):
                raise ConfigError(
                    f"data: the corpus's {split} split is empty ({len(docs)} documents). Fix: "
                    "give more documents, or change data.val_share."
                )
        return docs

    @cached_property
    def digest(self) -> Digest:
        """The corpus's hash, computed once: the tokenizer's and the token file's keys extend it."""
        return documents_digest(self.corpus)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        if self.cfg.tokenizer == TokenizerKind.file:
            assert self.cfg.tokenizer_path is not None
            return read_tokenizer(self.cfg.tokenizer_path)
        if self.cfg.tokenizer == TokenizerKind.smollm2:
            return smollm2_tokenizer()
        return cached_bpe(self.corpus, self.cfg.vocab_size, self.cache_folder, self.digest)

    @cached_property
    def vocab(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def cache_folder(self) -> Path:
        return Path(self.cfg.cache_dir or cache_root() / "text").expanduser()

    @cached_property
    def token_file(self) -> TokenFile:
        prepared = prepare(self.corpus, self.tokenizer, self.cache_folder, digest=self.digest)
        for split, tokens in (("training", prepared.train), ("validation", prepared.validation)):
            if tokens.size < self.cfg.seq_len:
                raise ConfigError(
                    f"data: the {split} split has {tokens.size} tokens, fewer than one window "
                    f"(data.seq_len={self.cfg.seq_len}). Fix: more text, or a shorter seq_len."
                )
        return prepared

    def summary(self) -> dict[str, Any]:
        """The corpus's documents, tokens per split, vocabulary and token-file key."""
        prepared = self.token_file
        return {
            "source": str(self.cfg.source),
            "documents": {
                "train": sum(not d.validation for d in self.corpus),
                "validation": sum(d.validation for d in self.corpus),
            },
            "tokens": {
                "train": int(prepared.train.size),
                "validation": int(prepared.validation.size),
            },
            "vocab_size": self.vocab,
            "tokens_seen_in_training": len(self.seen_tokens),
            "token_file": prepared.key,
        }

    def sample(self, split: str, n: int, g: torch.Generator) -> Batch:
        """Training windows at random offsets (`g`); evaluation windows fixed, spread evenly."""
        length = self.cfg.seq_len
        if split == "train":
            train = self.token_file.train
            starts = torch.randint(train.size - length + 1, (n,), generator=g)
            tokens = windows(train, starts, length)
        else:
            val = self.token_file.validation
            starts = torch.linspace(0, val.size - length, n).long()
            tokens = windows(val, starts, length)
        return {"tokens": tokens, "ids": tokens[:, :-1]}

    @cached_property
    def seen_tokens(self) -> np.ndarray:
        """The token ids that occur in the training split, ascending: the probe's alphabet."""
        counts = np.bincount(self.token_file.train, minlength=self.vocab)  # (vocab,)
        return np.flatnonzero(counts)

    def probe_batch(self) -> Batch:
        """Repeated random tokens (Olsson et al.'s prefix-matching data), drawn from the tokens
        seen in training: a segment of `PROBE_SEGMENT` tokens and its repeats, filling
        `seq_len`."""
        repeats = max(1, self.cfg.seq_len // PROBE_SEGMENT - 1)
        segment = min(PROBE_SEGMENT, self.cfg.seq_len // 2)
        seen = torch.from_numpy(self.seen_tokens)
        config = RepeatedTokensConfig(vocab_size=len(seen), segment_len=segment, n_repeats=repeats)
        g = torch.Generator().manual_seed(self.seed)
        tokens = seen[sample_repeated(config, self.cfg.probe_size, g)["tokens"]]
        return {"tokens": tokens, "ids": tokens[:, :-1]}

    def default_icl_positions(self) -> tuple[int, int]:
        """Olsson et al.'s context indices 50 and 500 where the context is long enough, else
        n/10 and the last target."""
        n = self.cfg.model_positions
        if n > OLSSON_ICL[1]:
            return OLSSON_ICL
        return n // 10, n - 1

    def learning_time(self) -> LearningTime:
        """In-context learning present: the ICL score below `icl_threshold` nats."""
        return LearningTime("eval/icl_score", self.cfg.icl_threshold)

"""Tokenized corpora on disk: one memory-mapped token file per (corpus, tokenizer), written once
and shared by every run that asks for the same pair.

A file is a 64-byte header (magic, format version, bytes per token, token count, training-token
count, SHA-256 of the tokens) and the tokens: the training split's documents, each followed by the
end-of-text token, then the validation split's. It is written to a temporary name and renamed into
place, under a file lock, so two runs preparing it at once leave one whole file; a file whose
length or checksum disagrees with its header (a killed write, a full disk, a stray edit) is
detected on opening and rebuilt.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer
from tqdm import tqdm

from ihlab.data.text.corpus import Document
from ihlab.data.text.tokenizer import END_OF_TEXT, train_bpe
from ihlab.runs.atomic import open_atomic, write_text_atomic

MAGIC = b"IHLABTOK"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ32s")  # magic, version, bytes per token, tokens, train tokens, sha
Digest = type(hashlib.sha256())  # a SHA-256 state (hashlib names the type only privately)
ENCODE_CHUNK = 64  # documents per encode_batch call (progress granularity)


class CorruptCache(Exception):
    """A token file whose header, length or checksum is wrong."""


@dataclass(frozen=True)
class TokenFile:
    """A prepared corpus: `tokens` (memory-mapped), the first `n_train` of them the training
    split's, the rest the validation split's; `key` names the file."""

    key: str
    path: Path
    tokens: np.ndarray
    n_train: int

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.n_train]

    @property
    def validation(self) -> np.ndarray:
        return self.tokens[self.n_train :]


def corpus_key(digest: Digest, tokenizer: Tokenizer) -> str:
    """SHA-256 of the format, every document (name, split, text: their `documents_digest`) and
    the tokenizer's JSON."""
    h = digest.copy()
    h.update(tokenizer.to_str().encode())
    return h.hexdigest()[:24]


def read_token_file(path: Path, key: str) -> TokenFile:
    """Open a token file, checking its header, length and checksum (CorruptCache if wrong)."""
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise CorruptCache(f"{path}: shorter than its header")
    magic, version, width, n_tokens, n_train, digest = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION or width not in (2, 4) or n_train > n_tokens:
        raise CorruptCache(f"{path}: not a token file of format {VERSION}")
    if path.stat().st_size != HEADER.size + n_tokens * width:
        raise CorruptCache(f"{path}: {path.stat().st_size} bytes, its header says otherwise")
    dtype = np.uint16 if width == 2 else np.uint32
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(n_tokens,))
    if hashlib.sha256(tokens.tobytes()).digest() != digest:
        raise CorruptCache(f"{path}: its tokens do not match their checksum")
    return TokenFile(key, path, tokens, int(n_train))


def tokenize(
    documents: Sequence[Document], tokenizer: Tokenizer, progress: bool = True
) -> tuple[np.ndarray, int]:
    """All tokens (training documents first, each followed by the end-of-text token where the
    tokenizer has one, else simply concatenated) and the number of training tokens."""
    end = tokenizer.token_to_id(END_OF_TEXT)
    ordered = [d for d in documents if not d.validation] + [d for d in documents if d.validation]
    parts, n_train = [], 0
    bar = tqdm(total=sum(len(d.text) for d in ordered), unit="char", disable=not progress)
    bar.set_description("tokenizing")
    for i in range(0, len(ordered), ENCODE_CHUNK):
        chunk = ordered[i : i + ENCODE_CHUNK]
        encodings = tokenizer.encode_batch([d.text for d in chunk])
        for doc, encoding in zip(chunk, encodings, strict=True):
            ids = encoding.ids if end is None else [*encoding.ids, end]
            parts.append(np.asarray(ids, dtype=np.int64))
            n_train += 0 if doc.validation else len(ids)
            bar.update(len(doc.text))
    bar.close()
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), n_train


def write_token_file(path: Path, tokens: np.ndarray, n_train: int) -> None:
    """Write atomically (`open_atomic`: a temporary file, then a rename)."""
    width = 2 if tokens.size == 0 or int(tokens.max()) < 2**16 else 4
    payload = tokens.astype(np.uint16 if width == 2 else np.uint32).tobytes()
    header = HEADER.pack(
        MAGIC, VERSION, width, tokens.size, n_train, hashlib.sha256(payload).digest()
    )
    with open_atomic(path, "wb") as f:
        f.write(header)
        f.write(payload)


def prepare(
    documents: Sequence[Document],
    tokenizer: Tokenizer,
    cache_dir: Path,
    progress: bool = True,
    digest: Digest | None = None,
) -> TokenFile:
    """The corpus's token file in `cache_dir`, tokenized now if it is missing or corrupt
    (`digest`: the documents' `documents_digest`, when already computed)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = corpus_key(digest or documents_digest(documents), tokenizer)
    path = cache_dir / f"{key}.tokens"
    with FileLock(str(cache_dir / f"{key}.lock")):
        if path.exists():
            try:
                return read_token_file(path, key)
            except CorruptCache:
                path.unlink()
        tokens, n_train = tokenize(documents, tokenizer, progress)
        write_token_file(path, tokens, n_train)
    return read_token_file(path, key)


def documents_digest(documents: Sequence[Document]) -> Digest:
    """SHA-256 state over every document's name, split and text."""
    h = hashlib.sha256(f"ihlab-corpus-v{VERSION}".encode())
    for doc in documents:
        h.update(f"\0{doc.name}\0{int(doc.validation)}\0".encode())
        h.update(doc.text.encode())
    return h


def cached_bpe(
    documents: Sequence[Document], vocab_size: int, cache_dir: Path, digest: Digest | None = None
) -> Tokenizer:
    """The byte-level BPE of the training documents at `vocab_size`, trained once per corpus
    and size and kept in `cache_dir` (written atomically, under a lock; `digest` as `prepare`'s)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    h = (digest or documents_digest(documents)).copy()
    h.update(f"\0bpe\0{vocab_size}".encode())
    path = cache_dir / f"{h.hexdigest()[:24]}.tokenizer.json"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return Tokenizer.from_file(str(path))
            except Exception:  # a damaged file: train it again
                path.unlink()
        tokenizer = train_bpe((d.text for d in documents if not d.validation), vocab_size)
        write_text_atomic(path, tokenizer.to_str())
    return tokenizer

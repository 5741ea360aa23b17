"""Derived seeds: one run seed drives model init, data streams and evaluation sets."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *purpose: str | int) -> int:
    """A 63-bit seed for one purpose (e.g. "train", step), stable across processes and versions."""
    text = "/".join([str(seed), *map(str, purpose)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int, *purpose: str | int) -> torch.Generator:
    """A CPU generator seeded for one purpose; data is made on CPU, then moved by Lightning."""
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))

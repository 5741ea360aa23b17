"""Read an offline W&B run's `.wandb` file without wandb's reader.

wandb keeps no public reader of these files: the Python one (`wandb.sdk.internal.datastore`) was
removed in 0.29, when the Go core took over writing them. The file itself is the durable part: it
is what `wandb sync` uploads, so runs written by older clients must stay readable, and its framing
has not changed since the format appeared: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
LevelDB-log records in 32 KiB blocks, each with a 7-byte header (CRC-32 of type and data, length,
type FULL/FIRST/MIDDLE/LAST), a record never spanning a block's last 6 bytes (zero padding). Each
record's data is a `wandb.proto.wandb_internal_pb2.Record`, the protobuf schema wandb publishes
with its generated modules and only extends. So this reader depends on the on-disk format and the
public protobuf schema alone, and checks both (header, checksums), failing loudly if they change.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a `.wandb` transaction log this reader understands."""


def read_chunks(data: bytes) -> Iterator[bytes]:
    """The records' payloads, reassembled from their FIRST/MIDDLE/LAST fragments."""
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise WandbFileError(f"unknown header {ident!r} {magic:#x} v{version}")
    pos, pending = FILE_HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < RECORD_HEADER.size:  # a block's padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if (crc, length, kind) == (0, 0, 0):  # zero fill: the rest of the block is padding
            pos += BLOCK - pos % BLOCK
            continue
        start = pos + RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            return  # a record still being written
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise WandbFileError(f"checksum mismatch at byte {pos}")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
        else:
            raise WandbFileError(f"unknown record type {kind} at byte {pos}")


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a `.wandb` file, in order."""
    for chunk in read_chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        yield record

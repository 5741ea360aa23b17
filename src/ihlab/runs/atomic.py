"""Atomic file writes: a reader (or a crash, a kill, a full disk) sees the old file or the new one,
never a half-written one.

The new content goes to a hidden temporary file in the same folder, is flushed to disk, and then
replaces the target with one `os.replace` (atomic on POSIX within a file system). If writing
fails, the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces `path` when the block exits without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open(mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with open_atomic(path) as f:
        f.write(text)

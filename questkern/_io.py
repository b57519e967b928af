"""Atomic file writes, the one implementation every questkern writer uses.

A temp file in the same directory, fsync, ``os.replace``, then fsync of the directory:
a reader (or a crash) sees the old file or the new one, never half of either. On any
failure the temp file is removed and the old file is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    """0o666 minus the umask: the mode a plain ``open()`` would give (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """Yield a temp path beside ``path``; whatever the block writes there replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: str | os.PathLike, df, *, float_format: str | None = None) -> Path:
    """A pandas DataFrame as CSV, without its index."""
    return write_text_atomic(path, df.to_csv(index=False, float_format=float_format))


def write_json_atomic(
    path: str | os.PathLike, obj, *, indent: int = 2, sort_keys: bool = True, allow_nan: bool = True, default=None
) -> Path:
    with atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default)
        f.write("\n")
    return Path(path)

"""Atomic file writes: temp file in the same directory, fsync, ``os.replace``.

A reader (or a crash) never sees a half-written profile summary, trace or report.
"""

from __future__ import annotations

import os
from pathlib import Path

from questkern._io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json", "write_csv"]


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_json_atomic(path, obj, indent=2, sort_keys=True, default=str)


def write_csv(path: str | os.PathLike, df) -> Path:
    """A pandas DataFrame as CSV (no index)."""
    return write_text_atomic(path, df.to_csv(index=False))

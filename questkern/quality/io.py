"""Atomic writes of study results (CSV / JSON): temp file in the same directory, fsync, os.replace."""

from __future__ import annotations

import json
from pathlib import Path

from questkern._io import write_text_atomic


def write_atomic(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)


def write_csv(df, path: Path) -> Path:
    """A pandas DataFrame as CSV (no index), atomically."""
    return write_atomic(path, df.to_csv(index=False, float_format="%.6g"))


def write_json(obj, path: Path) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

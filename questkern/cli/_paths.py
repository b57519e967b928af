"""Path checks every subcommand runs before any work: one line naming the flag, the path
and the problem (``ValueError``); the command prints it and exits 2."""

from __future__ import annotations

import os
from pathlib import Path


def _first_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _creatable(flag: str, p: Path) -> None:
    """p does not exist: its nearest existing ancestor must be a writable directory."""
    anc = _first_existing(p)
    if not anc.is_dir():
        raise ValueError(f"{flag} {p}: cannot be created, {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {p}: cannot be created, {anc} is not writable")


def check_output_dir(flag: str, path) -> Path:
    """A directory that exists and is writable, or that can be created."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{flag} {p}: is a file, expected a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {p}: the directory is not writable")
    else:
        _creatable(flag, p)
    return p


def check_output_file(flag: str, path) -> Path:
    """A file that can be written: not a directory, writable if it exists, else creatable."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a directory, expected a file name")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise ValueError(f"{flag} {p}: the file is not writable")
        return p
    if p.parent.exists() and not p.parent.is_dir():
        raise ValueError(f"{flag} {p}: cannot be created, {p.parent} is a file, not a directory")
    _creatable(flag, p)
    return p


def check_input_file(flag: str, path) -> Path:
    """A readable regular file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {p}: no such file")
    if not p.is_file():
        raise ValueError(f"{flag} {p}: is {'a directory' if p.is_dir() else 'not a regular file'}, expected a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {p}: the file is not readable")
    return p


def check_sqlite_url(flag: str, url: str) -> None:
    """``sqlite:///PATH``: PATH (when a file, not in memory) is an SQLite database or can be created."""
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        return
    raw = url[len("sqlite:///") :]
    if raw in ("", ":memory:"):
        return
    p = Path(raw)
    if p.is_dir():
        raise ValueError(f"{flag} {url}: {p} is a directory, expected an SQLite database file")
    if p.exists():
        with open(p, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ValueError(f"{flag} {url}: {p} is not an SQLite database (an existing file of another kind)")
        return
    if p.parent.exists() and not p.parent.is_dir():
        raise ValueError(f"{flag} {url}: cannot be created, {p.parent} is a file, not a directory")
    _creatable(flag, p)

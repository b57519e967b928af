"""Where a data-writing command writes: never over an existing file unless the user says so.

Default outputs carry the run's UTC time in their name (a new file every run); an output
the user names is refused when it exists, unless --force. Both are decided before any
work starts, so a refused command changes nothing.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path


def utc_stamp(now: _dt.datetime | None = None) -> str:
    """'20261207T053000Z': sortable, safe in a file name."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def stamped(folder: Path, stem: str, suffix: str = ".csv", stamp: str | None = None) -> Path:
    """``folder/<stem>-<UTC stamp><suffix>``, a name no earlier run used (``-2``, ``-3`` ... on a clash)."""
    stamp = stamp or utc_stamp()
    path = Path(folder) / f"{stem}-{stamp}{suffix}"
    n = 2
    while path.exists():
        path = Path(folder) / f"{stem}-{stamp}-{n}{suffix}"
        n += 1
    return path


class OutputExists(Exception):
    """An output the user named exists and --force was not given."""


def check_new(paths, *, force: bool, flag: str = "--out") -> None:
    """Refuse outputs that exist (unless ``force``): OutputExists naming them and the way out."""
    taken = [Path(p) for p in paths if Path(p).exists()]
    if taken and not force:
        names = ", ".join(str(p) for p in taken)
        raise OutputExists(
            f"{names} exists; pass --force to replace it, or choose another {flag} "
            f"(without {flag}, each run writes a new timestamped file)"
        )


def output_file(out, *, force: bool, folder: Path, stem: str, companions=(), flag: str = "--out") -> Path:
    """The CSV a command writes, decided before any work: ``out`` when given (a writable,
    creatable file name; refused when it or one of its ``companions`` suffixes — e.g.
    ``"_memory.csv"`` for ``<stem>_memory.csv`` beside it — exists, unless ``force``), else a
    new timestamped ``folder/<stem>-<UTC>.csv``. Raises ValueError (a path that cannot be
    written) or OutputExists."""
    if out is None:
        return stamped(folder, stem)
    from questkern.cli._paths import check_output_file

    p = check_output_file(flag, out)
    check_new([p, *(p.with_name(p.stem + c) for c in companions)], force=force, flag=flag)
    return p

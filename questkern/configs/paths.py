"""Where tables and studies live.

Tables (``<gpu-key>.json``, and ``<gpu-key>.pareto.json`` beside them) are read, in
this order of precedence (an entry in an earlier source hides the same entry later):

1. ``$QUESTKERN_TUNING_DIR`` (a directory; for experiments and CI),
2. the user cache directory: ``$XDG_CACHE_HOME/questkern/tuning`` or
   ``~/.cache/questkern/tuning`` (where ``questkern tune`` writes by default),
3. the tables shipped inside the package: ``questkern/tuning/tables/`` (the same
   directory in a source checkout and in an installed wheel; the repository's
   top-level ``tuning/`` holds only the study databases and run summaries, see
   ``tuning/README.md``).

Optuna studies default to an SQLite file in the user data directory:
``$QUESTKERN_STORAGE`` if set, else ``sqlite:///$XDG_DATA_HOME/questkern/studies.db``
(``~/.local/share/questkern/studies.db``).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_TUNING_DIR = "QUESTKERN_TUNING_DIR"
ENV_STORAGE = "QUESTKERN_STORAGE"
# the shipped tables stay beside the tuner that writes them (package data, not code: this lookup
# layer imports nothing from questkern.tuning)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "tuning" / "tables"


def _xdg(var: str, fallback: str) -> Path:
    v = os.environ.get(var)
    return Path(v) if v and os.path.isabs(v) else Path.home() / fallback


def user_cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "questkern" / "tuning"


def user_data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "questkern"


def table_sources() -> list[tuple[str, Path | None]]:
    """[(label, directory or None when unset)] in order of precedence."""
    env = os.environ.get(ENV_TUNING_DIR)
    return [
        (f"${ENV_TUNING_DIR}", Path(env) if env else None),
        ("user cache", user_cache_dir()),
        ("shipped", SHIPPED_DIR),
    ]


def table_path(directory: Path, gpu_key: str) -> Path:
    return Path(directory) / f"{gpu_key}.json"


def pareto_path(directory: Path, gpu_key: str) -> Path:
    return Path(directory) / f"{gpu_key}.pareto.json"


def default_storage() -> str:
    """Optuna storage URL: $QUESTKERN_STORAGE or an SQLite file in the user data dir."""
    env = os.environ.get(ENV_STORAGE)
    if env:
        return env
    return f"sqlite:///{user_data_dir() / 'studies.db'}"


def ensure_storage_dir(url: str) -> None:
    """Create the parent directory of an SQLite storage file (Optuna does not)."""
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = Path(url[len(prefix) :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)

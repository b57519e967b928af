"""Choose a kernel config for a call: a tuning-table entry, or the documented heuristic.

This is the single entry point the public API uses (``resolve_config``); it never
tunes. On first use for a GPU key it reads ``<gpu-key>.json`` from each table source
(:func:`questkern.configs.paths.table_sources`: ``$QUESTKERN_TUNING_DIR``, the user cache
directory, the shipped tables) and caches the parse; an entry from an earlier source
hides the same entry from a later one.

Matching (see :mod:`questkern.configs.keys`): op, dtype, head_dim, GQA group and page
size must be equal; sequence length and batch may differ and the entry with the
smallest log2-bucket distance wins (0 = exact). With no candidate the heuristic of
:mod:`questkern.config` is used, with one ``UserWarning`` per reason (unknown GPU,
table of another Triton major version, unreadable/corrupt or schema-invalid file, no
entry for the shape, an entry whose config violates a kernel constraint at its own shape,
e.g. ``pages_per_block * page_size < 16``: warned at load time naming the file and the
entry). A bad file never breaks decoding. The CPU interpreter
(``cpu-interpreter``) without a table uses the heuristic silently: its timings mean
nothing, so there is nothing to warn about.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from questkern import config as C
from questkern.configs import paths
from questkern.configs.gpus import CPU_KEY, gpu_family, normalize_gpu_name
from questkern.configs.keys import EntryKey, check_op, distance, preference
from questkern.configs.schema import TableError, entry_key


class TuningTableWarning(UserWarning):
    """A tuning table could not be used; questkern fell back to its heuristic configs."""


@dataclass
class SourceStatus:
    """What happened to one table source for a GPU key (shown by ``show-config``)."""

    label: str
    path: Path | None
    status: str  # "unset" | "missing" | "loaded" | "rejected"
    detail: str = ""
    entries: int = 0


@dataclass
class LoadedTables:
    gpu_key: str
    sources: list[SourceStatus]
    entries: list[tuple[EntryKey, dict, Path]] = field(default_factory=list)  # precedence already applied
    # entries whose config passes the schema but not a kernel constraint at their own shape
    # (``config.kernel_violation``): a call they would serve gets the heuristic instead
    invalid: dict[EntryKey, str] = field(default_factory=dict)


@dataclass
class Resolution:
    """Why a call got its config (``show-config`` prints this)."""

    op: str
    config: Any
    source: str
    gpu_key: str
    key: EntryKey
    path: Path | None = None
    entry: dict | None = None
    distance: float | None = None
    reason: str = ""
    tables: LoadedTables | None = None


_lock = threading.Lock()
_cache: dict[str, LoadedTables] = {}
_device_keys: dict[tuple, str] = {}
_warned: set[str] = set()


def clear_cache() -> None:
    """Forget parsed tables and issued warnings (after writing a table, or in tests)."""
    with _lock:
        _cache.clear()
        _device_keys.clear()
        _warned.clear()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"questkern: {reason}; using the heuristic configs", TuningTableWarning, stacklevel=4)


def gpu_key_for(device) -> str:
    """Normalized GPU key of a torch device ('cpu-interpreter' for CPU), cached per device."""
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return CPU_KEY
    ident = (device.type, device.index)
    if ident not in _device_keys:
        _device_keys[ident] = normalize_gpu_name(torch.cuda.get_device_name(device))
    return _device_keys[ident]


def _load(gpu_key: str) -> LoadedTables:
    import triton

    from questkern.configs.table import load_table, triton_major

    run_major = triton_major(triton.__version__)
    loaded = LoadedTables(gpu_key, [])
    seen: set[EntryKey] = set()
    for label, directory in paths.table_sources():
        if directory is None:
            loaded.sources.append(SourceStatus(label, None, "unset"))
            continue
        path = paths.table_path(directory, gpu_key)
        if not path.is_file():
            loaded.sources.append(SourceStatus(label, path, "missing"))
            continue
        try:
            doc = load_table(path)
            if doc["gpu_key"] != gpu_key:
                raise TableError(f"{path} holds gpu_key {doc['gpu_key']!r}, not {gpu_key!r}")
        except TableError as exc:
            loaded.sources.append(SourceStatus(label, path, "rejected", str(exc)))
            _warn_once(f"ignoring tuning table {path}: {exc}")
            continue
        have = doc["versions"]["triton"]
        if triton_major(have) != run_major:
            detail = f"tuned with Triton {have}, running Triton {triton.__version__} (another major version)"
            loaded.sources.append(SourceStatus(label, path, "rejected", detail))
            _warn_once(f"ignoring tuning table {path}: {detail}")
            continue
        n = 0
        for i, e in enumerate(doc["entries"]):
            k = entry_key(e)
            if k not in seen:
                seen.add(k)
                loaded.entries.append((k, e, path))
                n += 1
                bad = C.kernel_violation(
                    k.op, C.CONFIG_TYPES[k.op].from_dict(e["config"]), page_size=k.page_size, head_dim=k.head_dim
                )
                if bad:
                    why = f"tuning table {path} entry {i} [{k.describe()}] violates a kernel constraint: {bad}"
                    loaded.invalid[k] = why
                    _warn_once(f"ignoring {why}")
        loaded.sources.append(SourceStatus(label, path, "loaded", f"{len(doc['entries'])} entries", n))
    return loaded


def tables_for(gpu_key: str) -> LoadedTables:
    """Parsed tables for ``gpu_key`` (loaded once, then cached)."""
    with _lock:
        if gpu_key not in _cache:
            _cache[gpu_key] = _load(gpu_key)
        return _cache[gpu_key]


def heuristic_config(op: str, *, head_dim: int, page_size: int, seq_len: int):
    """The documented heuristic of :mod:`questkern.config` for ``op``."""
    if op == "metadata":
        return C.default_metadata_config(head_dim)
    if op == "select":
        return C.default_select_config(-(-seq_len // page_size), head_dim)
    if op == "quest_step":
        return C.default_step_config(-(-seq_len // page_size), head_dim, page_size)
    return C.default_decode_config(page_size, head_dim)


def explain_config(
    op: str,
    *,
    device=None,
    dtype,
    head_dim: int,
    group: int,
    page_size: int,
    seq_len: int,
    batch: int,
    budget: int | None = None,
    gqa_mode: str | None = None,
    gpu_key: str | None = None,
    warn: bool = True,
) -> Resolution:
    """Like :func:`resolve_config` but returns the whole decision (for ``show-config``)."""
    check_op(op)
    gpu_key = gpu_key or gpu_key_for(device)
    key = EntryKey.for_call(
        op,
        dtype=dtype,
        head_dim=head_dim,
        group=group,
        page_size=page_size,
        seq_len=seq_len,
        batch=batch,
        budget=budget,
        gqa_mode=gqa_mode,
    )
    tables = tables_for(gpu_key)
    heur = heuristic_config(op, head_dim=head_dim, page_size=page_size, seq_len=seq_len)
    candidates = [(preference(key, k), k, e, p) for k, e, p in tables.entries if distance(key, k) is not None]
    if candidates:
        pref, k, e, p = min(candidates, key=lambda c: c[0])
        if k in tables.invalid:  # warned at load time: the documented fallback
            reason = tables.invalid[k]
            return Resolution(op, heur, f"heuristic ({reason})", gpu_key, key, reason=reason, tables=tables)
        cfg = C.CONFIG_TYPES[op].from_dict(e["config"])
        d = pref[0]
        how = "exact" if d == 0 else f"nearest, distance {d:g}"
        src = f"table {p.name} [{k.describe()}] ({how})"
        return Resolution(op, cfg, src, gpu_key, key, p, e, d, how, tables)
    loaded = [s for s in tables.sources if s.status == "loaded"]
    rejected = [s for s in tables.sources if s.status == "rejected"]
    if loaded:
        reason = (
            f"no entry for {key.op} {key.dtype} d{key.head_dim} group {key.group} page {key.page_size} in "
            + ", ".join(str(s.path) for s in loaded)
        )
    elif rejected:
        reason = "; ".join(f"{s.path}: {s.detail}" for s in rejected)
    elif gpu_key == CPU_KEY:
        reason = "no table for the CPU interpreter"
    else:
        fam = gpu_family(gpu_key)
        reason = f"no tuning table for GPU {gpu_key} (family {fam or 'unknown'})"
    # rejected files were warned about when they were read: one warning per reason
    if warn and (loaded or (not rejected and gpu_key != CPU_KEY)):
        _warn_once(reason)
    return Resolution(op, heur, f"heuristic ({reason})", gpu_key, key, reason=reason, tables=tables)


def resolve_config(
    op: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    group: int,
    page_size: int,
    seq_len: int,
    batch: int,
    budget: int | None = None,
    gqa_mode: str | None = None,
    gpu_key: str | None = None,
):
    """Return ``(config, source)`` for ``op`` in {metadata, select, sparse_decode, dense_decode, quest_step}.

    ``source`` says where the config came from: ``"table <file> [<entry>] (exact)"``,
    ``"... (nearest, distance d)"`` or ``"heuristic (<reason>)"``. ``budget`` and
    ``gqa_mode`` refine the match for select/sparse_decode when given; ``gpu_key``
    overrides the device's key (tests, ``show-config --gpu``).
    """
    r = explain_config(
        op,
        device=device,
        dtype=dtype,
        head_dim=head_dim,
        group=group,
        page_size=page_size,
        seq_len=seq_len,
        batch=batch,
        budget=budget,
        gqa_mode=gqa_mode,
        gpu_key=gpu_key,
    )
    return r.config, r.source

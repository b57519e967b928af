"""NVTX ranges around every questkern launch, for Nsight Compute/Systems filtering.

Ranges live in the ``questkern`` domain and are named exactly ``questkern.<op>``
(``questkern.select``, ``questkern.sparse_decode``, ``questkern.combine``,
``questkern.dense_decode``, ``questkern.metadata``, ``questkern.trial``). A name never
contains ``/`` (ncu reads it as nesting) nor a space: the message is the bare name so
that ``ncu --nvtx-include "questkern@questkern.select/"`` matches it literally and
Nsight Systems sums all launches of one op together. Shapes go into the range's
payload instead (an NVTX extended payload: a named int64 struct such as
``batch=1 pages=2048 k=128``; a single ``trial=N`` becomes a plain int64 payload).

Cost model (measured by ``scripts/gpu/nvtx_overhead.py``):

* No tool attached (the normal case), or ``QUESTKERN_NVTX=0``, or
  :func:`set_nvtx_enabled(False) <set_nvtx_enabled>`: :func:`annotate` checks the name
  against a set of already-checked names and returns a shared no-op context manager.
* A tool attached (nsys/ncu inject one at process start): one dict lookup of cached
  event attributes, then a C push and pop.
* Inside a CUDA graph replay nothing runs on the host, so annotation costs nothing.

Two in-process consumers exist besides NVTX, both off by default:

* :func:`record_ranges` collects ``(name, payload)`` of every range entered (tests).
* :func:`torch_ranges` also opens a ``torch.profiler.record_function`` range of the
  same name, so the PyTorch profiler fallback of ``questkern profile`` sees the same
  ranges Nsight would.

Without the ``nvtx`` package the NVTX part is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

try:  # the nvtx package is a declared dependency, but keep import-time robust
    import nvtx as _nvtx
    from nvtx._lib import dummy_domain as _dummy_domain
    from nvtx._lib import pop_range as _pop_range
    from nvtx._lib import push_range as _push_range
except Exception:  # pragma: no cover - exercised only where nvtx is absent
    _nvtx = None
    _dummy_domain = None

DOMAIN = "questkern"
PREFIX = "questkern."
ENV_VAR = "QUESTKERN_NVTX"
# The ranges questkern itself opens (the profiler filters and the report know these).
RANGE_NAMES = (
    "questkern.metadata",
    "questkern.select",
    "questkern.sparse_decode",
    "questkern.combine",
    "questkern.dense_decode",
    "questkern.trial",
)
_NAME_RE = re.compile(r"questkern\.[A-Za-z0-9_][A-Za-z0-9_.-]*")

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no", "")


def _env_flag() -> bool:
    """QUESTKERN_NVTX: 1/true/on/yes (default) or 0/false/off/no; anything else warns and keeps NVTX on."""
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return True
    val = raw.strip().lower()
    if val in _TRUE:
        return True
    if val in _FALSE:
        return False
    warnings.warn(f"{ENV_VAR}={raw!r} is not one of {_TRUE + _FALSE[:-1]}; NVTX annotation stays on", stacklevel=2)
    return True


# The domain is created once, at import. nvtx hands back a dummy domain when no tool
# (nsys, ncu) is attached; tools attach at process start, so import time is right.
_domain: Any = _nvtx.get_domain(DOMAIN) if _nvtx is not None else None
_tool_attached = _domain is not None and _domain is not _dummy_domain
_enabled = _env_flag()
_recorders: list[list] = []
_torch_ranges = 0
_idle = True  # recomputed by _refresh(): True when annotate() has nothing to do
_nvtx_only = False  # recomputed by _refresh(): NVTX on, no recorder, no torch ranges (cached ranges)
_checked: set[str] = set()
_ranges: dict[tuple, "_NvtxRange"] = {}  # (name, *payload items) -> reusable NVTX range
_payload_warned = False


def _refresh() -> None:
    global _idle, _nvtx_only
    _idle = not ((_enabled and _tool_attached) or _recorders or _torch_ranges)
    _nvtx_only = _enabled and _tool_attached and not (_recorders or _torch_ranges)


_refresh()


def nvtx_enabled() -> bool:
    """True when annotate() emits NVTX ranges: enabled, nvtx installed and a tool attached."""
    return _enabled and _tool_attached


def nvtx_switched_on() -> bool:
    """The user's switch alone (QUESTKERN_NVTX / set_nvtx_enabled), whether or not a tool listens."""
    return _enabled


def set_nvtx_enabled(flag: bool) -> None:
    """Switch NVTX emission on or off for this process (overrides QUESTKERN_NVTX)."""
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f"set_nvtx_enabled(flag) expects a bool, got {type(flag).__name__}")
    _enabled = flag
    _refresh()


def check_range_name(name: str) -> str:
    """Raise ValueError unless ``name`` is ``questkern.<op>`` without '/' or spaces."""
    if not isinstance(name, str):
        raise TypeError(f"NVTX range name must be a str, got {type(name).__name__}")
    if "/" in name:
        raise ValueError(f"NVTX range name {name!r} must not contain '/' (ncu treats it as nesting)")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"NVTX range name {name!r} must look like 'questkern.<op>' (letters, digits, '_', '.', '-'; no spaces)"
        )
    return name


def _attributes(name: str, payload: dict):
    """nvtx event attributes: message ``name`` plus the payload (see module doc)."""
    global _payload_warned
    value: Any = None
    if len(payload) == 1 and isinstance(next(iter(payload.values())), int):
        value = int(next(iter(payload.values())))
    elif payload and all(isinstance(v, int) and not isinstance(v, bool) for v in payload.values()):
        import numpy as np

        value = np.array(tuple(payload.values()), dtype=[(k, "<i8") for k in payload])  # 0-d struct
    try:
        attr = _domain.get_event_attributes(name, None, None, value)
    except Exception as e:  # a tool without the payload extension: keep the range, drop the payload
        if not _payload_warned:
            warnings.warn(f"NVTX payload not accepted ({e}); ranges carry their names only", stacklevel=3)
            _payload_warned = True
        attr = _domain.get_event_attributes(name, None, None, None)
    return attr


class _NvtxRange:
    """A reusable (stateless) push/pop pair for one (name, payload): the hot path with a tool attached."""

    __slots__ = ("_attr",)

    def __init__(self, attr):
        self._attr = attr

    def __enter__(self):
        _push_range(self._attr, _domain.handle)
        return self

    def __exit__(self, *exc):
        _pop_range(_domain.handle)
        return False


@dataclass
class RangeEvent:
    """One range entered while :func:`record_ranges` was active."""

    name: str
    payload: dict = field(default_factory=dict)


class _Range:
    """The active path of :func:`annotate` (NVTX, recorders, torch ranges)."""

    __slots__ = ("name", "payload", "_nvtx", "_rf")

    def __init__(self, name: str, payload: dict):
        self.name, self.payload = name, payload
        self._nvtx = _enabled and _tool_attached
        self._rf = None

    def __enter__(self):
        for rec in _recorders:
            rec.append(RangeEvent(self.name, dict(self.payload)))
        if self._nvtx:
            _nvtx_range(self.name, self.payload).__enter__()
        if _torch_ranges:
            import torch

            self._rf = torch.profiler.record_function(self.name)
            self._rf.__enter__()
        return self

    def __exit__(self, *exc):
        if self._rf is not None:
            self._rf.__exit__(*exc)
            self._rf = None
        if self._nvtx:
            _pop_range(_domain.handle)
        return False


_NULL = contextlib.nullcontext()


def annotate(name: str, **payload):
    """Context manager: a range ``name`` (``questkern.<op>``) with an optional int payload.

    with annotate("questkern.select", batch=B, pages=P, k=K):
        launch()
    """
    if name not in _checked:
        check_range_name(name)
        _checked.add(name)
    if _idle:
        return _NULL
    if _nvtx_only:
        return _nvtx_range(name, payload)
    return _Range(name, payload)


def _nvtx_range(name: str, payload: dict) -> _NvtxRange:
    key = (name, *payload.items())
    r = _ranges.get(key)
    if r is None:
        r = _ranges[key] = _NvtxRange(_attributes(name, payload))
    return r


def trial_range(number: int, **payload):
    """Range ``questkern.trial`` around one tuning trial, carrying its trial number."""
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"trial number must be an int >= 0, got {number!r}")
    return annotate("questkern.trial", trial=number, **payload)


@contextlib.contextmanager
def record_ranges():
    """Collect every range entered in this block (a list of :class:`RangeEvent`), NVTX on or off."""
    events: list[RangeEvent] = []
    _recorders.append(events)
    _refresh()
    try:
        yield events
    finally:
        _recorders.remove(events)
        _refresh()


@contextlib.contextmanager
def torch_ranges():
    """Mirror every questkern range as a ``torch.profiler.record_function`` of the same name."""
    global _torch_ranges
    _torch_ranges += 1
    _refresh()
    try:
        yield
    finally:
        _torch_ranges -= 1
        _refresh()


__all__ = [
    "DOMAIN",
    "RANGE_NAMES",
    "ENV_VAR",
    "annotate",
    "trial_range",
    "check_range_name",
    "nvtx_enabled",
    "nvtx_switched_on",
    "set_nvtx_enabled",
    "record_ranges",
    "torch_ranges",
    "RangeEvent",
]

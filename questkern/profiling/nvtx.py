"""NVTX ranges around every questkern launch, for Nsight Compute/Systems filtering.

Ranges live in the ``questkern`` domain and are named ``questkern.<op>`` (never a
``/``: ncu reads it as nesting). They are host-side markers: inside a CUDA graph
replay they cost nothing. Switch them off with ``QUESTKERN_NVTX=0`` or
:func:`set_nvtx_enabled`. Without the ``nvtx`` package they are no-ops.
"""

from __future__ import annotations

import contextlib
import os

try:  # the nvtx package is a declared dependency, but keep import-time robust
    import nvtx as _nvtx
except Exception:  # pragma: no cover - exercised only where nvtx is absent
    _nvtx = None

DOMAIN = "questkern"
_enabled = os.environ.get("QUESTKERN_NVTX", "1") not in ("0", "false", "False", "")
_domain = _nvtx.get_domain(DOMAIN) if _nvtx is not None else None


def nvtx_enabled() -> bool:
    return _enabled and _nvtx is not None


def set_nvtx_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def annotate(name: str, **payload):
    """Context manager: an NVTX range ``name`` (must start with ``questkern.``)."""
    if "/" in name:
        raise ValueError(f"NVTX range name {name!r} must not contain '/' (ncu treats it as nesting)")
    if not nvtx_enabled():
        return contextlib.nullcontext()
    msg = name if not payload else name + " " + " ".join(f"{k}={v}" for k, v in payload.items())
    return _nvtx.annotate(message=msg, domain=DOMAIN)

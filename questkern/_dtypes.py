"""dtype names, in one table: the canonical names that tuning tables and buckets use
("bfloat16"), the short names of flags and CSV columns ("bf16"), the torch dtypes, and the
storage types of page metadata ("fp32", "fp8_e5m2", ...)."""

from __future__ import annotations

import torch

# attention dtypes: canonical name, short name, torch dtype, further accepted spellings
_ATTENTION = (("bfloat16", "bf16", torch.bfloat16, ()), ("float16", "fp16", torch.float16, ("half",)))

DTYPE_NAMES = {t: name for name, _, t, _ in _ATTENTION}  # torch dtype -> canonical name
DTYPE_ALIASES = {alias: name for name, short, _, more in _ATTENTION for alias in (short, name, *more)}
FLAG_DTYPES = {a: t for name, short, t, _ in _ATTENTION for a in (short, name)}  # what --dtype accepts
SHORT_NAMES = {t: short for _, short, t, _ in _ATTENTION}  # torch dtype -> short name

# page metadata storage types (the quality study's names; "fp32" keeps the bound exactly)
META_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e5m2": torch.float8_e5m2,
}


def dtype_name(dtype) -> str:
    """torch.bfloat16 / 'bf16' / 'bfloat16' -> 'bfloat16' (likewise float16)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
        return DTYPE_NAMES[dtype]
    if isinstance(dtype, str) and dtype.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(DTYPE_ALIASES)} or a torch dtype, got {dtype!r}")


def torch_dtype(name) -> torch.dtype:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16 (likewise float16)."""
    return {n: t for t, n in DTYPE_NAMES.items()}[dtype_name(name)]


def short_name(dtype) -> str:
    """torch.bfloat16 / 'bfloat16' -> 'bf16' (likewise float16)."""
    return SHORT_NAMES[torch_dtype(dtype)]


def meta_name(dtype: torch.dtype | None) -> str:
    """The metadata storage name of a torch dtype ('' for None: metadata in the cache's dtype)."""
    return "" if dtype is None else {t: n for n, t in META_DTYPES.items()}[dtype]

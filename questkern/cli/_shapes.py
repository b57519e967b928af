"""Shape flags shared by the subcommands that build a decode workload (bench, profile, tune)."""

from __future__ import annotations

import argparse
import re

import torch

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_size(text: str) -> int:
    """'32k' -> 32768, '32768' -> 32768, '1m' -> 1048576."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 32k or 32768, got {text!r}")
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return n


def parse_sizes(text: str) -> list[int]:
    """'8k,32k,128k' -> [8192, 32768, 131072]."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of sizes, got {text!r}")
    return [parse_size(p) for p in parts]


def parse_heads(text: str) -> list[tuple[int, int]]:
    """'32/32,32/8' -> [(32, 32), (32, 8)] as (q_heads, kv_heads)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)/(\d+)\s*", part)
        if not m:
            raise argparse.ArgumentTypeError(f"expected heads as Q/KV like 32/8, got {part!r}")
        hq, hkv = int(m.group(1)), int(m.group(2))
        if hq <= 0 or hkv <= 0 or hq % hkv:
            raise argparse.ArgumentTypeError(f"q heads must be a positive multiple of kv heads, got {part!r}")
        out.append((hq, hkv))
    return out


def parse_dtype(text: str) -> torch.dtype:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"dtype must be one of {sorted(DTYPES)}, got {text!r}")
    return DTYPES[text]


def parse_positive_seconds(text: str) -> float:
    """A positive number of seconds (``--timeout``, ``--max-time``, ...)."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def parse_positive_int(text: str) -> int:
    """'8' -> 8; zero, negatives and non-integers are argparse errors."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def parse_ints(text: str) -> list[int]:
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _choices(text: str, allowed: tuple, what: str) -> list[int]:
    vals = parse_ints(text)
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"{what} must be among {', '.join(map(str, allowed))} (what the kernels "
                                         f"take), got {', '.join(map(str, bad))}")
    return vals


def parse_head_dims(text: str) -> list[int]:
    """'64,128' -> [64, 128]; only the head dims the kernels take (questkern.validate.HEAD_DIMS)."""
    from questkern.validate import HEAD_DIMS

    return _choices(text, HEAD_DIMS, "head dims")


def parse_page_sizes(text: str) -> list[int]:
    """'16' -> [16]; only the page sizes the kernels take (questkern.validate.PAGE_SIZES)."""
    from questkern.validate import PAGE_SIZES

    return _choices(text, PAGE_SIZES, "page sizes")


def parse_head_dim(text: str) -> int:
    """One head dim the kernels take."""
    vals = parse_head_dims(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one head dim, got {text!r}")
    return vals[0]


def parse_page_size(text: str) -> int:
    """One page size the kernels take."""
    vals = parse_page_sizes(text)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one page size, got {text!r}")
    return vals[0]


def add_shape_args(p: argparse.ArgumentParser, *, defaults: dict | None = None) -> None:
    d = {"seq": "8k,32k,128k", "batch": "1,8", "heads": "32/32,32/8", "head_dim": "128", "dtype": "bf16",
         "page_size": "16", "budget": "2048", "gqa_mode": "shared"}
    d.update(defaults or {})
    p.add_argument("--seq", type=parse_sizes, default=parse_sizes(d["seq"]), help=f"context lengths (default {d['seq']})")
    p.add_argument("--batch", type=parse_ints, default=parse_ints(d["batch"]), help=f"batch sizes (default {d['batch']})")
    p.add_argument("--heads", type=parse_heads, default=parse_heads(d["heads"]), help=f"Q/KV head layouts (default {d['heads']})")
    p.add_argument("--head-dim", type=parse_head_dims, default=parse_head_dims(d["head_dim"]),
                   help=f"head dims (default {d['head_dim']})")
    p.add_argument("--dtype", type=parse_dtype, default=parse_dtype(d["dtype"]), help=f"bf16 or fp16 (default {d['dtype']})")
    p.add_argument("--page-size", type=parse_page_sizes, default=parse_page_sizes(d["page_size"]),
                   help=f"page sizes (default {d['page_size']})")
    p.add_argument("--budget", type=parse_ints, default=parse_ints(d["budget"]), help=f"token budgets (default {d['budget']})")
    p.add_argument("--gqa-mode", choices=["shared", "per_head"], default=d["gqa_mode"], help="GQA selection mode (default %(default)s)")

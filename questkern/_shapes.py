"""Command-line value parsers and the shape flags shared by the subcommands that build a decode
workload (bench, profile, tune, recheck, show-config) and by the tools' own ``python -m`` mains."""

from __future__ import annotations

import argparse
import re

import torch

from questkern._dtypes import FLAG_DTYPES

DTYPES = FLAG_DTYPES


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
    """'1,4' -> [1, 4]; an empty list, zero, negatives and non-integers are argparse errors."""
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return vals


def parse_nonnegative_int(text: str) -> int:
    """'0' -> 0; negatives and non-integers are argparse errors."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _parse_ints_in(name: str, allowed: tuple):
    def parse(text: str) -> list[int]:
        vals = parse_ints(text)
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{name} must be among {','.join(map(str, allowed))} (what the kernels "
                f"support), got {','.join(map(str, bad))}"
            )
        return vals

    return parse


def _one(parse_list):
    def parse(text: str) -> int:
        vals = parse_list(text)
        if len(vals) != 1:
            raise argparse.ArgumentTypeError(f"expected one value, got {text!r}")
        return vals[0]

    return parse


def parse_page_sizes(text: str) -> list[int]:
    """'16' or '16,32': page sizes the kernels support (questkern.validate.PAGE_SIZES)."""
    from questkern.validate import PAGE_SIZES

    return _parse_ints_in("page size", PAGE_SIZES)(text)


def parse_head_dims(text: str) -> list[int]:
    """'128' or '64,128': head dims the kernels support (questkern.validate.HEAD_DIMS)."""
    from questkern.validate import HEAD_DIMS

    return _parse_ints_in("head dim", HEAD_DIMS)(text)


parse_page_size = _one(parse_page_sizes)
parse_head_dim = _one(parse_head_dims)


def parse_fix(text: str) -> dict:
    """'num_stages=2,fuse_combine=false,topk=radix' -> {'num_stages': 2, 'fuse_combine': False, 'topk': 'radix'}."""
    out: dict = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name or not value:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {part!r}")
        if value.lower() in ("true", "false"):
            out[name] = value.lower() == "true"
        else:
            try:
                out[name] = int(value)
            except ValueError:
                out[name] = value
    return out


def parse_dtypes(text: str) -> list[torch.dtype]:
    """'bf16' or 'bf16,fp16' -> [torch dtypes]."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected bf16, fp16 or bf16,fp16, got {text!r}")
    return list(dict.fromkeys(parse_dtype(p) for p in parts))


def parse_one_heads(text: str) -> tuple[int, int]:
    """'32/8' -> (32, 8); '32' means 32/32."""
    heads = parse_heads(text if "/" in text else f"{text}/{text}")
    if len(heads) != 1:
        raise argparse.ArgumentTypeError(f"expected one Q/KV layout like 32/8, got {text!r}")
    return heads[0]


GQA_MODES = ("shared", "per_head")

# The shape flags of every command that builds a decode workload, defined once:
# flag -> (parser of one value, parser of a comma-separated list, help for one, help for a list)
SHAPE_FLAGS: dict[str, tuple] = {
    "seq": (parse_size, parse_sizes, "context length, e.g. 32k", "context lengths, e.g. 8k,32k,128k"),
    "batch": (parse_positive_int, parse_ints, "batch size", "batch sizes"),
    "heads": (
        parse_one_heads,
        parse_heads,
        "Q/KV heads, e.g. 32/8 ('32' means 32/32)",
        "Q/KV head layouts, e.g. 32/32,32/8",
    ),
    "head_dim": (parse_head_dim, parse_head_dims, "head dim", "head dims"),
    "dtype": (parse_dtype, parse_dtypes, "bf16 or fp16", "bf16, fp16 or bf16,fp16"),
    "page_size": (parse_page_size, parse_page_sizes, "tokens per page", "page sizes"),
    "budget": (parse_positive_int, parse_ints, "Quest token budget", "token budgets"),
    "gqa_mode": (None, None, "GQA selection mode", "GQA selection mode"),
}
# what ``questkern bench`` measures by default (each command overrides what it needs)
BENCH_DEFAULTS = {
    "seq": "8k,32k,128k",
    "batch": "1,8",
    "heads": "32/32,32/8",
    "head_dim": "128",
    "dtype": "bf16",
    "page_size": "16",
    "budget": "2048",
    "gqa_mode": "shared",
}
LIST_FLAGS = ("seq", "batch", "heads", "head_dim", "page_size", "budget")  # bench and profile take these as lists


def add_shape_args(
    p: argparse.ArgumentParser,
    *,
    defaults: dict | None = None,
    lists=LIST_FLAGS,
    required=(),
    notes: dict | None = None,
) -> None:
    """Add the eight shape flags (--seq --batch --heads --head-dim --dtype --page-size --budget --gqa-mode).

    ``defaults`` (flag -> text as typed on the command line, or None: no default) update
    :data:`BENCH_DEFAULTS`; flags named in ``lists`` take comma-separated lists, the others one
    value; flags in ``required`` have no default and must be given; ``notes`` add a few words to
    a flag's help.
    """
    d = {**BENCH_DEFAULTS, **(defaults or {})}
    notes = notes or {}
    for name, (one, many, help_one, help_many) in SHAPE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        is_list = name in lists
        text = help_many if is_list else help_one
        if name in notes:
            text += f"; {notes[name]}"
        kw: dict = {"choices": GQA_MODES} if one is None else {"type": many if is_list else one}
        if name in required:
            p.add_argument(flag, required=True, help=text, **kw)
            continue
        default = d[name]
        value = default if (default is None or one is None) else kw["type"](default)
        p.add_argument(flag, default=value, help=f"{text} (default {'any' if default is None else default})", **kw)

"""``questkern profile``: one decode-step workload under Nsight Compute, NVTX-filtered to the
questkern ranges; falls back to the PyTorch profiler where ncu is missing or cannot read
the counters. Each run writes a new folder, ``profiles/<gpu-key>/<timestamp>-<name>/``.
Shape flags are those of ``questkern bench``, one value each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from questkern.cli import describe, invocation
from questkern._shapes import add_shape_args, parse_nonnegative_int, parse_positive_int

PROFILE_DEFAULTS = {
    "seq": "32k",
    "batch": "1",
    "heads": "32/32",
    "head_dim": "128",
    "dtype": "bf16",
    "page_size": "16",
    "budget": "2048",
    "gqa_mode": "shared",
}


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="profile a decode step under Nsight Compute (or torch.profiler)",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_shape_args(p, defaults=PROFILE_DEFAULTS)
    p.add_argument("--name", default="decode", help="label of the profile folder (default %(default)s)")
    p.add_argument(
        "--mode", choices=["quest", "dense"], default="quest", help="Quest step or dense decode (default quest)"
    )
    p.add_argument("--steps", type=parse_positive_int, default=3, help="profiled decode steps (default %(default)s)")
    p.add_argument(
        "--warmup",
        type=parse_nonnegative_int,
        default=2,
        help="warm-up steps, outside the NVTX filter (default %(default)s)",
    )
    p.add_argument(
        "--no-append", dest="append", action="store_false", help="skip the per-step token append (metadata update)"
    )
    p.add_argument(
        "--tool",
        choices=["auto", "ncu", "torch"],
        default="auto",
        help="auto: ncu, else torch.profiler with a note; ncu: fail without it; torch: skip ncu (default auto)",
    )
    p.add_argument("--ncu", default=None, help="path of the ncu binary (default: PATH, then the CUDA folders)")
    p.add_argument("--nsys", default=None, help="path of the nsys binary, for the printed command (default: PATH)")
    p.add_argument("--out-dir", type=Path, default=Path("profiles"), help="profiles root (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the command lines, run nothing, write nothing")
    p.set_defaults(func=run)


def _one(args, flag: str):
    v = getattr(args, flag)
    if isinstance(v, list):
        if len(v) != 1:
            raise SystemExit(f"questkern profile: --{flag.replace('_', '-')} takes one value, got {len(v)}: {v}")
        return v[0]
    return v


def shape_from_args(args) -> dict:
    """The single-valued shape dict the workload takes, from bench-style (list) flags."""
    from questkern._dtypes import short_name

    hq, hkv = _one(args, "heads")
    for flag in ("steps",):
        if getattr(args, flag) <= 0:
            raise SystemExit(f"questkern profile: --{flag} must be > 0, got {getattr(args, flag)}")
    if args.warmup < 0:
        raise SystemExit(f"questkern profile: --warmup must be >= 0, got {args.warmup}")
    return {
        "seq_len": _one(args, "seq"),
        "batch": _one(args, "batch"),
        "q_heads": hq,
        "kv_heads": hkv,
        "head_dim": _one(args, "head_dim"),
        "dtype": short_name(args.dtype),
        "page_size": _one(args, "page_size"),
        "budget": _one(args, "budget"),
        "gqa_mode": args.gqa_mode,
        "mode": args.mode,
        "warmup": args.warmup,
        "steps": args.steps,
        "append": args.append,
    }


def run(args) -> int:
    from questkern.profiling.runner import check_name, run_profile

    shape = shape_from_args(args)
    from questkern.cli._paths import check_output_dir

    try:
        check_name(args.name)
        check_output_dir("--out-dir", args.out_dir)
    except ValueError as e:
        raise SystemExit(f"questkern profile: {e}") from None
    res = run_profile(
        shape,
        name=args.name,
        root=args.out_dir,
        tool=args.tool,
        ncu=args.ncu,
        nsys=args.nsys,
        dry_run=args.dry_run,
        invocation=invocation(args),
    )
    if res.summary is not None:
        import pandas as pd

        df = pd.read_csv(res.summary)
        cols = [
            c
            for c in (
                "kind",
                "basis",
                "op",
                "kernel",
                "calls",
                "duration_us",
                "per_step_us",
                "dram_gbps",
                "achieved_occupancy_pct",
                "registers_per_thread",
            )
            if c in df.columns and df[c].notna().any()
        ]
        print(df[cols].to_string(index=False))
    return 0

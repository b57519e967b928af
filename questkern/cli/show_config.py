"""``questkern show-config``: which tuned entry (or heuristic) a call would use, and why.

    questkern show-config --op select --seq 32k --batch 8 --heads 32/8 --head-dim 128 --page-size 16

Prints the GPU key, every table source searched (environment variable, user cache,
shipped) with what was found there, the chosen entry (file, buckets, distance) or the
reason for the heuristic fallback, and the config. Reads tables only; never tunes.
"""

from __future__ import annotations

import argparse
import json
import sys

from questkern._shapes import add_shape_args
from questkern.cli import describe


def _gpu_arg(text: str) -> str:
    """A non-empty GPU key, device name or family alias (normalized later)."""
    from questkern.configs.gpus import normalize_gpu_name

    if not text.strip() or not normalize_gpu_name(text):
        raise argparse.ArgumentTypeError(f"expected a GPU key, device name or family (e.g. h100), got {text!r}")
    return text


def register(sub) -> None:
    from questkern.configs.keys import OPS

    p = sub.add_parser(
        "show-config",
        help="show which tuned config a call would use and why",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--op", choices=OPS, required=True, help="kernel op")
    add_shape_args(
        p,
        lists=(),
        required=("seq",),
        defaults={"batch": "1", "heads": "32/8", "budget": None, "gqa_mode": None},
        notes={"budget": "select/sparse_decode", "gqa_mode": "select/sparse_decode"},
    )
    p.add_argument(
        "--gpu",
        type=_gpu_arg,
        default=None,
        help="GPU whose tables to read: a key (nvidia-h100-80gb-hbm3), a device name, or a family alias "
        "(h100) when exactly one table of that family is found (default: this device)",
    )
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run)


def resolve_gpu(arg: str) -> str:
    """--gpu as a table key: a family alias (``h100``) means the one table of that family in
    the table sources; a key or device name is normalized. ValueError when an alias
    matches several tables."""
    from questkern.configs import paths
    from questkern.configs.gpus import ALIASES, FAMILY_NAMES, gpu_family, normalize_gpu_name

    key = normalize_gpu_name(arg)
    fam = ALIASES.get(key, key if key in FAMILY_NAMES else None)
    if fam is None:
        return key
    found = sorted(
        {
            f.name.removesuffix(".json")
            for _label, d in paths.table_sources()
            if d is not None and d.is_dir()
            for f in d.glob("*.json")
            if not f.name.endswith(".pareto.json") and gpu_family(f.name.removesuffix(".json")) == fam
        }
    )
    if len(found) > 1:
        raise ValueError(
            f"--gpu {arg!r} (family {fam}) matches the tables of {', '.join(found)}: pass one of these keys"
        )
    return found[0] if found else key


def run(args) -> int:
    from questkern._details import select_backend

    select_backend()
    from questkern.configs.gpus import current_gpu_key
    from questkern.configs.runtime import explain_config

    hq, hkv = args.heads
    try:
        key = resolve_gpu(args.gpu) if args.gpu else current_gpu_key()
    except ValueError as exc:
        print(f"questkern show-config: error: {exc}", file=sys.stderr)
        return 2
    r = explain_config(
        args.op,
        dtype=args.dtype,
        head_dim=args.head_dim,
        group=hq // hkv,
        page_size=args.page_size,
        seq_len=args.seq,
        batch=args.batch,
        budget=args.budget,
        gqa_mode=args.gqa_mode,
        gpu_key=key,
        warn=False,
    )
    sources = [
        {"label": s.label, "path": str(s.path) if s.path else None, "status": s.status, "detail": s.detail}
        for s in r.tables.sources
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "gpu_key": r.gpu_key,
                    "key": r.key.to_dict(),
                    "source": r.source,
                    "path": str(r.path) if r.path else None,
                    "distance": r.distance,
                    "reason": r.reason,
                    "config": r.config.to_dict(),
                    "entry": r.entry,
                    "sources": sources,
                },
                indent=1,
            )
        )
        return 0
    out = sys.stdout
    print(f"gpu key:   {r.gpu_key}", file=out)
    print(
        f"call:      {args.op} {r.key.dtype} d{args.head_dim} heads {hq}/{hkv} (group {hq // hkv}) page {args.page_size} "
        f"seq {args.seq} (bucket 2^{r.key.seq_bucket}) batch {args.batch} (bucket 2^{r.key.batch_bucket})"
        + (f" budget {args.budget}" if args.budget else ""),
        file=out,
    )
    print("tables searched (first wins):", file=out)
    for i, s in enumerate(sources, 1):
        print(
            f"  {i}. {s['label']:<22} {s['path'] or '(not set)'}: {s['status']}"
            + (f" ({s['detail']})" if s["detail"] else ""),
            file=out,
        )
    if r.entry is not None:
        e = r.entry
        print(f"chosen:    {r.path}", file=out)
        print(
            f"           entry seq 2^{e['seq_bucket']} batch 2^{e['batch_bucket']}"
            + (f" budget {e['budget']}" if e.get("budget") else "")
            + (f" {e['gqa_mode']}" if e.get("gqa_mode") else "")
            + f" ({r.reason})",
            file=out,
        )
        dl = e.get("default_latency_us")
        sp = f", {dl / e['latency_us']:.3f}x over the default ({dl:.2f} us)" if dl else ""
        print(f"           tuned {e['date']}: {e['latency_us']:.2f} us{sp}, {e['trials']} trials", file=out)
    else:
        print(f"chosen:    heuristic ({r.reason})", file=out)
    print(f"config:    {r.config}", file=out)
    return 0

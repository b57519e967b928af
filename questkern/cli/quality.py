"""``questkern quality``: attention quality of Quest selection on real traces (SmolLM2-135M on CPU).

    questkern quality traces   # SmolLM2 traces + end-to-end passkey accuracy (2 CPU cores: ~25 min)
    questkern quality study    # recall / output error CSVs from the cached traces (~16 min)
    questkern quality all      # both
    questkern quality demo     # SmolLM2 generating with questkern attention (one prompt)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from questkern.cli import describe

DATA_DIR = Path("reports/data")


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("quality", help="attention quality study (recall, page size, adaptive budget)",
                              description=describe(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="quality_command", required=True)

    def common(sp):
        sp.add_argument("--trace-dir", type=Path, default=None, help="trace cache (default ~/.cache/questkern/traces or $QUESTKERN_TRACE_DIR)")
        sp.add_argument("--out-dir", type=Path, default=DATA_DIR, help="where the CSVs go (default reports/data)")

    def capture_args(sp):
        sp.add_argument("--contexts", type=_ints, default=(1024, 2048, 4096, 8192), help="prompt lengths in tokens")
        sp.add_argument("--depths", type=_floats, default=None, help="passkey depths (default 0.1,0.5,0.9)")
        sp.add_argument("--texts", type=int, default=1, help="natural-text prompts per context")
        sp.add_argument("--no-e2e", action="store_true", help="traces only, skip the end-to-end passkey configs")
        sp.add_argument("--dense-layers", type=int, default=2, help="layers kept dense in end-to-end runs")
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sp.add_argument("--force", action="store_true", help="recapture traces that exist")

    def study_args(sp):
        sp.add_argument("--page-sizes", type=_ints, default=(8, 16, 32, 64))
        sp.add_argument("--dense-layers", type=int, default=2, help="layers left out of the summary (they stay dense)")

    t = sub.add_parser("traces", help="capture traces and end-to-end passkey accuracy")
    common(t)
    capture_args(t)
    t.set_defaults(func=_traces)
    s = sub.add_parser("study", help="recall / output-error CSVs from cached traces")
    common(s)
    study_args(s)
    s.set_defaults(func=_study)
    a = sub.add_parser("all", help="traces, then study")
    common(a)
    capture_args(a)
    a.add_argument("--page-sizes", type=_ints, default=(8, 16, 32, 64))
    a.set_defaults(func=_all)
    d = sub.add_parser("demo", help="generate with SmolLM2 using questkern attention")
    d.add_argument("--context", type=int, default=2048, help="passkey prompt length")
    d.add_argument("--depth", type=float, default=0.5)
    d.add_argument("--budget", type=int, default=256)
    d.add_argument("--page-size", type=int, default=16)
    d.add_argument("--backend", choices=("reference", "kernels"), default="reference")
    d.set_defaults(func=_demo)


def _trace_dir(args) -> Path:
    from questkern.quality.traces import default_trace_dir

    return args.trace_dir or default_trace_dir()


def _traces(args) -> int:
    from questkern.quality.capture import capture_all

    capture_all(_trace_dir(args), args.out_dir / "quality_passkey.csv", contexts=args.contexts, depths=args.depths,
                texts_per_context=args.texts, e2e=[] if args.no_e2e else None, dense_layers=args.dense_layers,
                threads=args.threads, skip_existing=not args.force)
    return 0


def _study(args) -> int:
    from questkern.quality.study import run_study

    run_study(_trace_dir(args), args.out_dir, page_sizes=args.page_sizes, dense_layers=args.dense_layers)
    return 0


def _all(args) -> int:
    _traces(args)
    return _study(args)


def _demo(args) -> int:
    from questkern.quality.demo import demo

    demo(context=args.context, depth=args.depth, budget=args.budget, page_size=args.page_size, backend=args.backend)
    return 0

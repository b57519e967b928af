"""``questkern quality``: attention quality of Quest selection on real traces (SmolLM2-135M on CPU).

    questkern quality traces   # SmolLM2 traces + end-to-end passkey accuracy (2 CPU cores: ~25 min)
    questkern quality study    # recall / output error CSVs from the cached traces (~16 min)
    questkern quality all      # both
    questkern quality demo     # SmolLM2 generating with questkern attention (one prompt)

The CSVs go to a new folder, reports/data/quality-<UTC time>/, unless --out-dir names
one; files that exist there are refused unless --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from questkern._shapes import parse_ints, parse_nonnegative_int, parse_positive_int
from questkern.cli import describe
from questkern.cli._out import OutputExists, check_new, stamped

DATA_DIR = Path("reports/data")
TRACE_OUTPUTS = ("quality_passkey.csv",)
STUDY_OUTPUTS = ("quality_recall.csv", "quality_layers.csv", "quality_answers.json")


def _ints(s: str) -> tuple[int, ...]:
    return tuple(parse_ints(s))


def _floats(s: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or any(not 0 <= v <= 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated depths in [0, 1], got {s!r}")
    return vals


def _depth(s: str) -> float:
    vals = _floats(s)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one depth in [0, 1], got {s!r}")
    return vals[0]


def _page_sizes(s: str) -> tuple[int, ...]:
    from questkern.validate import PAGE_SIZES

    vals = _ints(s)
    bad = [v for v in vals if v not in PAGE_SIZES]
    if bad:
        raise argparse.ArgumentTypeError(f"page sizes must be among {','.join(map(str, PAGE_SIZES))}, got {s!r}")
    return vals


def _page_size(s: str) -> int:
    vals = _page_sizes(s)
    if len(vals) != 1:
        raise argparse.ArgumentTypeError(f"expected one page size, got {s!r}")
    return vals[0]


def _check_dirs(args) -> None:
    """--out-dir / --trace-dir: directories that exist or can be created (before any work)."""
    from questkern.cli._paths import check_output_dir

    try:
        for flag, d in (
            ("--out-dir", getattr(args, "out_dir", None)),
            ("--trace-dir", getattr(args, "trace_dir", None)),
        ):
            if d is not None:
                check_output_dir(flag, d)
    except ValueError as e:
        raise SystemExit(f"questkern quality: {e}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "quality",
        help="attention quality study (recall, page size, adaptive budget)",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="quality_command", required=True, metavar="STEP")

    def common(sp):
        sp.add_argument(
            "--trace-dir",
            type=Path,
            default=None,
            help="trace cache (default $QUESTKERN_TRACE_DIR, else ~/.cache/questkern/traces)",
        )
        sp.add_argument(
            "--out-dir",
            type=Path,
            default=None,
            help="folder for the CSVs (default: a new reports/data/quality-<UTC time>/)",
        )
        sp.add_argument(
            "--force", action="store_true", help="replace output files that exist in --out-dir (default: refuse)"
        )

    def capture_args(sp):
        sp.add_argument(
            "--contexts",
            type=_ints,
            default=(1024, 2048, 4096, 8192),
            help="prompt lengths in tokens (default 1024,2048,4096,8192)",
        )
        sp.add_argument(
            "--depths", type=_floats, default=None, help="passkey depths, fractions 0-1 (default 0.1,0.5,0.9)"
        )
        sp.add_argument(
            "--texts", type=parse_positive_int, default=1, help="natural-text prompts per context (default 1)"
        )
        sp.add_argument("--no-e2e", action="store_true", help="traces only: skip the end-to-end passkey runs")
        sp.add_argument(
            "--dense-layers",
            type=parse_nonnegative_int,
            default=2,
            help="layers kept dense in end-to-end runs (default 2)",
        )
        sp.add_argument(
            "--threads", type=parse_positive_int, default=None, help="torch CPU threads (default: torch's choice)"
        )
        sp.add_argument(
            "--recapture", action="store_true", help="capture traces again even when cached (default: reuse)"
        )

    def study_args(sp, dense=True):
        sp.add_argument(
            "--page-sizes", type=_page_sizes, default=(8, 16, 32, 64), help="page sizes studied (default 8,16,32,64)"
        )
        if dense:
            sp.add_argument(
                "--dense-layers",
                type=parse_nonnegative_int,
                default=2,
                help="first layers left out of the summary: they stay dense (default 2)",
            )

    t = sub.add_parser(
        "traces",
        help="capture traces and end-to-end passkey accuracy",
        description="Capture attention traces of SmolLM2-135M and run the end-to-end passkey prompts.",
    )
    common(t)
    capture_args(t)
    t.set_defaults(func=_traces)
    s = sub.add_parser(
        "study",
        help="recall / output-error CSVs from cached traces",
        description="Recall and output error of Quest selection, from the cached traces. The answers "
        "use quality_passkey.csv of --out-dir when it is there.",
    )
    common(s)
    study_args(s)
    s.set_defaults(func=_study)
    a = sub.add_parser("all", help="traces, then study", description="Capture the traces, then run the study.")
    common(a)
    capture_args(a)
    study_args(a, dense=False)
    a.set_defaults(func=_all)
    d = sub.add_parser(
        "demo",
        help="generate with SmolLM2 using questkern attention",
        description="SmolLM2-135M answers one passkey prompt with Quest attention; writes nothing.",
    )
    d.add_argument(
        "--context", type=parse_positive_int, default=2048, help="passkey prompt length in tokens (default 2048)"
    )
    d.add_argument("--depth", type=_depth, default=0.5, help="where the passkey sits, fraction 0-1 (default 0.5)")
    d.add_argument("--budget", type=parse_positive_int, default=256, help="Quest token budget (default 256)")
    d.add_argument("--page-size", type=_page_size, default=16, help="page size (default 16)")
    d.add_argument(
        "--backend",
        choices=("reference", "kernels"),
        default="reference",
        help="reference (PyTorch) or kernels (Triton; the interpreter without a GPU) (default reference)",
    )
    d.set_defaults(func=_demo)


def _out_dir(args, outputs) -> Path:
    """--out-dir (its outputs refused when they exist, unless --force) or a new timestamped folder."""
    if args.out_dir is None:
        return stamped(DATA_DIR, "quality", suffix="")
    check_new([args.out_dir / f for f in outputs], force=args.force, flag="--out-dir")
    return args.out_dir


def _checked(args, outputs) -> Path | None:
    _check_dirs(args)  # the folders first (a file where a folder is wanted, one that cannot be made)
    try:
        return _out_dir(args, outputs)
    except OutputExists as e:
        print(f"questkern quality: error: {e}", file=sys.stderr)
        return None


def _trace_dir(args) -> Path:
    from questkern.quality.traces import default_trace_dir

    return args.trace_dir or default_trace_dir()


def _traces(args, out: Path | None = None) -> int:
    from questkern.quality.capture import capture_all

    out = out or _checked(args, TRACE_OUTPUTS)
    if out is None:
        return 2
    capture_all(
        _trace_dir(args),
        out / "quality_passkey.csv",
        contexts=args.contexts,
        depths=args.depths,
        texts_per_context=args.texts,
        e2e=[] if args.no_e2e else None,
        dense_layers=args.dense_layers,
        threads=args.threads,
        skip_existing=not args.recapture,
    )
    return 0


def _study(args, out: Path | None = None) -> int:
    from questkern.quality.study import run_study

    out = out or _checked(args, STUDY_OUTPUTS)
    if out is None:
        return 2
    run_study(_trace_dir(args), out, page_sizes=args.page_sizes, dense_layers=args.dense_layers)
    return 0


def _all(args) -> int:
    out = _checked(args, TRACE_OUTPUTS + STUDY_OUTPUTS)
    if out is None:
        return 2
    return _traces(args, out) or _study(args, out)


def _demo(args) -> int:
    from questkern.quality.demo import demo

    demo(context=args.context, depth=args.depth, budget=args.budget, page_size=args.page_size, backend=args.backend)
    return 0

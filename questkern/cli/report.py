"""``questkern report``: one GPU's bench CSVs, tuning table, profiles and the quality study
-> one self-contained HTML file (plotly.js inlined; opens with no network).

    questkern report --name h100 --data reports/data/nvidia-h100-80gb-hbm3 --data reports/data/quality_recall.csv

The page opens with a summary (headline cases, the model step, tuned vs heuristic, quality
at the default) and one figure; details follow, long tables collapsed.

One GPU per report: --gpu picks it when the data holds several (a key, or a family such as
h100); rows, tuning tables and profiles of other GPUs are left out with a notice. Data:
every CSV under --data (bench, model bench and quality CSVs are told apart by their
columns). Profiles: profiles/<gpu-key>/ unless --profiles. Tuning tables: tuning/ and the
shipped tables, this GPU's only. Optuna plots: --study-storage URL [--study NAME ...].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from questkern.cli import describe, invocation
from questkern.profiling.runner import NAME_RE


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="build reports/<name>.html from benchmarks, tuning and profiles",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="report name: writes OUT_DIR/NAME.html (required)")
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        help="bench/quality CSV file or folder, repeatable (default reports/data)",
    )
    p.add_argument(
        "--gpu",
        default=None,
        help="the GPU of the report: a key (nvidia-h100-80gb-hbm3) or a family (h100) (default: the one GPU "
        "of the data; several are an error)",
    )
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=None,
        help="folder searched for **/summary.csv, repeatable (default profiles/<gpu-key>)",
    )
    p.add_argument(
        "--tuning",
        type=Path,
        action="append",
        default=None,
        help="tuning table file or folder, repeatable (default tuning and questkern/tuning/tables)",
    )
    p.add_argument("--no-tuning", action="store_true", help="leave tuning tables out (e.g. for a fixture report)")
    p.add_argument(
        "--study-storage",
        default=None,
        help="Optuna storage URL, e.g. sqlite:///tuning/studies.db (default: none, no study plots)",
    )
    p.add_argument("--study", action="append", default=None, help="study name in that storage (default: all)")
    p.add_argument("--title", default=None, help="page title (default 'questkern performance report: NAME')")
    p.add_argument("--out-dir", type=Path, default=Path("reports"), help="where <name>.html goes (default %(default)s)")
    p.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        help="also write a PNG of the summary figure there (needs Debian's chromium) (default: none)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing <name>.html")
    p.set_defaults(func=run)


def run(args) -> int:
    from questkern._io import write_text_atomic
    from questkern.report import gather, render
    from questkern.report.data import ReportDataError

    if not NAME_RE.fullmatch(args.name):
        raise SystemExit(f"questkern report: --name must be letters, digits, '.', '_' or '-' (1-64), got {args.name!r}")
    from questkern.cli._paths import check_output_dir, check_output_file

    try:  # before anything is read
        check_output_dir("--out-dir", args.out_dir)
        if args.screenshot is not None:
            check_output_file("--screenshot", args.screenshot)
    except ValueError as e:
        raise SystemExit(f"questkern report: {e}") from None
    out = args.out_dir / f"{args.name}.html"
    if out.exists() and not args.force:
        raise SystemExit(f"questkern report: {out} exists; pass --force to replace it (or choose another --name)")
    data = args.data or [Path("reports/data")]
    profiles = args.profiles  # None: profiles/<gpu-key>/ of the report's GPU
    for t in args.tuning or []:
        if not t.exists():
            raise SystemExit(f"questkern report: --tuning {t}: no such file or folder")
    if args.no_tuning:
        tuning: list = []
    else:  # defaults: missing folders are fine (no table yet)
        tuning = args.tuning or [Path("tuning"), Path(__file__).resolve().parents[1] / "tuning" / "tables"]
    try:
        inputs = gather(data, profiles, tuning, args.study_storage, args.study, gpu=args.gpu)
    except ReportDataError as e:
        raise SystemExit(f"questkern report: {e}") from None
    for line in inputs.skipped:
        print(f"questkern report: note: skipped {line}", file=sys.stderr)
    for n in inputs.notices:
        print(f"note: {n}")
    if inputs.bench.empty and not inputs.profiles and not inputs.studies:
        raise SystemExit(
            f"questkern report: nothing to report: no bench CSV under {[str(d) for d in data]}, "
            f"no profile under {[str(p) for p in profiles or ['profiles/<gpu-key>']]}, no --study-storage"
        )
    command = invocation(args)
    page, manifest = render(inputs, title=args.title or f"questkern performance report: {args.name}", command=command)
    write_text_atomic(out, page)
    print(
        f"wrote {out} ({len(page) / 1e6:.1f} MB, {len(manifest['plots'])} plots, "
        f"sections: {', '.join(manifest['sections'])})"
    )
    if args.screenshot is not None:
        from questkern.report.browser import screenshot_plot

        pid = manifest["main"]  # latency vs context of the reference shape (see report.build)
        if pid is None:
            raise SystemExit("questkern report: no plot to screenshot")
        screenshot_plot(out, pid, args.screenshot)
        print(f"wrote {args.screenshot} (plot {pid})")
    return 0

"""``questkern recheck``: time a tuning table's entries against the heuristic, in one run.

    questkern recheck                                  # the table this GPU would load
    questkern recheck --ops select,sparse_decode --max-seq 32k --summary recheck.json

For every entry (of the table file, filtered by --ops/--max-seq/--max-batch) the
entry's config and today's heuristic default for the same bucket are each checked
against the float32 reference and then timed back to back, --rounds alternating
times (low median). Prints each ratio and the geometric mean: what the table buys over
the heuristic on this GPU, measured in one run. Flags stale entries (the heuristic
now faster by more than 3%, a config that fails its check). --summary keeps every row
as JSON and makes the run resumable (rerun the same command after an interruption).
--update writes the measured latencies back into the table file (atomically), and the
heuristic's config where it was faster; --apply SUMMARY does the same later, from a
finished recheck's summary, on any machine (it refuses a table changed since). Never tunes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from questkern._details import default_device
from questkern._shapes import parse_positive_int, parse_positive_seconds, parse_size
from questkern.cli import describe


def register(sub) -> None:
    p = sub.add_parser(
        "recheck",
        help="time a tuning table against the heuristic defaults on this GPU, in one run",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from questkern.cli.tune import parse_ops

    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="table file (default: this GPU's <gpu-key>.json from the first table source that has it: "
        "$QUESTKERN_TUNING_DIR, the user cache, the shipped tables)",
    )
    p.add_argument("--ops", type=parse_ops, default=None, help="only these ops (default: every op in the table)")
    p.add_argument(
        "--max-seq",
        type=parse_size,
        default=None,
        help="only entries tuned at this sequence length or less (default: all)",
    )
    p.add_argument(
        "--max-batch",
        type=parse_positive_int,
        default=None,
        help="only entries tuned at this batch or less (default: all)",
    )
    p.add_argument("--rounds", type=parse_positive_int, default=3, help="alternating measurements of each (default 3)")
    p.add_argument(
        "--rep-ms", type=parse_positive_int, default=100, help="do_bench repetition time per timing (default 100)"
    )
    p.add_argument(
        "--warmup-ms", type=parse_positive_int, default=25, help="do_bench warm-up time per timing (default 25)"
    )
    p.add_argument(
        "--max-time",
        type=parse_positive_seconds,
        default=None,
        help="stop after this many seconds (resume with the same --summary) (default: no limit)",
    )
    p.add_argument(
        "--summary", type=Path, default=None, help="JSON of every row; a rerun with it resumes (default: none)"
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="write the measured latencies (and the heuristic's config where it was faster) into the table",
    )
    p.add_argument(
        "--apply",
        type=Path,
        default=None,
        metavar="SUMMARY",
        help="measure nothing: apply the rows of this recheck summary to its table, as --update would",
    )
    p.set_defaults(func=run)


def _default_table(gpu_key: str) -> Path | None:
    from questkern.configs import paths

    for _label, d in paths.table_sources():
        if d is not None and paths.table_path(d, gpu_key).exists():
            return paths.table_path(d, gpu_key)
    return None


def _fail(msg: str, code: int = 2) -> int:
    print(f"questkern recheck: error: {msg}", file=sys.stderr)
    return code


def _write_update(path: Path, doc: dict, rows: list[dict]) -> int:
    """Apply the rows; write the table only when an entry changed. Returns how many did."""
    from questkern.tuning.recheck import apply_rows
    from questkern.configs.schema import validate_table
    from questkern.configs.table import atomic_write_json

    notes, changed, unmatched = apply_rows(doc, rows)
    for n in notes:
        print(f"  {n}")
    if unmatched:
        print(
            f"  NOTE: {len(unmatched)} row(s) match no entry of {path}: {', '.join(unmatched[:5])}"
            + (" ..." if len(unmatched) > 5 else "")
        )
    if not changed:
        print(f"{path}: no entry changed (no row holds a measurement of one of its entries); the table is untouched")
        return 0
    validate_table(doc, where=f"rechecked table {path}")
    atomic_write_json(path, doc)
    print(f"updated {path}: {changed} entries re-timed")
    return changed


class _Refused(Exception):
    """A table that cannot be used here; the message says why."""


def _open_table(table: Path | None, key: str, expected: str) -> tuple[Path, dict]:
    """``table`` (or ``key``'s file in the first table source that has it), validated and of
    GPU ``key``; ``expected`` says, in the mismatch message, why ``key`` is the one wanted."""
    from questkern.configs.schema import TableError
    from questkern.configs.table import load_table

    path = table or _default_table(key)
    if path is None:
        raise _Refused(f"no tuning table for {key} ({key}.json) in any table source; pass --table, or tune first")
    try:
        doc = load_table(path)
    except TableError as exc:
        raise _Refused(str(exc)) from None
    if doc["gpu_key"] != key:
        raise _Refused(f"{path} holds the table of {doc['gpu_key']!r}, but {expected}")
    return path, doc


def apply_summary(args) -> int:
    """--apply: a recheck summary's measurements into its table (no device needed)."""
    from questkern.tuning.recheck import same_table
    from questkern.configs.schema import TableError
    from questkern.configs.table import read_json

    from questkern.cli._paths import check_input_file
    from questkern.tuning.recheck import summary_problem

    try:
        check_input_file("--apply", args.apply)
        summary = read_json(args.apply)
    except (TableError, ValueError) as exc:
        return _fail(f"--apply {args.apply} is not a recheck summary: {exc}")
    bad = summary_problem(summary)
    if bad:
        return _fail(f"--apply {args.apply} is not a recheck summary: {bad}")
    key, rows = summary["gpu_key"], summary["rows"]
    try:
        path, doc = _open_table(args.table, key, f"--apply {args.apply} rechecked a table of {key!r}")
    except _Refused as exc:
        return _fail(str(exc))
    if not same_table(summary, doc):
        return _fail(
            f"{path} changed since the recheck (updated {doc.get('updated')}, the recheck measured the "
            f"version of {summary.get('table_updated')}): recheck it again"
        )
    if not summary.get("complete"):
        print(f"NOTE: {args.apply} is incomplete: only its {len(rows)} measured entries are applied")
    if not _write_update(path, doc, rows):
        return _fail(f"--apply {args.apply}: none of its {len(rows)} rows changed an entry of {path}", 1)
    return 0


def run(args) -> int:
    if args.apply is not None:
        return apply_summary(args)
    from questkern._details import select_backend

    note = select_backend()

    from questkern.configs.gpus import CPU_KEY, current_gpu_key
    from questkern.tuning.recheck import recheck, summary_lines
    from questkern.tuning.runner import FatalDeviceError, default_timer
    from questkern.configs.schema import TableError
    from questkern.tuning.tuner import num_sms

    if args.summary is not None:
        from questkern.cli._paths import check_output_file

        try:
            check_output_file("--summary", args.summary)
        except ValueError as exc:
            return _fail(str(exc))
    device = default_device()
    key = current_gpu_key(device)
    if key == CPU_KEY:
        print(f"NOTE: {note or 'no CUDA device: kernels run in the Triton interpreter'}; the timings mean nothing")
    try:
        path, doc = _open_table(
            args.table, key, f"this device is {key!r} (a table can only be rechecked on its own GPU)"
        )
    except _Refused as exc:
        return _fail(str(exc))
    try:
        summary = recheck(
            doc,
            table_path=path,
            out=args.summary,
            device=device,
            num_sms=num_sms(device),
            timer=default_timer(device, args.rep_ms, args.warmup_ms),
            rounds=args.rounds,
            ops=args.ops,
            max_seq=args.max_seq,
            max_batch=args.max_batch,
            max_time=args.max_time,
        )
    except (ValueError, TableError, FatalDeviceError) as exc:
        return _fail(str(exc), 1)
    for line in summary_lines(summary):
        print(line)
    if args.summary:
        print(f"wrote {args.summary}")
    if args.update:
        _write_update(path, doc, summary["rows"])
    return 0 if summary["complete"] else 3

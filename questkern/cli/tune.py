"""``questkern tune``: search kernel configs with Optuna on this GPU and write its table.

    questkern tune --gpu h100 --seq 8k,32k,128k --batch 1,8 --heads 32/32,32/8

One study per bucket (op x dtype x head dim x heads x seq x batch; page sizes and
budgets are searched inside a bucket when several are given, with attention recall as
a second objective). Every candidate is checked against the float32 reference before
it is timed. Winners are merged into ``<out>/<gpu-key>.json`` (default: the user cache
directory, which ``import questkern`` reads automatically); an existing faster entry
is kept unless --force. Studies live in --storage (SQLite in the user data directory by
default): rerun the same command to resume an interrupted run.

Several GPUs: --devices 0,1,2,3 starts one worker process per GPU on the same studies
(SQLite is fine on one host); with --storage postgresql://... other hosts join by
running the same command. The launcher shows the whole study's progress and writes
the table once at the end.

Before it starts, tune prints the number of buckets, trials and an estimated time. Without
a GPU (--gpu cpu: the Triton interpreter, to test the pipeline only) sizes the interpreter
cannot finish in a few minutes need --yes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from questkern._shapes import (
    LIST_FLAGS,
    add_shape_args,
    parse_fix,
    parse_nonnegative_int,
    parse_positive_int,
    parse_positive_seconds,
)
from questkern.cli import describe


def parse_ops(text: str) -> list[str]:
    from questkern.configs.keys import OPS

    ops = [p.strip() for p in text.split(",") if p.strip()]
    bad = [o for o in ops if o not in OPS]
    if not ops or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(OPS)}, got {text!r}")
    return list(dict.fromkeys(ops))


# Rough seconds per evaluated trial (check + timing + compile), for the estimate printed before a run.
# GPU: compile and check dominate, then the do_bench windows. Triton interpreter: proportional to the
# elements a call touches (256K elements took ~2 s a trial on one CPU core).
GPU_TRIAL_S = 1.5
CPU_TRIAL_S_PER_ELEMENT = 2.0 / (1000 * 4 * 64)
CPU_LONG_S = 300.0  # without a GPU, a run estimated longer than this asks for --yes
CPU_TOY_HINT = "--seq 1000 --batch 1 --heads 4/2 --head-dim 64 --budget 64 --trials 3"


def estimate_seconds(spec, buckets, on_gpu: bool) -> float:
    """A rough wall time of a tune run: trials (or the per-bucket timeout) plus the verification rounds,
    capped by --max-time."""
    total = 0.0
    for b in buckets:
        if on_gpu:
            trial = GPU_TRIAL_S + 2 * (spec.rep_ms + spec.warmup_ms) / 1000
        else:
            trial = 0.5 + CPU_TRIAL_S_PER_ELEMENT * b.seq_len * b.batch * b.num_q_heads * b.head_dim
        n = spec.n_trials if spec.n_trials else None
        t = n * trial if n else float(spec.timeout)
        if spec.timeout:
            t = min(t, spec.timeout)
        total += t + spec.verify_rounds * 4 * trial / 2
    return min(total, spec.max_time) if spec.max_time else total


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def register(sub) -> None:
    from questkern.configs.keys import OPS
    from questkern.tuning.strategy import SAMPLERS

    p = sub.add_parser(
        "tune",
        help="tune kernel configs on this GPU and write its lookup table",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--gpu",
        required=True,
        help="GPU family (a100, h100, h200, l40s, l4, 4090, ...; 'cpu' for the interpreter) or full key; "
        "must match the detected device unless --dry-run (required)",
    )
    add_shape_args(
        p,
        lists=(*LIST_FLAGS, "dtype"),
        required=("seq",),
        notes={"page_size": "several = searched", "budget": "several = searched"},
    )
    p.add_argument("--ops", type=parse_ops, default=list(OPS), help=f"ops to tune (default {','.join(OPS)})")
    p.add_argument(
        "--aggregate", choices=["sum", "max"], default="sum", help="shared-mode score aggregate (default sum)"
    )
    p.add_argument(
        "--trials",
        type=parse_positive_int,
        default=None,
        help="evaluated trials per bucket study, resumed count (default 40 when --timeout is not given)",
    )
    p.add_argument(
        "--timeout",
        type=parse_positive_seconds,
        default=None,
        help="seconds per bucket (with --trials: whichever first) (default: no limit)",
    )
    p.add_argument(
        "--max-time",
        type=parse_positive_seconds,
        default=None,
        help="seconds for the whole run, shared out over the buckets left (default: no limit)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default $QUESTKERN_STORAGE or "
        "sqlite:///~/.local/share/questkern/studies.db); postgresql://USER@HOST/DB for several hosts "
        "(in the questkern clone: pip install -e '.[postgres]'); 'inmemory' keeps nothing",
    )
    p.add_argument(
        "--study", default=None, help="study name prefix (default: the GPU key); each bucket adds ':<bucket>'"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="table directory (default ~/.cache/questkern/tuning, read at "
        "import; the tables shipped with questkern live in questkern/tuning/tables)",
    )
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--seed", type=int, default=0, help="sampler and input seed (default 0)")
    p.add_argument(
        "--fix",
        type=parse_fix,
        default={},
        help="pin parameters, e.g. num_stages=2,fuse_combine=true,topk=bisect (default: none pinned)",
    )
    p.add_argument(
        "--verify-rounds",
        type=parse_nonnegative_int,
        default=3,
        help="alternating re-timings of the best configs and the default after each study (default 3; 0 = off)",
    )
    p.add_argument(
        "--rep-ms", type=parse_positive_int, default=100, help="do_bench repetition time per timing (default 100)"
    )
    p.add_argument(
        "--warmup-ms", type=parse_positive_int, default=25, help="do_bench warm-up time per timing (default 25)"
    )
    p.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="also write the run's results as JSON here; an existing file is refused unless --replace-summary "
        "(default: none)",
    )
    p.add_argument("--replace-summary", action="store_true", help="replace the --summary file if it exists")
    p.add_argument("--force", action="store_true", help="replace existing table entries even when they are faster")
    from questkern.tuning.distributed import parse_devices
    from questkern.tuning.strategy import GRACE_S, HEARTBEAT_S

    d = p.add_argument_group("several GPUs and hosts (one study, one worker process per GPU)")
    d.add_argument(
        "--devices",
        type=parse_devices,
        default=None,
        help="GPUs of this host to tune on, e.g. 0,1,2,3 or all: one worker process each (pinned with "
        "CUDA_VISIBLE_DEVICES), all on the same studies; other hosts join by running the same command "
        "with the same PostgreSQL --storage (default: one process, this GPU)",
    )
    d.add_argument(
        "--heartbeat",
        type=parse_positive_int,
        default=HEARTBEAT_S,
        help=f"seconds between a worker's heartbeats (default {HEARTBEAT_S})",
    )
    d.add_argument(
        "--grace",
        type=parse_positive_int,
        default=GRACE_S,
        help=f"a trial without a heartbeat for this many seconds is failed and retried by another worker "
        f"(default {GRACE_S})",
    )
    d.add_argument(
        "--storage-retry",
        type=parse_positive_seconds,
        default=120.0,
        help="seconds a worker retries an unreachable storage (with back-off) before it exits (default 120)",
    )
    d.add_argument(
        "--progress-every",
        type=parse_positive_seconds,
        default=10.0,
        help="seconds between the launcher's progress lines (default 10)",
    )
    d.add_argument(
        "--log-dir", type=Path, default=None, help="also write each worker's output to DIR/worker-*.log (default: none)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be tuned (works for another GPU) and exit")
    p.add_argument(
        "--yes",
        action="store_true",
        help="start without asking, also when the interpreter (no GPU) would take long at these sizes",
    )
    p.set_defaults(func=run)


def _check_paths(args, spec, key: str) -> None:
    """--out (a table directory; an existing table there must be this GPU's and valid),
    --storage (an SQLite file), --summary, --log-dir: checked before any trial runs."""
    from questkern.cli._paths import check_output_dir, check_output_file, check_sqlite_url
    from questkern.configs import paths
    from questkern.configs.schema import TableError
    from questkern.configs.table import load_table

    out = check_output_dir("--out", spec.out)
    table = paths.table_path(out, key)
    if table.exists():
        if table.is_dir():
            raise ValueError(f"--out {out}: {table} is a directory, expected the GPU's table file")
        doc = load_table(table)  # TableError names the file and the problem
        if doc.get("gpu_key") != key:
            raise TableError(
                f"--out {out}: {table} holds the table of GPU {doc.get('gpu_key')!r}, not {key!r}; "
                "refusing to merge into it"
            )
        check_output_file("--out", table)
    check_sqlite_url("--storage", spec.storage_url)
    if args.summary is not None:
        check_output_file("--summary", args.summary)
    if args.log_dir is not None:
        check_output_dir("--log-dir", args.log_dir)


def run(args) -> int:
    from questkern._details import select_backend

    note = select_backend()
    import optuna

    from questkern.configs.gpus import CPU_KEY, check_gpu_arg, current_gpu_name, normalize_gpu_name
    from questkern.tuning.observer import ConsoleObserver
    from questkern.tuning.runner import FatalDeviceError
    from questkern.configs.schema import TableError
    from questkern.tuning.tuner import TuneSpec, plan_lines, tune, write_summary

    slots = None
    if args.devices is not None:
        from questkern.tuning.distributed import resolve_devices

        try:
            slots = resolve_devices(args.devices)
        except ValueError as exc:
            print(f"questkern tune: error: {exc}", file=sys.stderr)
            return 2
    detected = slots[0].name if slots else current_gpu_name()
    try:
        key = check_gpu_arg(args.gpu, detected)
        device_name = detected
    except ValueError as exc:
        if not args.dry_run:
            print(f"questkern tune: error: {exc}", file=sys.stderr)
            return 2
        key, device_name = normalize_gpu_name(args.gpu), f"{args.gpu} (not this machine: dry run)"
        print(f"dry run: {exc}")
    if device_name == CPU_KEY:
        print(
            f"NOTE: {note or 'no CUDA device: kernels run in the Triton interpreter'}; the timings mean nothing "
            "(use --gpu cpu only to test the pipeline)"
        )
    try:
        spec = TuneSpec(
            gpu_key=key,
            device_name=device_name,
            seqs=tuple(args.seq),
            batches=tuple(args.batch),
            heads=tuple(args.heads),
            head_dims=tuple(args.head_dim),
            dtypes=tuple(args.dtype),
            page_sizes=tuple(args.page_size),
            budgets=tuple(args.budget),
            ops=tuple(args.ops),
            gqa_mode=args.gqa_mode,
            aggregate=args.aggregate,
            n_trials=args.trials if (args.trials or args.timeout) else 40,
            timeout=args.timeout,
            max_time=args.max_time,
            storage=args.storage,
            study_prefix=args.study,
            out_dir=args.out,
            sampler=args.sampler,
            seed=args.seed,
            force=args.force,
            fixed=args.fix,
            verify_rounds=max(0, args.verify_rounds),
            rep_ms=args.rep_ms,
            warmup_ms=args.warmup_ms,
        )
    except ValueError as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr)
        return 2
    from questkern.tuning.storage import StorageError, check_storage, check_url

    try:
        check_url(spec.storage_url, distributed=slots is not None)
    except StorageError as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr)
        return 2
    try:  # every path before any trial runs
        _check_paths(args, spec, key)
    except (ValueError, TableError) as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr)
        return 2
    buckets, _notes = spec.buckets()
    on_gpu = device_name != CPU_KEY
    est = estimate_seconds(spec, buckets, on_gpu)
    trials = f"{spec.n_trials} trials" if spec.n_trials else "no trial limit"
    per = f", at most {spec.timeout:g} s" if spec.timeout else ""
    cap = f", the whole run at most {spec.max_time:g} s" if spec.max_time else ""
    print(
        f"plan: {len(buckets)} buckets x {trials} each{per}{cap}; estimated {_duration(est)}"
        + ("" if on_gpu else " in the Triton interpreter")
    )
    if args.dry_run:
        for line in plan_lines(spec):
            print(line)
        if slots:
            print(f"  workers: {', '.join(f'{s.label} (CUDA_VISIBLE_DEVICES={s.visible!r})' for s in slots)}")
        return 0
    if args.summary is not None and args.summary.exists() and not args.replace_summary:
        print(
            f"questkern tune: error: --summary {args.summary} exists; pass --replace-summary to replace it, or "
            "choose another path",
            file=sys.stderr,
        )
        return 2
    if not on_gpu and est > CPU_LONG_S and not args.yes:
        print(
            f"questkern tune: without a GPU these sizes take about {_duration(est)} in the Triton interpreter. "
            f"Pass --yes to run anyway, or try a toy size to test the pipeline: questkern tune --gpu cpu "
            f"{CPU_TOY_HINT}",
            file=sys.stderr,
        )
        return 2
    if slots is not None:
        from questkern.tuning.distributed import LaunchOptions, launch

        opts = LaunchOptions(
            heartbeat_s=args.heartbeat,
            grace_s=args.grace,
            storage_retry_s=args.storage_retry,
            progress_s=args.progress_every,
            log_dir=args.log_dir,
            summary=args.summary,
        )
        try:
            return launch(spec, slots, opts)
        except (TableError, ValueError, optuna.exceptions.OptunaError) as exc:
            print(f"questkern tune: error: {exc}", file=sys.stderr)
            return 1
    try:
        check_storage(spec.storage_url)
    except StorageError as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = tune(spec, observer=ConsoleObserver())
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished buckets are in the table; rerun the same command to resume the studies",
            file=sys.stderr,
        )
        return 130
    except (TableError, ValueError, FatalDeviceError, optuna.exceptions.OptunaError) as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr)
        return 1
    if args.summary:
        write_summary(report, args.summary)
        print(f"wrote {args.summary}")
    return 1 if any(b.error for b in report.buckets) else 0

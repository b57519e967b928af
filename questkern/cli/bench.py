"""``questkern bench``: time a Quest decode step against its baselines on this device.

Each run writes a new file, reports/data/<gpu-key>/bench-<UTC time>.csv (with --model,
bench_model-<UTC time>.csv), unless --out names one; an existing --out is refused unless
--force. The file is rewritten after every case, so an interrupted run keeps the cases it
finished. With --check every case prints PASS or FAIL and the tolerance it was held to.

Without a CUDA GPU the kernels run in the Triton interpreter at a toy size: the timings
mean nothing there, but --check still proves the kernels right.

Every row also carries the run's measurement floor (``floor_us``: a CUDA graph of one tiny
kernel, timed like the ops) and the op's bound, ``bound_us`` = floor + bytes at the copy
bandwidth of the same run; ``bound_speedup_vs_sdpa`` is the most the op could gain over
the SDPA of its case, were it at that bound.

With ``--vs-heuristic`` the Quest step and the dense decode are timed again with the
heuristic configs forced (ops ``quest_step_heuristic``, ``dense_decode_heuristic``);
``speedup_vs_heuristic`` = heuristic time / table time of the case, on both rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import io
import math
import re
import sys
import time
from pathlib import Path

import torch

from questkern import validate as V
from questkern.cli import describe, invocation
from questkern.cli._out import OutputExists, output_file
from questkern._shapes import add_shape_args, parse_nonnegative_int, parse_positive_int
from questkern._dtypes import short_name
from questkern._io import write_text_atomic

CHECK_TOL = 5e-2  # max abs error of a bf16/fp16 output vs the float32 reference that --check accepts
CPU_TOY = {"seq": "256,1000", "batch": "1,2", "heads": "4/4,4/2", "head_dim": "64", "page_size": "16", "budget": "64"}

COLUMNS = [
    "gpu",
    "gpu_name",
    "driver",
    "torch",
    "triton",
    "cuda",
    "op",
    "batch",
    "q_heads",
    "kv_heads",
    "head_dim",
    "dtype",
    "meta_dtype",
    "seq_len",
    "lens",
    "page_size",
    "sub_page_size",
    "budget",
    "gqa_mode",
    "median_us",
    "bytes",
    "gbps",
    "pct_copy_bw",
    "speedup_vs_sdpa",
    "speedup_vs_dense",
    "speedup_vs_flex",
    "copy_gbps",
    "floor_us",
    "bound_us",
    "bound_speedup_vs_sdpa",
    "speedup_vs_heuristic",
    "splits",
    "config_source",
    "timestamp",
    "command",
]


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time select / sparse decode / whole Quest step vs dense and SDPA",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_shape_args(p)
    p.add_argument(
        "--mixed",
        type=_parse_mixed,
        default=None,
        help="a mixed-length batch 'B:LO-HI', e.g. 32:4k-64k (log-uniform lengths): with --seq also given, "
        "benched too (first); alone, instead of them (default: none)",
    )
    p.add_argument(
        "--flex",
        action="store_true",
        help="also time torch.compile'd FlexAttention over the same selected pages (GPU; compiles per shape)",
    )
    p.add_argument(
        "--meta-dtype",
        type=_parse_meta,
        default=[None],
        help="page metadata: kv (the key dtype, exact; default), fp32, fp8 (float8_e5m2, safe-rounded: "
        "half the bytes select streams); several, e.g. kv,fp8, bench each in the same run",
    )
    p.add_argument(
        "--sub-page-size",
        type=parse_positive_int,
        default=None,
        help="hierarchical pages (LServe): page sizes of --page-size larger than N keep one key min/max "
        "per sub-page of N tokens and select whole pages by the max of their sub-pages' bounds; the "
        "others run as ordinary pages. E.g. --page-size 16,64 --sub-page-size 16 compares page-16 "
        "select with p64/sub16 select at equal metadata bytes (column sub_page_size); with --model, "
        "every layer's cache uses it (--page-size must be larger). Classic path only; a power of two "
        "in 4..32 (default: none)",
    )
    p.add_argument(
        "--vs-heuristic",
        action="store_true",
        help="also time the Quest step and the dense decode with the heuristic configs instead of the tuning "
        "table's (rows quest_step_heuristic, dense_decode_heuristic; column speedup_vs_heuristic)",
    )
    p.add_argument(
        "--model",
        type=parse_model_arg,
        default=None,
        help="time a whole model's token step instead of one attention layer: a preset (llama3-8b, "
        "qwen2.5-7b, llama3-70b-tp8, tiny) or custom:layers=..,hidden=..,heads=Q/KV,head_dim=..,mlp=..,"
        "vocab=.. ; random weights, every layer its own K/V, one CUDA graph per step; attention by SDPA, "
        "in-house dense, Quest, and none (the ceiling), in one run (default: one attention layer, no model)",
    )
    p.add_argument(
        "--dense-layers",
        type=parse_nonnegative_int,
        default=2,
        help="with --model: the first N layers decode densely under Quest (default %(default)s)",
    )
    p.add_argument(
        "--path",
        choices=["auto", "fused", "classic"],
        default="auto",
        help="how the Quest step runs: fused (scores, then top-K and attention in one launch), classic "
        "(select, decode, combine), or auto (default %(default)s); with --compare-paths both",
    )
    p.add_argument(
        "--compare-paths",
        action="store_true",
        help="also time the classic Quest step in the same run (op quest_step_classic; with --model, "
        "attention quest_classic)",
    )
    p.add_argument(
        "--reselect-every",
        type=_parse_reuse_every,
        default=[],
        help="with --model: also time Quest reusing its selection, re-selecting every N steps "
        "(QuestDecode(reselect_every=N); attention quest_every<N>), e.g. 4,8,16 (default: none)",
    )
    p.add_argument(
        "--drift",
        type=_parse_drift,
        default=[],
        help="with --model: also time Quest re-selecting only when the query drifts below this cosine "
        "(attention quest_drift<t>), e.g. 0.9 (default: none)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help=f"also check each case against the float32 references: selection exact, outputs within "
        f"{CHECK_TOL:g} (prints PASS or FAIL per case)",
    )
    p.add_argument(
        "--rep-ms",
        type=parse_positive_int,
        default=200,
        help="do_bench repetition time per op in ms (default %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV file to write (default: a new reports/data/<gpu-key>/bench-<UTC time>.csv, "
        "or bench_model-<UTC time>.csv with --model)",
    )
    p.add_argument("--force", action="store_true", help="replace the --out file if it exists (default: refuse)")
    p.set_defaults(func=run)


META = {"kv": None, "fp32": torch.float32, "fp8": torch.float8_e5m2, "fp8_e5m2": torch.float8_e5m2}


def _parse_reuse_every(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if not part.strip().isdigit() or int(part) < 2:
            raise argparse.ArgumentTypeError(f"--reselect-every takes integers >= 2 separated by commas, got {text!r}")
        out.append(int(part))
    return out


def _parse_drift(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            v = float("nan")
        if not -1 <= v <= 1:
            raise argparse.ArgumentTypeError(f"--drift takes cosines in [-1, 1] separated by commas, got {text!r}")
        out.append(v)
    return out


def _parse_meta(text: str) -> list:
    out = []
    for part in text.split(","):
        if part.strip() not in META:
            raise argparse.ArgumentTypeError(f"--meta-dtype must be a list of {sorted(META)}, got {part!r}")
        out.append(META[part.strip()])
    return out


def parse_model_arg(text: str):
    """argparse type of --model / --random-config: a preset or custom:... shape (bench.models.parse_model)."""
    from questkern.bench.models import parse_model

    try:
        return parse_model(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parse_mixed(text: str) -> str:
    """Check a --mixed spec 'B:LO-HI' (B >= 1 sequences, LO <= HI sizes such as 4k); returns it."""
    from questkern._shapes import parse_size

    m = re.fullmatch(r"\s*(\d+)\s*:([^-]+)-(.+)", text)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"--mixed must be 'B:LO-HI' with B >= 1, e.g. 32:4k-64k, got {text!r}")
    lo, hi = parse_size(m.group(2)), parse_size(m.group(3))
    if lo > hi:
        raise argparse.ArgumentTypeError(f"--mixed needs LO <= HI, got {text!r}")
    return text


def _mixed_lens(spec: str, seed: int = 0) -> tuple[int, list[int]]:
    from questkern._shapes import parse_size

    b, rng = spec.split(":")
    lo, hi = (parse_size(x) for x in rng.split("-", 1))
    g = torch.Generator().manual_seed(seed)
    # log-uniform lengths in [lo, hi]
    u = torch.rand(int(b), generator=g)
    lens = (math.log(lo) + u * (math.log(hi) - math.log(lo))).exp().round().long().tolist()
    return int(b), lens


def _given(args) -> set[str]:
    """Destinations of the options given on the command line (``--head-dim`` -> ``head_dim``)."""
    return {
        a.split("=")[0].lstrip("-").replace("-", "_") for a in getattr(args, "argv", sys.argv[1:]) if a.startswith("--")
    }


def _write_csv(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())


MODEL_COLUMNS = [
    "gpu",
    "gpu_name",
    "driver",
    "torch",
    "triton",
    "cuda",
    "model",
    "layers",
    "batch",
    "seq_len",
    "attention",
    "dtype",
    "page_size",
    "sub_page_size",
    "budget",
    "dense_layers",
    "gqa_mode",
    "path",
    "ms_per_token",
    "tokens_per_s",
    "speedup_vs_sdpa",
    "ceiling_speedup",
    "attention_bytes",
    "bound_us",
    "bound_speedup",
    "gain_captured",
    "copy_gbps",
    "timestamp",
    "command",
]


def run_model(args, note: str | None) -> int:
    """``bench --model``: the whole token step of a model, per (batch, context), every attention variant."""
    from questkern.bench.model import ModelCase, run_model_case, summarize
    from questkern.bench.models import PRESETS
    from questkern._timing import copy_bandwidth_gbps, device_info
    from questkern.configs.gpus import current_gpu_key

    on_gpu = torch.cuda.is_available()
    shape, seqs, batches = args.model, args.seq, args.batch
    if not on_gpu:
        given = _given(args)
        print(
            f"NOTE: {note or 'no CUDA device: Triton interpreter'}. Running the tiny model at a toy size; "
            "the timings mean nothing."
        )
        shape = PRESETS["tiny"]
        seqs = seqs if "seq" in given else [200]
        batches = batches if "batch" in given else [1, 2]
        if "dense_layers" not in given:
            args.dense_layers = 1  # the tiny model has 2 layers: one dense, one Quest
        if "budget" not in given:
            args.budget = [64]
    device = torch.device("cuda" if on_gpu else "cpu")
    info = device_info()
    gpu = current_gpu_key()
    copy_gbps = copy_bandwidth_gbps()
    print(
        f"device: {info['gpu_name']} | driver {info['driver'] or '-'} | torch {info['torch']} | triton {info['triton']} | "
        f"cuda {info['cuda'] or '-'} | copy bandwidth {copy_gbps:.0f} GB/s"
    )
    print(f"model: {shape.describe()}")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    command = invocation(args)
    out = getattr(args, "resolved_out", None) or resolve_out(args, gpu)  # run() decides (and checks) it first
    out.parent.mkdir(parents=True, exist_ok=True)
    atts = (
        ("sdpa", "none", "dense", "quest")
        + (("quest_classic",) if args.compare_paths else ())
        + tuple(f"quest_every{n}" for n in args.reselect_every)
        + tuple(f"quest_drift{t:g}" for t in args.drift)
    )
    rows: list[dict] = []
    for b in batches:
        for L in seqs:
            case = ModelCase(
                shape,
                b,
                L,
                dtype=args.dtype,
                page_size=args.page_size[0],
                budget=args.budget[0],
                dense_layers=args.dense_layers,
                gqa_mode=args.gqa_mode,
                path=args.path,
                meta_dtype=args.meta_dtype[0],
                sub_page_size=args.sub_page_size,
            )
            print(f"batch {b}, context {L}:", flush=True)
            try:
                times = run_model_case(case, device, rep_ms=args.rep_ms, attentions=atts)
            except MemoryError as e:
                print(f"    skipped: {e}")
                continue
            for r in summarize(case, times, copy_gbps):
                r.update(
                    gpu=gpu,
                    gpu_name=info["gpu_name"],
                    driver=info["driver"],
                    torch=info["torch"],
                    triton=info["triton"],
                    cuda=info["cuda"],
                    dtype=short_name(args.dtype),
                    path=args.path,
                    copy_gbps=round(copy_gbps, 1),
                    timestamp=stamp,
                    command=command,
                )
                rows.append(r)
                if r["attention"] != "sdpa":
                    extra = (
                        f", bound {r['bound_speedup']:.3f}x, gain captured {r['gain_captured']:.0%}"
                        if r["attention"] not in ("none",)
                        else " (the ceiling)"
                    )
                    print(
                        f"    {r['attention']:<13} {r['tokens_per_s']:9.1f} tokens/s  {r['speedup_vs_sdpa']:.3f}x SDPA{extra}"
                    )
            _write_csv(out, rows, MODEL_COLUMNS)
    print(f"wrote {len(rows)} rows to {out}")
    if not on_gpu:
        print("NOTE: interpreter timings mean nothing; run on a CUDA GPU for real figures.")
    return 0


def resolve_out(args, gpu: str) -> Path:
    """The CSV this run writes: --out (refused when it exists, unless --force) or a new
    timestamped file in reports/data/<gpu-key>/ (bench-*.csv; bench_model-*.csv with --model)."""
    return output_file(
        args.out,
        force=args.force,
        folder=Path("reports") / "data" / gpu,
        stem="bench_model" if args.model is not None else "bench",
    )


def run(args) -> int:
    from questkern._details import select_backend

    note = select_backend()
    from questkern.configs.gpus import current_gpu_key

    try:  # before any case runs
        if args.model is None and (args.reselect_every or args.drift):
            raise ValueError("--reselect-every and --drift time a whole model's step: they need --model")
        if args.path == "fused" and (args.reselect_every or args.drift):
            raise ValueError("--reselect-every and --drift run the classic path: use --path auto or classic")
        _check_sub_page_args(args)
        args.resolved_out = resolve_out(args, current_gpu_key())
    except (ValueError, OutputExists) as e:
        print(f"questkern bench: error: {e}", file=sys.stderr)
        return 2
    if args.model is not None:
        return run_model(args, note)
    from questkern.bench.core import Case, run_case
    from questkern._timing import bound_us, copy_bandwidth_gbps, device_info, graph_floor_us
    from questkern.configs.gpus import current_gpu_key

    on_gpu = torch.cuda.is_available()
    given = _given(args)
    if not on_gpu:
        print(f"NOTE: {note or 'no CUDA device: Triton interpreter'}. Running a toy size; the timings mean nothing.")
        toy = argparse.Namespace(**vars(args))
        defaults = argparse.ArgumentParser()
        add_shape_args(defaults, defaults=CPU_TOY)
        d = vars(defaults.parse_args([]))
        for k, v in d.items():
            if k not in given:  # flags the user gave keep their values
                setattr(toy, k, v)
        args = toy
        if args.sub_page_size is not None and "page_size" not in given:  # the toy page, split in two
            args.page_size = [2 * args.sub_page_size]
    device = torch.device("cuda" if on_gpu else "cpu")
    info = device_info()
    gpu = current_gpu_key()
    copy_gbps = copy_bandwidth_gbps()
    floor_us = graph_floor_us(args.rep_ms)
    dev = (
        f"copy bandwidth {copy_gbps:.0f} GB/s | graph floor {floor_us:.1f} us"
        if on_gpu
        else "Triton interpreter (no bandwidth, no floor)"
    )
    print(
        f"device: {info['gpu_name']} | driver {info['driver'] or '-'} | torch {info['torch']} | triton {info['triton']} | "
        f"cuda {info['cuda'] or '-'} | {dev}"
    )
    cases = []
    if args.mixed:  # first: its padded SDPA inputs are the largest allocations of a run
        b, lens = _mixed_lens(args.mixed)
        cases += [
            Case(
                b,
                hq,
                hkv,
                d,
                args.dtype,
                max(lens),
                ps,
                bud,
                args.gqa_mode,
                tuple(lens),
                meta,
                sub_page_size=_sub_page(args, ps),
            )
            for d in args.head_dim
            for ps in args.page_size
            for bud in args.budget
            for hq, hkv in args.heads
            for meta in args.meta_dtype
        ]
        print(f"mixed batch of {b}: lengths {sorted(lens)}")
    if not args.mixed or "seq" in given:
        cases += [
            Case(b, hq, hkv, d, args.dtype, L, ps, bud, args.gqa_mode, None, meta, sub_page_size=_sub_page(args, ps))
            for d in args.head_dim
            for ps in args.page_size
            for bud in args.budget
            for hq, hkv in args.heads
            for b in args.batch
            for L in args.seq
            for meta in args.meta_dtype
        ]
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    command = invocation(args)
    out = args.resolved_out
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    t_start = time.monotonic()
    for i_case, case in enumerate(cases):
        case_rows, checks = run_case(
            case,
            device,
            check=args.check,
            rep_ms=args.rep_ms,
            flex=args.flex,
            vs_heuristic=args.vs_heuristic,
            path=args.path,
            compare_paths=args.compare_paths,
        )
        if on_gpu:  # the case's cache is gone: give its memory back before the next (collect first:
            gc.collect()  # a reference cycle, e.g. from a failed flex compile, would keep its tensors alive)
            torch.cuda.empty_cache()
        by_op = {r["op"]: r["median_us"] for r in case_rows}
        for r in case_rows:
            r.update(
                gpu=gpu,
                gpu_name=info["gpu_name"],
                driver=info["driver"],
                torch=info["torch"],
                triton=info["triton"],
                cuda=info["cuda"],
                timestamp=stamp,
                command=command,
                copy_gbps=round(copy_gbps, 1),
                floor_us=floor_us,
            )
            r["gbps"] = r["bytes"] / (r["median_us"] * 1e-6) / 1e9
            r["pct_copy_bw"] = 100 * r["gbps"] / copy_gbps if on_gpu else float("nan")
            r["bound_us"] = bound_us(r["bytes"], copy_gbps, floor_us)  # NaN on CPU: no bound to speak of
            r["bound_speedup_vs_sdpa"] = by_op["sdpa"] / r["bound_us"] if "sdpa" in by_op else float("nan")
            r["speedup_vs_sdpa"] = by_op["sdpa"] / r["median_us"] if "sdpa" in by_op else float("nan")
            r["speedup_vs_dense"] = by_op["dense_decode"] / r["median_us"]
            r["speedup_vs_flex"] = by_op["flex_quest"] / r["median_us"] if "flex_quest" in by_op else float("nan")
            # the table's configs over the heuristic's, this case: on the tuned row and on its *_heuristic row
            # (so either row alone carries its run's ratio)
            base = r["op"].removesuffix("_heuristic")
            h_us, t_us = by_op.get(f"{base}_heuristic"), by_op.get(base)
            r["speedup_vs_heuristic"] = h_us / t_us if h_us and t_us else float("nan")
        rows += case_rows
        tag = f"B={case.batch:<3} H={case.q_heads}/{case.kv_heads} d={case.head_dim} L={'mixed' if case.lens else case.seq_len}"
        if case.meta_dtype is not None:
            tag += f" meta={case.describe()['meta_dtype']}"
        tag += f" p{case.page_size}" + (f"/sub{case.sub_page_size}" if case.sub_page_size else "")
        line = "  ".join(f"{r['op']}={r['median_us']:.1f}us" for r in case_rows)
        flex = f", vs flex {by_op['flex_quest'] / by_op['quest_step']:.2f}x" if "flex_quest" in by_op else ""
        bound = next(r["bound_speedup_vs_sdpa"] for r in case_rows if r["op"] == "quest_step")
        bound = f" (bound {bound:.2f}x)" if on_gpu else ""
        heur = (
            f", vs heuristic {by_op['quest_step_heuristic'] / by_op['quest_step']:.3f}x"
            if "quest_step_heuristic" in by_op
            else ""
        )
        mem = f" [{torch.cuda.memory_allocated() / 2**30:.1f} GiB held]" if on_gpu else ""
        vs = f"  | quest vs sdpa {by_op['sdpa'] / by_op['quest_step']:.2f}x{bound}{flex}{heur}{mem}" if on_gpu else ""
        spent = time.monotonic() - t_start
        left = spent / (i_case + 1) * (len(cases) - i_case - 1)
        eta = f"  | {spent:.0f} s, ~{left:.0f} s left" if i_case + 1 < len(cases) else f"  | {spent:.0f} s"
        print(f"[{i_case + 1}/{len(cases)}] {tag}: {line}{vs}{eta}", flush=True)
        if checks:
            ok, text = check_verdict(checks)
            print(f"    check {'PASS' if ok else 'FAIL'}: {text}", flush=True)
            if not ok:
                failures.append((tag, checks))
        _write_csv(out, rows)  # after every case: an interrupted run keeps what it measured
    if args.vs_heuristic:
        from questkern.tuning.observer import geomean

        ratios = {
            op: [r["speedup_vs_heuristic"] for r in rows if r["op"] == op and r["speedup_vs_heuristic"] > 0]
            for op in ("quest_step", "dense_decode")
        }
        print(
            "tuning table vs heuristic configs, this run: "
            + ", ".join(
                f"{op} geometric mean {geomean(v):.3f}x over {len(v)} cases (min {min(v):.3f}x, max {max(v):.3f}x)"
                for op, v in ratios.items()
                if v
            )
        )
    print(f"wrote {len(rows)} rows to {out}")
    if not on_gpu:
        print("NOTE: interpreter timings mean nothing; run on a CUDA GPU for real figures.")
    if args.check:
        print(
            f"check: {len(cases) - len(failures)} of {len(cases)} cases PASS"
            + (f", {len(failures)} FAIL" if failures else "")
        )
    if failures:
        print(f"CHECK FAILED for {len(failures)} case(s): {', '.join(tag for tag, _ in failures)}")
        return 1
    return 0


def _sub_page(args, page_size: int) -> int | None:
    """The sub-page size of a case of ``page_size``: --sub-page-size where it is smaller, else None."""
    n = getattr(args, "sub_page_size", None)
    return n if n is not None and n < page_size else None


def _check_sub_page_args(args) -> None:
    """--sub-page-size: a power of two in 4..32, smaller than some --page-size (with --model: than
    its one page size), classic path (refused before any case runs)."""
    n = getattr(args, "sub_page_size", None)
    if n is None:
        return
    if n not in V.SUB_PAGE_SIZES:
        raise ValueError(f"--sub-page-size must be a power of two in 4..32, got {n}")
    if args.model is not None:
        if args.page_size[0] <= n:
            raise ValueError(
                f"--sub-page-size {n} with --model needs a --page-size larger than it "
                f"(the model runs --page-size {args.page_size[0]})"
            )
        return
    if args.path == "fused" or args.compare_paths:
        raise ValueError("--sub-page-size runs the classic path only: no --path fused, no --compare-paths")
    if (torch.cuda.is_available() or "page_size" in _given(args)) and not any(ps > n for ps in args.page_size):
        raise ValueError(f"--sub-page-size {n} needs a --page-size larger than it (got {args.page_size})")


def check_verdict(checks: dict) -> tuple[bool, str]:
    """One case's --check results as (passed, one line): every selection exact (``*select_exact``),
    every output error within the tolerance (``*maxerr``), including each compared path's."""
    labels = {
        "select_exact": "selection exact",
        "heuristic_select_exact": "heuristic selection exact",
        "quest_maxerr": "Quest output vs float32 reference",
        "dense_vs_sdpa_maxerr": "dense vs SDPA",
        "flex_vs_quest_maxerr": "FlexAttention vs Quest",
    }
    labels.update(step_select_exact="step selection exact")
    parts, ok = [], True
    known = [k for k in labels if k in checks]  # the main checks first, in this order, then any other
    for k in known + [k for k in checks if k not in labels]:
        v = checks[k]
        label = labels.get(k, k.replace("_", " "))
        if k.endswith("select_exact"):
            ok &= bool(v)
            parts.append(f"{label}: {'yes' if v else 'NO'}")
        elif k.endswith("maxerr"):
            good = v <= CHECK_TOL
            ok &= good
            parts.append(f"{label} max error {v:.2g} {'<=' if good else '>'} {CHECK_TOL:g}")
    return ok, "; ".join(parts)

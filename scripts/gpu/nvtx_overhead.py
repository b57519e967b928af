"""Overhead of questkern's NVTX annotation on a decode step (32K, MHA 32 heads, d=128, bf16).

    PYTHONPATH=. python3 scripts/gpu/nvtx_overhead.py                 # no tool attached (production)
    PYTHONPATH=. nsys profile -t cuda,nvtx -o /tmp/ov python3 scripts/gpu/nvtx_overhead.py   # tool attached

Measures, and writes to reports/data/<gpu-key>/nvtx_overhead[-tool].json:

1. ``annotate_ns_per_step``: the two ``annotate()`` calls of one Quest step (select and
   sparse_decode, with their payloads) timed alone, against the same ``with`` statements
   around a no-op context (the call overhead any Python code pays).
2. ``eager_us_per_step``: host time of eager ``run(q)`` steps with annotation on and off
   (interleaved rounds, medians). Without a tool both are the same fast path.
3. ``graph_us_per_step``: replay time of a CUDA graph of the step captured with annotation on
   and off. Graph replay runs no Python and no NVTX call, so the cost there is zero by
   construction; the numbers confirm it.
Goal: < 1 µs per eager step, none inside the graph. Without CUDA only (1) runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from questkern import _nvtx as nvtx  # noqa: E402


def annotate_cost(n: int = 200_000, rounds: int = 7) -> dict:
    """ns per step for the step's two ranges, and for the same `with` around a no-op."""
    null = contextlib.nullcontext()

    def plain(name, **kw):
        return null

    def step_annotated():
        with nvtx.annotate("questkern.select", batch=1, pages=2048, k=128):
            pass
        with nvtx.annotate("questkern.sparse_decode", batch=1, splits=4):
            pass

    def step_plain():
        with plain("questkern.select", batch=1, pages=2048, k=128):
            pass
        with plain("questkern.sparse_decode", batch=1, splits=4):
            pass

    def per_call(fn):
        best = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            best.append((time.perf_counter_ns() - t0) / n)
        return statistics.median(best)

    out = {}
    for flag in (True, False):
        nvtx.set_nvtx_enabled(flag)
        out["on" if flag else "off"] = per_call(step_annotated)
    nvtx.set_nvtx_enabled(True)
    out["no_op_with_statements"] = per_call(step_plain)
    out["extra_on"] = out["on"] - out["no_op_with_statements"]
    return out


def build_step():
    from questkern.bench.core import Case, build_cache
    from questkern.api import QuestDecode

    case = Case(1, 32, 32, 128, torch.bfloat16, 32768, 16, 2048, "shared")
    cache = build_cache(case, torch.device("cuda"))
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16)  # [B, Hq, D]
    w = QuestDecode(2048, gqa_mode="shared")
    w.plan(cache, num_q_heads=32)
    return w, q


def eager_cost(w, q, steps: int = 2000, rounds: int = 9) -> dict:
    res = {True: [], False: []}
    for _ in range(3):
        w.run(q)
    torch.cuda.synchronize()
    for _ in range(rounds):
        for flag in (True, False):
            nvtx.set_nvtx_enabled(flag)
            t0 = time.perf_counter()
            for _ in range(steps):
                w.run(q)
            torch.cuda.synchronize()
            res[flag].append((time.perf_counter() - t0) / steps * 1e6)
    nvtx.set_nvtx_enabled(True)
    on, off = statistics.median(res[True]), statistics.median(res[False])
    return {"on": on, "off": off, "difference": on - off, "rounds_on": res[True], "rounds_off": res[False]}


def graph_cost(w, q, replays: int = 2000) -> dict:
    out = {}
    for flag in (True, False):
        nvtx.set_nvtx_enabled(flag)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            w.run(q)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            w.run(q)
        for _ in range(20):
            g.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            for _ in range(replays):
                g.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / replays)
        out["on" if flag else "off"] = statistics.median(times)
    nvtx.set_nvtx_enabled(True)
    out["difference"] = out["on"] - out["off"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default reports/data/<gpu-key>/nvtx_overhead[-tool].json)"
    )
    args = p.parse_args()
    from questkern._timing import device_info
    from questkern._io import write_json_atomic
    from questkern.configs.gpus import current_gpu_key

    tool = nvtx.nvtx_enabled()
    result = {
        "schema": "questkern.nvtx_overhead",
        "version": 1,
        "tool_attached": tool,
        "device": device_info(),
        "gpu": current_gpu_key(),
        "annotate_ns_per_step": annotate_cost(),
    }
    if torch.cuda.is_available():
        w, q = build_step()
        result["eager_us_per_step"] = eager_cost(w, q)
        result["graph_us_per_step"] = graph_cost(w, q)
    extra_us = result["annotate_ns_per_step"]["extra_on"] / 1e3
    # a negative difference is timing noise: the annotated path does strictly more work
    result["verdict"] = (
        f"annotation adds {max(extra_us, 0.0):.3f} us (measured {extra_us:+.3f}) per eager step ({'tool attached' if tool else 'no tool attached'}); "
        f"goal < 1 us: {'met' if extra_us < 1 else 'NOT met'}; inside a CUDA graph: none (replay runs no Python)"
    )
    print(json.dumps(result, indent=2, default=str))
    out = args.out or Path("reports") / "data" / result["gpu"] / f"nvtx_overhead{'-tool' if tool else ''}.json"
    write_json_atomic(out, result, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

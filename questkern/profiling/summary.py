"""Profile summaries: one table (``summary.csv``) whether Nsight Compute or the PyTorch
profiler measured the run, so that ``questkern report`` reads both alike.

Columns (``SUMMARY_COLUMNS``):

    tool            "ncu" or "torch.profiler"
    kind            "kernel" (a GPU kernel) or "range" (a questkern range, host or GPU timeline)
    basis           "gpu" (device time) or "cpu" (host wall time: the interpreter, or launch cost)
    op              questkern op: select, sparse_decode, combine, dense_decode, metadata, ...
    kernel          kernel name ("" for ranges)
    calls           launches / range entries in the profiled steps
    duration_us     per call: ncu median gpu__time_duration; torch mean (inclusive for ranges)
    exclusive_us    ranges only: per call, minus the questkern ranges nested inside
    per_step_us     time per decode step: (exclusive or) duration x calls / steps
    dram_gbps, dram_pct_peak, achieved_occupancy_pct, registers_per_thread,
    sm_throughput_pct, memory_throughput_pct, grid_size, block_size   (ncu only)

Kernels map to ops by their enclosing questkern range when the profiler records it,
else by name (``KERNEL_OPS``).
"""

from __future__ import annotations

import csv
import io
import math
import re

import pandas as pd

SUMMARY_COLUMNS = [
    "tool",
    "kind",
    "basis",
    "op",
    "kernel",
    "calls",
    "duration_us",
    "exclusive_us",
    "per_step_us",
    "dram_gbps",
    "dram_pct_peak",
    "achieved_occupancy_pct",
    "registers_per_thread",
    "sm_throughput_pct",
    "memory_throughput_pct",
    "grid_size",
    "block_size",
]

PREFIX = "questkern."

# Triton kernel names -> questkern op; the decode kernel serves sparse and dense decode
# (resolved by the workload mode when no NVTX/range information names it).
KERNEL_OPS = {
    "_metadata_build_kernel": "metadata",
    "_append_kernel": "metadata",
    "_select_tile_kernel": "select",
    "_select_score_kernel": "select",
    "_select_merge_kernel": "select",
    "_adaptive_tile_kernel": "select",
    "_adaptive_merge_kernel": "select",
    "_decode_split_kernel": "{decode}",
    "_combine_kernel": "combine",
}


def kernel_op(kernel: str, mode: str = "quest") -> str:
    """Op of a kernel by name; ``mode`` (quest|dense) resolves the shared decode kernel."""
    base = re.sub(r"[(<].*$", "", kernel or "").strip()
    op = KERNEL_OPS.get(base)
    if op is None:
        return "other"
    return op.format(decode="dense_decode" if mode == "dense" else "sparse_decode")


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------- ncu

_TIME_TO_US = {
    "nsecond": 1e-3,
    "ns": 1e-3,
    "usecond": 1.0,
    "us": 1.0,
    "msecond": 1e3,
    "ms": 1e3,
    "second": 1e6,
    "s": 1e6,
}
_BYTES = {
    "byte": 1,
    "kbyte": 1e3,
    "mbyte": 1e6,
    "gbyte": 1e9,
    "tbyte": 1e12,
    "kibyte": 1024,
    "mibyte": 1024**2,
    "gibyte": 1024**3,
}

# summary column -> candidate ncu metric names (first present wins; names changed across ncu versions)
NCU_METRICS = {
    "duration": ["gpu__time_duration.sum"],
    "dram_read": ["dram__bytes_read.sum"],
    "dram_write": ["dram__bytes_write.sum"],
    "dram_pct_peak": [
        "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
        "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    ],
    "achieved_occupancy_pct": ["sm__warps_active.avg.pct_of_peak_sustained_active"],
    "registers_per_thread": ["launch__registers_per_thread"],
    "sm_throughput_pct": ["sm__throughput.avg.pct_of_peak_sustained_elapsed"],
    "memory_throughput_pct": ["gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"],
    "grid_size": ["launch__grid_size"],
    "block_size": ["launch__block_size"],
}


def _num(text) -> float:
    """'1,234.5' -> 1234.5; '' / 'n/a' -> nan (ncu prints thousands separators)."""
    if text is None:
        return math.nan
    s = str(text).strip().replace(",", "")
    try:
        return float(s)
    except ValueError:
        return math.nan


def _scale(unit: str, table: dict) -> float | None:
    u = (unit or "").strip().lower()
    if u in table:
        return table[u]
    if "/" in u:  # e.g. Gbyte/second for a throughput
        return None
    return None


def read_ncu_raw_csv(text: str) -> tuple[pd.DataFrame, dict]:
    """Parse ``ncu --import R --csv --page raw``: a header row, a units row, one row per kernel.

    Returns (rows as strings, {column: unit}). ncu may print ``==PROF==``/``==WARNING==``
    lines before the table; they are skipped.
    """
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("==")]
    if not lines:
        raise ValueError("ncu CSV is empty: no kernel was profiled (check the NVTX filter and that the workload ran)")
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header = rows[0]
    if "Kernel Name" not in header:
        raise ValueError(f"ncu CSV has no 'Kernel Name' column; header starts {header[:6]}")
    units: dict = {}
    body = rows[1:]
    if body and body[0] and not body[0][header.index("Kernel Name")] and not body[0][0]:
        units = dict(zip(header, body[0]))  # the units row has empty ID and Kernel Name cells
        body = body[1:]
    df = pd.DataFrame([r + [""] * (len(header) - len(r)) for r in body], columns=header)
    return df, units


def summarize_ncu(text: str, *, steps: int, mode: str = "quest") -> pd.DataFrame:
    """summary.csv rows (one per op and kernel) from an ncu raw-page CSV export."""
    df, units = read_ncu_raw_csv(text)
    if df.empty:
        raise ValueError("ncu CSV has no kernel rows: no kernel matched the NVTX filter")

    def col(key: str):
        for name in NCU_METRICS[key]:
            if name in df.columns:
                return name
        return None

    missing = [k for k in NCU_METRICS if col(k) is None]
    dur_col = col("duration")
    if dur_col is None:
        raise ValueError("ncu CSV lacks gpu__time_duration.sum (was the SpeedOfLight section collected?)")
    dur_scale = _TIME_TO_US.get(units.get(dur_col, "nsecond").strip().lower())
    if dur_scale is None:
        raise ValueError(f"unknown time unit {units.get(dur_col)!r} for {dur_col}")
    out = pd.DataFrame({"kernel": df["Kernel Name"].astype(str)})
    out["duration_us"] = df[dur_col].map(_num) * dur_scale
    nbytes = 0.0
    for key in ("dram_read", "dram_write"):
        c = col(key)
        if c is not None:
            scale = _scale(units.get(c, "byte"), _BYTES) or 1.0
            nbytes = nbytes + df[c].map(_num) * scale
    out["dram_gbps"] = (
        (nbytes / (out["duration_us"] * 1e-6) / 1e9) if (col("dram_read") or col("dram_write")) else math.nan
    )
    for key in (
        "dram_pct_peak",
        "achieved_occupancy_pct",
        "registers_per_thread",
        "sm_throughput_pct",
        "memory_throughput_pct",
        "grid_size",
        "block_size",
    ):
        c = col(key)
        out[key] = df[c].map(_num) if c is not None else math.nan
    nvtx_cols = [c for c in df.columns if "nvtx" in c.lower()]
    ops = []
    for i, k in enumerate(out["kernel"]):
        op = None
        for c in nvtx_cols:  # innermost questkern range named in the NVTX state, if exported
            found = re.findall(r"questkern\.([A-Za-z0-9_]+)", str(df[c].iloc[i]))
            if found:
                op = found[-1]
        ops.append(op or kernel_op(k, mode))
    out["op"] = ops
    g = out.groupby(["op", "kernel"], sort=False)
    summary = g.agg(
        calls=("duration_us", "size"),
        duration_us=("duration_us", "median"),
        dram_gbps=("dram_gbps", "median"),
        dram_pct_peak=("dram_pct_peak", "median"),
        achieved_occupancy_pct=("achieved_occupancy_pct", "median"),
        registers_per_thread=("registers_per_thread", "max"),
        sm_throughput_pct=("sm_throughput_pct", "median"),
        memory_throughput_pct=("memory_throughput_pct", "median"),
        grid_size=("grid_size", "max"),
        block_size=("block_size", "max"),
    ).reset_index()
    summary["tool"], summary["kind"], summary["basis"] = "ncu", "kernel", "gpu"
    summary["exclusive_us"] = math.nan
    summary["per_step_us"] = summary["duration_us"] * summary["calls"] / steps
    summary.attrs["missing_metrics"] = missing
    return summary[SUMMARY_COLUMNS]


# --------------------------------------------------------------------------- torch.profiler


def _is_range(e: dict) -> bool:
    return e.get("ph") == "X" and str(e.get("name", "")).startswith(PREFIX)


def filter_trace(trace: dict) -> dict:
    """Keep metadata, questkern ranges, and the events that lie inside a questkern range
    of the same process (host ops on the CPU timeline, kernels on the GPU timeline)."""
    events = trace.get("traceEvents", [])
    spans: dict = {}
    for e in events:
        if _is_range(e):
            spans.setdefault(e.get("pid"), []).append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))))
    kept = []
    for e in events:
        if e.get("ph") == "M" or _is_range(e):
            kept.append(e)
            continue
        if e.get("ph") != "X" or "ts" not in e:
            continue
        t0, t1 = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
        if any(a <= t0 and t1 <= b for a, b in spans.get(e.get("pid"), ())):
            kept.append(e)
    out = {k: v for k, v in trace.items() if k != "traceEvents"}
    out["traceEvents"] = kept
    return out


def summarize_torch_trace(trace: dict, *, steps: int, mode: str = "quest") -> pd.DataFrame:
    """summary.csv rows from a Chrome trace written by torch.profiler (filtered or not)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e]
    ranges = [e for e in events if _is_range(e)]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    rows = []
    # ranges: inclusive and exclusive (minus directly nested questkern ranges on the same track)
    by_track: dict = {}
    for e in ranges:
        by_track.setdefault((e.get("pid"), e.get("tid"), e.get("cat")), []).append(e)
    stats: dict = {}
    for (_, _, cat), evs in by_track.items():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0))))
        for i, e in enumerate(evs):
            t0, dur = float(e["ts"]), float(e.get("dur", 0))
            t1 = t0 + dur
            child = 0.0
            j = i + 1
            depth_end = t0  # direct children only: skip grandchildren inside an earlier child
            while j < len(evs) and float(evs[j]["ts"]) < t1:
                c0, cd = float(evs[j]["ts"]), float(evs[j].get("dur", 0))
                if c0 >= depth_end and c0 + cd <= t1:
                    child += cd
                    depth_end = c0 + cd
                j += 1
            basis = "gpu" if cat == "gpu_user_annotation" else "cpu"
            s = stats.setdefault((e["name"], basis), [0, 0.0, 0.0])
            s[0] += 1
            s[1] += dur
            s[2] += dur - child
    for (name, basis), (n, incl, excl) in stats.items():
        rows.append(
            {
                "tool": "torch.profiler",
                "kind": "range",
                "basis": basis,
                "op": name[len(PREFIX) :],
                "kernel": "",
                "calls": n,
                "duration_us": incl / n,
                "exclusive_us": excl / n,
                "per_step_us": excl / steps,
            }
        )
    # kernels: op from the innermost questkern GPU range containing them, else by name
    gpu_ranges = [e for e in ranges if e.get("cat") == "gpu_user_annotation"]
    kstats: dict = {}
    for k in kernels:
        t0, t1 = float(k["ts"]), float(k["ts"]) + float(k.get("dur", 0))
        inner = [r for r in gpu_ranges if float(r["ts"]) <= t0 and t1 <= float(r["ts"]) + float(r.get("dur", 0))]
        op = (
            min(inner, key=lambda r: float(r.get("dur", 0)))["name"][len(PREFIX) :]
            if inner
            else kernel_op(k["name"], mode)
        )
        s = kstats.setdefault((op, k["name"]), [0, 0.0])
        s[0] += 1
        s[1] += float(k.get("dur", 0))
    for (op, name), (n, tot) in kstats.items():
        rows.append(
            {
                "tool": "torch.profiler",
                "kind": "kernel",
                "basis": "gpu",
                "op": op,
                "kernel": name,
                "calls": n,
                "duration_us": tot / n,
                "exclusive_us": math.nan,
                "per_step_us": tot / steps,
            }
        )
    if not rows:
        return _empty()
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def step_breakdown(summary: pd.DataFrame) -> pd.DataFrame:
    """Per-op time of one decode step from a summary: GPU kernels when measured, else the
    questkern ranges' exclusive time. Columns: op, per_step_us, basis, source."""
    if summary is None or summary.empty:
        return pd.DataFrame(columns=["op", "per_step_us", "basis", "source"])
    kern = summary[summary["kind"] == "kernel"]
    if not kern.empty:
        g = kern.groupby("op", sort=False)["per_step_us"].sum().reset_index()
        g["basis"], g["source"] = "gpu", "kernels"
        return g
    rng = summary[summary["kind"] == "range"]
    basis = "gpu" if (rng["basis"] == "gpu").any() else "cpu"
    rng = rng[rng["basis"] == basis]
    g = rng.groupby("op", sort=False)["per_step_us"].sum().reset_index()
    g["basis"], g["source"] = basis, "ranges"
    return g

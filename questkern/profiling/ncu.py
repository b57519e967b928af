"""Command lines for Nsight Compute and Nsight Systems around the profiling workload.

NVTX filter syntax (ncu ``--nvtx-include``): ``<domain>@<range>/`` selects kernels
launched inside the *push/pop* range ``<range>`` of domain ``<domain>`` (without the
trailing ``/`` ncu would look for a start/end range, which questkern does not use; a
``/`` inside a name would read as nesting, hence questkern's names never contain one).
Several ``--nvtx-include`` options add up: a kernel in any of the ranges is profiled.
"""

from __future__ import annotations

import glob
import os
import shutil

from questkern._nvtx import DOMAIN, check_range_name

# Sections: duration + DRAM/SM throughput (SpeedOfLight), roofline, achieved occupancy,
# registers/grid/block (LaunchStats), bytes per memory level (MemoryWorkloadAnalysis).
NCU_SECTIONS = ("SpeedOfLight", "SpeedOfLight_RooflineChart", "Occupancy", "LaunchStats", "MemoryWorkloadAnalysis")
# DRAM bytes, so that summary.csv can give GB/s whatever the section set reports
NCU_EXTRA_METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")


def profiled_ranges(mode: str, append: bool = True) -> list[str]:
    """The questkern ranges whose kernels a decode-step profile keeps."""
    if mode not in ("quest", "dense"):
        raise ValueError(f"mode must be 'quest' or 'dense', got {mode!r}")
    ops = ["questkern.select", "questkern.sparse_decode"] if mode == "quest" else ["questkern.dense_decode"]
    ops.append("questkern.combine")  # nested inside the decode range today; its own range if added
    if append:
        ops.append("questkern.metadata")
    return ops


def nvtx_include_filters(ranges: list[str], domain: str = DOMAIN) -> list[str]:
    """``["questkern@questkern.select/", ...]``: one push/pop filter per range name."""
    if not ranges:
        raise ValueError("ranges must name at least one questkern range")
    if not domain or "@" in domain or "/" in domain:
        raise ValueError(f"NVTX domain must be a non-empty name without '@' or '/', got {domain!r}")
    return [f"{domain}@{check_range_name(r)}/" for r in ranges]


def ncu_command(
    ncu: str,
    workload: list[str],
    export_base: str,
    ranges: list[str],
    *,
    sections: tuple[str, ...] = NCU_SECTIONS,
    metrics: tuple[str, ...] = NCU_EXTRA_METRICS,
) -> list[str]:
    """``ncu --nvtx --nvtx-include ... --section ... --export BASE <workload>`` (writes BASE.ncu-rep)."""
    cmd = [ncu, "--nvtx"]
    for f in nvtx_include_filters(ranges):
        cmd += ["--nvtx-include", f]
    for s in sections:
        cmd += ["--section", s]
    if metrics:
        cmd += ["--metrics", ",".join(metrics)]
    cmd += ["--target-processes", "all", "--export", export_base]
    return cmd + list(workload)


def ncu_csv_command(ncu: str, report: str) -> list[str]:
    """Export every collected metric, one row per kernel (header row, then a units row)."""
    return [ncu, "--import", report, "--csv", "--page", "raw"]


def nsys_command(nsys: str, workload: list[str], out_base: str) -> list[str]:
    """A Nsight Systems timeline of the same workload (CUDA + NVTX)."""
    return [nsys, "profile", "--trace=cuda,nvtx", "--force-overwrite=false", "--output", out_base] + list(workload)


def nsys_stats_command(nsys: str, report: str) -> list[str]:
    return [nsys, "stats", "--report", "nvtx_sum,cuda_gpu_kern_sum", report]


def find_tool(name: str) -> str | None:
    """``ncu``/``nsys`` on PATH, else in the usual CUDA / Nsight install folders."""
    hit = shutil.which(name)
    if hit:
        return hit
    patterns = [
        f"/usr/local/cuda/bin/{name}",
        f"/usr/local/cuda-*/bin/{name}",
        f"/opt/nvidia/nsight-compute/*/{name}",
        f"/opt/nvidia/nsight-systems/*/bin/{name}",
        f"/usr/local/cuda/nsight-compute-*/{name}",
    ]
    for pat in patterns:
        for path in sorted(glob.glob(pat), reverse=True):
            if os.access(path, os.X_OK):
                return path
    return None


def diagnose_ncu(returncode: int, output: str) -> str | None:
    """Why an ncu run gave nothing usable, in one sentence; None when it looks fine."""
    if "ERR_NVGPUCTRPERM" in output:
        return (
            "ncu cannot read the GPU performance counters (ERR_NVGPUCTRPERM): run as root, or load the driver "
            "with NVreg_RestrictProfilingToAdminUsers=0"
        )
    if "No kernels were profiled" in output:
        return "ncu profiled no kernel: none matched the NVTX filter (is the questkern domain annotated? QUESTKERN_NVTX=0?)"
    if returncode != 0:
        tail = " | ".join(ln.strip() for ln in output.strip().splitlines()[-3:])
        return f"ncu exited with status {returncode}: {tail}"
    return None

"""Profiling: NVTX ranges (nvtx.py), the profiled workload (workload.py), Nsight Compute
and PyTorch-profiler runs and their summaries (ncu.py, torch_fallback.py, summary.py)."""

from questkern._nvtx import (
    DOMAIN,
    RANGE_NAMES,
    RangeEvent,
    annotate,
    check_range_name,
    nvtx_enabled,
    nvtx_switched_on,
    record_ranges,
    set_nvtx_enabled,
    torch_ranges,
    trial_range,
)

__all__ = [
    "DOMAIN",
    "RANGE_NAMES",
    "RangeEvent",
    "annotate",
    "check_range_name",
    "nvtx_enabled",
    "nvtx_switched_on",
    "record_ranges",
    "set_nvtx_enabled",
    "torch_ranges",
    "trial_range",
]

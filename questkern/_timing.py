"""Timing helpers: CUDA-graph replays timed by ``triton.testing.do_bench`` (median, L2 flushed).

``do_bench`` clears the L2 cache before every repetition and times each with CUDA
events, so a decode step is measured cold, as in a real model where the other layers
evict its KV pages. Capturing the step in a CUDA graph first removes Python and launch
overhead, which is a large share of a 10-100 µs decode step.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def graph_replay(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture ``fn`` in a CUDA graph (after a warm-up on a side stream, as capture
    requires) and return the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def time_fn(fn: Callable[[], object], *, graph: bool = True, rep_ms: int = 200, warmup_ms: int = 50) -> float:
    """Median time of ``fn`` in microseconds.

    On CUDA: warm up (compiles), capture into a CUDA graph when ``graph``, then
    ``do_bench`` the replay. On CPU (the Triton interpreter) one wall-clock call: a
    number that only shows the code ran, not how fast it would be on a GPU.
    """
    if not torch.cuda.is_available():
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6
    import triton.testing

    fn()
    torch.cuda.synchronize()
    target = graph_replay(fn) if graph else fn
    ms = triton.testing.do_bench(target, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    return float(ms) * 1e3


def graph_floor_us(rep_ms: int = 200) -> float:
    """The least any op can measure in this harness, in microseconds: a CUDA graph of one
    one-element kernel, replayed and timed exactly as the ops are (``do_bench`` median,
    L2 flushed). Graph launch, event timing and one kernel's launch latency are in every
    figure of a run; a bound on an op's time is this floor plus its bytes at the copy
    bandwidth (``questkern bench``'s ``bound_us``)."""
    if not torch.cuda.is_available():
        return float("nan")
    x = torch.zeros(1, device="cuda")
    return time_fn(lambda: x.add_(1.0), graph=True, rep_ms=rep_ms)


def bound_us(nbytes: int, copy_gbps: float, floor_us: float) -> float:
    """The least time an op moving ``nbytes`` can measure: the run's floor plus its bytes
    at the copy bandwidth (GB/s) of the same run."""
    return floor_us + nbytes / (copy_gbps * 1e3)


def copy_bandwidth_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written), measured now."""
    if not torch.cuda.is_available():
        return float("nan")
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    us = time_fn(lambda: dst.copy_(src), graph=False, rep_ms=300)
    return 2 * n * 4 / (us * 1e-6) / 1e9


def device_info() -> dict:
    """Device name, driver, torch/Triton/CUDA versions: recorded with every figure."""
    import triton

    info = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda or "",
        "gpu_name": "cpu (Triton interpreter)",
        "driver": "",
        "sms": 0,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu_name"] = props.name
        info["sms"] = props.multi_processor_count
        try:
            import subprocess

            info["driver"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                .stdout.strip()
                .splitlines()[0]
            )
        except Exception:
            info["driver"] = "unknown"
    return info

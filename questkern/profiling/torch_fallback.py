"""PyTorch-profiler fallback of ``questkern profile`` (Nsight Compute missing or without
counter access): the same questkern ranges, as ``record_function`` ranges, in a Chrome
trace filtered to them, plus a ``summary.csv`` in the shared format (summary.py)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from questkern._io import write_csv_atomic, write_text_atomic
from questkern._nvtx import torch_ranges
from questkern.profiling.summary import filter_trace, summarize_torch_trace


def profile_steps(
    run: Callable[[], None], out_dir: str | os.PathLike, *, steps: int, cuda: bool, mode: str = "quest"
) -> Path:
    """Run ``run()`` (which performs ``steps`` decode steps and synchronizes) under torch.profiler.

    Writes ``out_dir/trace.json`` (Chrome trace: open in chrome://tracing or Perfetto) and
    ``out_dir/summary.csv``. Returns the summary path.
    """
    from torch.profiler import ProfilerActivity, profile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof, torch_ranges():
        run()
    fd, raw = tempfile.mkstemp(prefix=".trace-full.", suffix=".json", dir=out_dir)
    os.close(fd)
    try:
        prof.export_chrome_trace(raw)
        with open(raw) as f:
            trace = json.load(f)
    finally:
        os.unlink(raw)
    filtered = filter_trace(trace)
    write_text_atomic(out_dir / "trace.json", json.dumps(filtered))
    summary = summarize_torch_trace(filtered, steps=steps, mode=mode)
    if summary.empty:
        raise RuntimeError(
            "torch.profiler recorded no questkern range: was annotation reached? "
            "(questkern.profiling.torch_ranges mirrors annotate() calls)"
        )
    return write_csv_atomic(out_dir / "summary.csv", summary)

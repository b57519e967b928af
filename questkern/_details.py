"""Private helpers shared by the kernels' launchers."""

from __future__ import annotations

import os

import torch


def is_interpreter() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_device() -> torch.device:
    """CUDA when a device is present, else the CPU (kernels then run in the Triton interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether kernels must upcast ``tl.dot`` operands of ``dtype`` to float32.

    Triton 3.6's interpreter multiplies bfloat16 operands of ``tl.dot`` as raw bits
    (numpy has no bfloat16), giving garbage. Upcasting bf16 to float32 is exact, so
    under the interpreter the kernels do that; on GPUs they use bf16 tensor cores.
    """
    return is_interpreter() and dtype == torch.bfloat16


_pdl_capable: dict[int, bool] = {}


def use_pdl(device: torch.device) -> bool:
    """Whether to launch dependent kernels with programmatic dependent launch (PDL).

    On Hopper and later, a kernel launched with PDL may start while the kernel before it
    drains; it calls ``gdc_wait()`` before touching anything, which blocks until that
    kernel has completed and its writes are visible, so the launch latency and the CTA
    start-up overlap the previous kernel's tail instead of following it (the kernels of
    a decode step are short). Off under the interpreter (inline PTX) and before sm_90;
    ``QUESTKERN_PDL=0`` turns it off.
    """
    if device.type != "cuda" or is_interpreter() or os.environ.get("QUESTKERN_PDL", "1") == "0":
        return False
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _pdl_capable:
        _pdl_capable[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _pdl_capable[idx]


_backend_note: str | None = None


def select_backend() -> str | None:
    """Without a CUDA device, run kernels through the Triton interpreter.

    Must run before any ``@triton.jit`` kernel module is imported (questkern's
    ``__init__`` calls it first). Returns a one-line note when the interpreter was
    switched on here, else None; callers (the CLI) print it.
    """
    global _backend_note
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        _backend_note = (
            "no CUDA device: questkern kernels run in the Triton CPU interpreter (correct results, meaningless timings)"
        )
    return _backend_note

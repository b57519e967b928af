"""Quest page metadata for the quality study: page min/max of keys, and safe rounding.

``page_minmax`` is the vectorized equivalent of
:func:`questkern.ops.metadata.naive.metadata_build_ref` for one contiguous sequence
(a test checks the two agree). ``round_meta`` stores kmin/kmax in a narrower float
type **without ever tightening the bound**: kmin is rounded toward -inf and kmax
toward +inf (DESIGN.md §1), so every page score stays an upper bound of q.k.
"""

from __future__ import annotations

import torch

# narrow metadata types studied; "fp32" keeps the bound exactly (and equals bf16
# metadata of bf16 keys, whose min/max are bf16 values already)
META_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e5m2": torch.float8_e5m2,
}
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float8_e5m2: torch.uint8}
_NEG_SMALLEST = {torch.int16: -32767, torch.uint8: 0x81}  # sign bit | 1: the negative subnormal closest to 0


def page_minmax(keys: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys [H, S, D] of one sequence -> (kmin, kmax) [n_pages, H, D] float32 over valid tokens."""
    H, S, D = keys.shape
    n = -(-S // page_size)
    pad = n * page_size - S
    k = keys.float()
    lo = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("inf")).view(H, n, page_size, D).amin(2)
    hi = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("-inf")).view(H, n, page_size, D).amax(2)
    return lo.transpose(0, 1).contiguous(), hi.transpose(0, 1).contiguous()  # [n, H, D]


def _step(r: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Move the narrow values ``r`` one ulp toward -inf where ``down``, else toward +inf."""
    it = _BITS[r.dtype]
    bits = r.view(it).to(torch.int32)
    neg = r.float() < 0
    zero = r.float() == 0
    # sign-magnitude: for positive values bits-1 goes down, for negative values bits+1 does
    moved = torch.where(down, torch.where(neg, bits + 1, bits - 1), torch.where(neg, bits - 1, bits + 1))
    moved = torch.where(zero, torch.where(down, torch.full_like(bits, _NEG_SMALLEST[it]), torch.ones_like(bits)), moved)
    return moved.to(it).view(r.dtype)


def round_safe(x: torch.Tensor, dtype: torch.dtype, direction: str) -> torch.Tensor:
    """x (float32) -> values of ``dtype`` (returned as float32) with ``direction`` "down"
    (result <= x) or "up" (result >= x). Out-of-range values go to +-inf when the type
    has infinities (fp16, bf16, e5m2), which keeps the bound safe."""
    if direction not in ("down", "up"):
        raise ValueError(f"direction must be 'down' or 'up', got {direction!r}")
    if dtype == torch.float32:
        return x.float()
    if dtype not in _BITS:
        raise ValueError(f"dtype must be one of {[str(d) for d in (torch.float32, *_BITS)]}, got {dtype}")
    xf = x.float()
    r = xf.to(dtype)
    back = r.float()
    wrong = back > xf if direction == "down" else back < xf
    if bool(wrong.any()):
        r = torch.where(wrong, _step(r, torch.full_like(wrong, direction == "down")), r)
    return r.float()


def round_meta(kmin: torch.Tensor, kmax: torch.Tensor, meta: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Store kmin/kmax as ``meta`` (a key of META_DTYPES) with safe rounding; float32 out."""
    if meta not in META_DTYPES:
        raise ValueError(f"meta must be one of {list(META_DTYPES)}, got {meta!r}")
    dt = META_DTYPES[meta]
    return round_safe(kmin, dt, "down"), round_safe(kmax, dt, "up")

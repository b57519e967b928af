"""Float32 references for page metadata (per-channel key min/max of each page).

Metadata is stored as float32, in the key dtype (exact: a key's min/max are keys), or as
``torch.float8_e5m2`` (half the bytes of bf16 metadata) with **safe rounding**: kmin
rounded toward -inf and kmax toward +inf (``round_safe``), so a page's score stays an
upper bound of every q.k in it (DESIGN.md §1). Rounding is monotone, so the min of
rounded keys equals the rounded min: a running min/max on append equals a rebuild.

Non-finite keys: a channel of a page holding a NaN or +-inf key has kmin = kmax = NaN
(every metadata dtype; the page then always ranks first in select, see the README).
"""

from __future__ import annotations

import torch

# narrow types that ``round_safe`` rounds into (they all have infinities, so a value out
# of range goes to -inf/+inf on the safe side); e4m3 has none and is not offered
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float8_e5m2: torch.uint8}
_NEG_SMALLEST = {torch.int16: -32767, torch.uint8: 0x81}  # sign bit | 1: the negative subnormal closest to 0


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
    (result <= x) or "up" (result >= x). Out-of-range values go to +-inf, which keeps the
    bound safe. float32 returns x unchanged."""
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


def sub_pages_view(meta: torch.Tensor) -> torch.Tensor:
    """Metadata as [P, Hkv, SUB, D]: 4-D (hierarchical) metadata itself, 3-D metadata as a
    view with one sub-page per page (writes through it land in ``meta``)."""
    return meta if meta.dim() == 4 else meta.unsqueeze(2)


def metadata_build_ref(
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    kmin: torch.Tensor | None = None,  # [P, Hkv, D] or [P, Hkv, SUB, D], updated in place when given
    kmax: torch.Tensor | None = None,
):
    """kmin/kmax over the valid tokens of every page that a sequence uses, stored in
    the dtype of the given outputs (safe-rounded when narrower than the keys).

    4-D outputs [P, Hkv, SUB, D] (hierarchical pages) hold one min/max per sub-page of
    PAGE // SUB tokens; a sub-page with no valid token yet is left as it is. Pages no
    sequence uses are left as they are (or 0 in fresh outputs).
    """
    P, H, PAGE, D = k_cache.shape
    if kmin is None:
        kmin = torch.zeros(P, H, D, dtype=torch.float32, device=k_cache.device)
        kmax = torch.zeros(P, H, D, dtype=torch.float32, device=k_cache.device)
    assert kmax is not None
    lo4, hi4 = sub_pages_view(kmin), sub_pages_view(kmax)  # [P, Hkv, SUB, D] (SUB = 1: whole pages)
    SUB = lo4.shape[2]
    SUBPAGE = PAGE // SUB
    for b in range(page_table.shape[0]):
        n = int(seq_lens[b])
        for p in range(-(-n // PAGE)):
            phys = int(page_table[b, p])
            for j in range(SUB):
                valid = min(SUBPAGE, n - p * PAGE - j * SUBPAGE)
                if valid <= 0:
                    break  # no valid token in this sub-page (nor in the later ones)
                k = k_cache[phys, :, j * SUBPAGE : j * SUBPAGE + valid, :].float()  # [H, valid, D]
                bad = (~torch.isfinite(k)).any(dim=1)  # [H, D] channels holding a NaN or +-inf key
                lo = round_safe(k.amin(dim=1), kmin.dtype, "down").masked_fill(bad, float("nan"))
                hi = round_safe(k.amax(dim=1), kmax.dtype, "up").masked_fill(bad, float("nan"))
                lo4[phys, :, j] = lo.to(kmin.dtype)
                hi4[phys, :, j] = hi.to(kmax.dtype)
    return kmin, kmax

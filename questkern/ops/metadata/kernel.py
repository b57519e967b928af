"""Page metadata kernels: build (prefill) and append (decode, running min/max).

Layout contract (HND, used throughout questkern):
    k_cache, v_cache: [num_pages, Hkv, PAGE, D]   (each (page, head) tile contiguous)
    kmin, kmax:       [num_pages, Hkv, D]          float32, the key dtype, or float8_e5m2
                      [num_pages, Hkv, SUB, D]     hierarchical pages (LServe): one min/max per
                                                   sub-page of PAGE // SUB tokens (SUB = 1: 3-D)
Metadata stored in float32 or the key dtype is exact (min/max of keys are keys). In
float8_e5m2 (half the bytes of bf16 metadata: stage 1 of ``select`` streams it) kmin is
rounded toward -inf and kmax toward +inf (``_round_e5m2``; past +-57344 to +-inf), so
the bound stays safe;
``naive.round_safe`` is the reference. Other narrowings are rejected by the public API.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from questkern.config import MetadataConfig


E5M2_MAX = tl.constexpr(57344.0)  # largest finite float8_e5m2 value


@triton.jit
def _round_e5m2(x, DOWN: tl.constexpr):
    """float32 x -> the float8_e5m2 value next to x toward -inf (DOWN) or +inf, as float32
    (possibly +-inf past +-57344). Exact arithmetic, no fp8 conversion: e5m2 keeps 2
    mantissa bits, so its spacing at x is q = 2^(e-2) for x's exponent e (e >= -14;
    below that the subnormal spacing 2^-16); x/q and floor/ceil(x/q)*q are exact in
    float32. (Rounding through ``x.to(tl.float8e5)`` is unusable: the GPU conversion
    saturates instead of giving inf, and Triton 3.6's interpreter drops the carry when
    a value rounds up into the next binade, e.g. 1.906 -> 1.0.)"""
    e = tl.maximum(((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -14)  # exponent of x; 0 -> -14
    q = ((e - 2 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-2)
    inv_q = ((2 - e + 127) << 23).to(tl.float32, bitcast=True)  # 2^(2-e)
    if DOWN:
        v = tl.floor(x * inv_q) * q
        v = tl.where(v > E5M2_MAX, tl.where(x == float("inf"), x, E5M2_MAX), tl.where(v < -E5M2_MAX, float("-inf"), v))
    else:
        v = tl.ceil(x * inv_q) * q
        v = tl.where(v < -E5M2_MAX, tl.where(x == float("-inf"), x, -E5M2_MAX), tl.where(v > E5M2_MAX, float("inf"), v))
    return v


@triton.jit
def _to_e5m2(v):
    """float32 values exact in float8_e5m2 (+-inf included) -> float8_e5m2, bit for bit:
    e5m2 is the top byte of float16, and float32 -> float16 is exact for them."""
    b16 = v.to(tl.float16).to(tl.int16, bitcast=True)
    b8 = tl.where(v != v, 0x7F, (b16 >> 8).to(tl.int8))  # NaN -> e5m2 NaN, whatever the float16 NaN's bits
    return b8.to(tl.int8).to(tl.float8e5, bitcast=True)


@triton.jit
def _not_finite(x):
    """NaN or +-inf (metadata of a channel holding such a key is NaN: the README's rule)."""
    return (x != x) | (tl.abs(x) == float("inf"))


@triton.jit
def _metadata_build_kernel(
    k_cache,  # [P, Hkv, PAGE, D]
    kmin,  # [P, Hkv, D] or [P, Hkv, SUB, D]
    kmax,  # [P, Hkv, D] or [P, Hkv, SUB, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    first_page,  # [B] int32: first logical page to (re)build
    stride_kp,
    stride_kh,
    stride_kt,
    stride_mp,
    stride_mh,
    stride_tb,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    META_FP8: tl.constexpr,
    stride_ms=0,  # SUB > 1: stride of the sub-page axis of kmin/kmax
    SUB: tl.constexpr = 1,  # sub-pages per page (hierarchical metadata); 1 = one min/max per page
):
    i_p, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens + i_b)
    n_pages = tl.cdiv(seq_len, PAGE)
    page = tl.load(first_page + i_b) + i_p
    live = page < n_pages
    phys = tl.load(page_table + i_b.to(tl.int64) * stride_tb + page, mask=live, other=0).to(tl.int64)
    n_valid = tl.minimum(seq_len - page * PAGE, PAGE)

    SUBPAGE: tl.constexpr = PAGE // SUB
    o_d = tl.arange(0, BLOCK_D)
    p_k = k_cache + phys * stride_kp + i_h * stride_kh
    for j in tl.static_range(SUB):  # sub-page j: tokens j * SUBPAGE .. (j + 1) * SUBPAGE - 1
        o_t = j * SUBPAGE + tl.arange(0, SUBPAGE)
        m_t = (o_t < n_valid) & live
        p_meta = phys * stride_mp + i_h * stride_mh
        m_s = live
        if SUB > 1:
            p_meta += j * stride_ms
            m_s = live & (j * SUBPAGE < n_valid)  # a sub-page with no valid token yet is not written
        for d0 in tl.static_range(0, HEAD_DIM, BLOCK_D):
            m_d = (d0 + o_d) < HEAD_DIM
            b_k = tl.load(
                p_k + o_t[:, None] * stride_kt + (d0 + o_d)[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0
            ).to(tl.float32)  # [SUBPAGE, BLOCK_D]
            bad = tl.max((m_t[:, None] & _not_finite(b_k)).to(tl.int32), axis=0) > 0  # [BLOCK_D] a non-finite key
            b_k = tl.where(_not_finite(b_k), 0.0, b_k)  # no NaN reaches the min/max (GPU min/max drop NaN)
            b_min = tl.min(tl.where(m_t[:, None], b_k, float("inf")), axis=0)
            b_max = tl.max(tl.where(m_t[:, None], b_k, float("-inf")), axis=0)
            if META_FP8:
                b_min = _round_e5m2(b_min, True)
                b_max = _round_e5m2(b_max, False)
            b_min = tl.where(bad, float("nan"), b_min)
            b_max = tl.where(bad, float("nan"), b_max)
            if META_FP8:
                b_min = _to_e5m2(b_min)
                b_max = _to_e5m2(b_max)
            tl.store(kmin + p_meta + d0 + o_d, b_min.to(kmin.dtype.element_ty), mask=m_d & m_s)
            tl.store(kmax + p_meta + d0 + o_d, b_max.to(kmax.dtype.element_ty), mask=m_d & m_s)


@triton.jit
def _append_kernel(
    k_new,  # [B, Hkv, D]
    v_new,  # [B, Hkv, D]
    k_cache,
    v_cache,  # [P, Hkv, PAGE, D]
    kmin,
    kmax,  # [P, Hkv, D] or [P, Hkv, SUB, D]
    page_table,  # [B, max_pages]
    seq_lens,  # [B] int32: read as the position to write, then incremented
    active,  # [B] int32: 0 skips the sequence
    stride_nb,
    stride_nh,
    stride_kp,
    stride_kh,
    stride_kt,
    stride_mp,
    stride_mh,
    stride_tb,
    NUM_KV_HEADS: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    META_FP8: tl.constexpr,
    stride_ms=0,  # SUB > 1: stride of the sub-page axis of kmin/kmax
    SUB: tl.constexpr = 1,  # sub-pages per page (hierarchical metadata)
):
    # One program per sequence: it reads seq_lens[b] once and writes it last, so the
    # update needs no second launch and no host round trip (CUDA-graph friendly).
    i_b = tl.program_id(0)
    live = tl.load(active + i_b) != 0
    pos = tl.load(seq_lens + i_b)
    page = pos // PAGE
    slot = pos % PAGE
    phys = tl.load(page_table + i_b.to(tl.int64) * stride_tb + page, mask=live, other=0).to(tl.int64)
    o_h = tl.arange(0, BLOCK_H)
    o_d = tl.arange(0, BLOCK_D)
    m_hd = (o_h[:, None] < NUM_KV_HEADS) & (o_d[None, :] < HEAD_DIM) & live  # [BLOCK_H, BLOCK_D]
    sub_slot = slot  # position within the sub-page whose min/max this token updates
    if SUB > 1:
        sub_slot = slot % (PAGE // SUB)
    first = sub_slot == 0  # the first token of a (sub-)page starts its min/max afresh
    # all heads in one tile: one round of loads instead of a chain per head
    p_new = i_b.to(tl.int64) * stride_nb + o_h[:, None] * stride_nh + o_d[None, :]
    b_k = tl.load(k_new + p_new, mask=m_hd, other=0.0)  # [BLOCK_H, BLOCK_D]
    b_v = tl.load(v_new + p_new, mask=m_hd, other=0.0)
    p_meta = phys * stride_mp + o_h[:, None] * stride_mh + o_d[None, :]
    if SUB > 1:
        p_meta += (slot // (PAGE // SUB)) * stride_ms
    old_min = tl.load(kmin + p_meta, mask=m_hd & (sub_slot > 0), other=0.0)
    old_max = tl.load(kmax + p_meta, mask=m_hd & (sub_slot > 0), other=0.0)
    p_kv = phys * stride_kp + o_h[:, None] * stride_kh + slot * stride_kt + o_d[None, :]
    tl.store(k_cache + p_kv, b_k.to(k_cache.dtype.element_ty), mask=m_hd)
    tl.store(v_cache + p_kv, b_v.to(v_cache.dtype.element_ty), mask=m_hd)
    if META_FP8:  # e5m2 NaN by its bits (the interpreter converts e5m2 NaN to a finite value)
        was_bad = ((old_min.to(tl.uint8, bitcast=True) & 0x7F) > 0x7C) | (
            (old_max.to(tl.uint8, bitcast=True) & 0x7F) > 0x7C
        )
    else:
        was_bad = (old_min.to(tl.float32) != old_min.to(tl.float32)) | (
            old_max.to(tl.float32) != old_max.to(tl.float32)
        )
    if META_FP8:  # safe-rounded in float32; min/max of e5m2 values store exactly
        b_lo = _round_e5m2(b_k.to(tl.float32), True)
        b_hi = _round_e5m2(b_k.to(tl.float32), False)
        old_min = old_min.to(tl.float32)
        old_max = old_max.to(tl.float32)
    else:  # exact: a key converts to the key dtype or float32 without rounding
        b_lo = b_k.to(kmin.dtype.element_ty)
        b_hi = b_lo
    # NaN rule: a non-finite key, or metadata already NaN, makes the channel NaN (GPU
    # min/max would drop a NaN operand)
    new_bad = _not_finite(b_k.to(tl.float32))
    b_lo = tl.where(first, b_lo, tl.minimum(old_min, b_lo))
    b_hi = tl.where(first, b_hi, tl.maximum(old_max, b_hi))
    nan = new_bad | (was_bad & (sub_slot > 0))
    b_lo = tl.where(nan, float("nan"), b_lo)
    b_hi = tl.where(nan, float("nan"), b_hi)
    if META_FP8:
        b_lo = _to_e5m2(b_lo)
        b_hi = _to_e5m2(b_hi)
    tl.store(kmin + p_meta, b_lo.to(kmin.dtype.element_ty), mask=m_hd)
    tl.store(kmax + p_meta, b_hi.to(kmax.dtype.element_ty), mask=m_hd)
    tl.store(seq_lens + i_b, pos + 1, mask=live)


def sub_args(kmin: torch.Tensor) -> dict:
    """Keyword launch arguments of the sub-page axis: SUB and its stride for 4-D
    (hierarchical) metadata [P, Hkv, SUB, D]; SUB = 1 (today's code path) for 3-D."""
    if kmin.dim() == 4:
        return dict(SUB=kmin.shape[2], stride_ms=kmin.stride(2))
    return dict(SUB=1, stride_ms=0)


def metadata_build(
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    kmin: torch.Tensor,  # [P, Hkv, D] or [P, Hkv, SUB, D] (hierarchical)
    kmax: torch.Tensor,  # like kmin
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    first_page: torch.Tensor | None = None,  # [B] int32
    max_new_pages: int | None = None,
    config: MetadataConfig | None = None,
) -> None:
    """(Re)build kmin/kmax in place for logical pages ``first_page[b] ..`` of each sequence.

    ``max_new_pages`` bounds the grid (defaults to the page-table width). With 4-D
    (hierarchical) metadata each sub-page of PAGE // SUB tokens gets its own min/max; a
    sub-page with no valid token yet is left as it is.
    """
    P, H, PAGE, D = k_cache.shape
    B = page_table.shape[0]
    cfg = config or MetadataConfig()
    if first_page is None:
        first_page = torch.zeros(B, dtype=torch.int32, device=k_cache.device)
    n = max_new_pages if max_new_pages is not None else page_table.shape[1]
    if n <= 0 or B == 0:
        return
    _metadata_build_kernel[(n, B, H)](
        k_cache,
        kmin,
        kmax,
        page_table,
        seq_lens,
        first_page,
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        kmin.stride(0),
        kmin.stride(1),
        page_table.stride(0),
        PAGE=PAGE,
        HEAD_DIM=D,
        BLOCK_D=min(triton.next_power_of_2(D), 64),
        META_FP8=kmin.dtype == torch.float8_e5m2,
        num_warps=cfg.num_warps,
        **sub_args(kmin),
    )


def append_decode(
    k_new: torch.Tensor,  # [B, Hkv, D]
    v_new: torch.Tensor,  # [B, Hkv, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    v_cache: torch.Tensor,
    kmin: torch.Tensor,  # [P, Hkv, D] or [P, Hkv, SUB, D] (hierarchical)
    kmax: torch.Tensor,
    page_table: torch.Tensor,  # [B, max_pages] int32 (the page for position seq_lens[b] must be mapped)
    seq_lens: torch.Tensor,  # [B] int32, incremented in place for active sequences
    active: torch.Tensor | None = None,  # [B] int32, nonzero = append
    config: MetadataConfig | None = None,
) -> None:
    """Write one token per sequence at position seq_lens[b], update that page's running
    min/max (with 4-D metadata: its sub-page's), and increment seq_lens[b]."""
    B, H, D = k_new.shape
    PAGE = k_cache.shape[2]
    cfg = config or MetadataConfig()
    if active is None:
        active = torch.ones(B, dtype=torch.int32, device=k_new.device)
    _append_kernel[(B,)](
        k_new,
        v_new,
        k_cache,
        v_cache,
        kmin,
        kmax,
        page_table,
        seq_lens,
        active,
        k_new.stride(0),
        k_new.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        kmin.stride(0),
        kmin.stride(1),
        page_table.stride(0),
        NUM_KV_HEADS=H,
        PAGE=PAGE,
        HEAD_DIM=D,
        BLOCK_H=triton.next_power_of_2(H),
        BLOCK_D=triton.next_power_of_2(D),
        META_FP8=kmin.dtype == torch.float8_e5m2,
        num_warps=min(cfg.num_warps, 4),
        **sub_args(kmin),
    )

"""Split-K paged decode attention (sparse over selected pages, or dense) + combine.

Grid: (batch, head programs, splits). A head program serves one KV head and all
``GROUP`` query heads that share it ("shared" selection and dense decode), so each
K/V page is loaded once per group; in "per_head" mode it serves one query head with
its own page list. Heads are padded to 16 rows so both products run on tensor cores
(decode is memory-bound: the padding costs no bandwidth). Each split walks ``PAGES_PER_BLOCK`` pages per iteration with an
online softmax in float32 and writes a partial output plus its log-sum-exp; the
combine kernel merges the splits (FlashDecoding / SGLang two-stage pattern). With a
single split the decode kernel writes the final output itself.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from questkern._details import dot_upcast, use_pdl
from questkern.config import DecodeConfig, choose_num_splits, next_pow2

_LOG2E = 1.4426950408889634


@triton.jit
def _decode_block(
    start,
    hi,
    b_q,
    b_m,
    b_l,
    b_acc,
    p_sel,
    p_sphys,
    p_tab,
    k_cache,
    v_cache,
    p_kv,
    seq_len,
    qk_scale,
    stride_kp,
    m_d,
    o_pb,
    o_t,
    PAGE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGES_PER_BLOCK: tl.constexpr,
    DENSE: tl.constexpr,
    HAS_PHYS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """One block of PAGES_PER_BLOCK pages: gather K/V, online-softmax update of (m, l, acc)."""
    slot = start + o_pb  # [PAGES_PER_BLOCK]
    m_slot = slot < hi
    if DENSE:
        page = slot
    else:
        page = tl.load(p_sel + slot, mask=m_slot, other=-1)
        m_slot = m_slot & (page >= 0)
    if HAS_PHYS:
        phys = tl.load(p_sphys + slot, mask=m_slot, other=0).to(tl.int64)
    else:
        phys = tl.load(p_tab + page, mask=m_slot, other=0).to(tl.int64)
    pos = page[:, None] * PAGE + o_t[None, :]  # [PAGES_PER_BLOCK, PAGE] token positions
    m_tok = m_slot[:, None] & (pos < seq_len)
    p_tile = phys[:, None, None] * stride_kp + p_kv  # [PAGES_PER_BLOCK, PAGE, BLOCK_D]
    m_tile = m_tok[:, :, None] & m_d[None, None, :]
    if DENSE:
        b_k = tl.reshape(tl.load(k_cache + p_tile, mask=m_tile, other=0.0), [BLOCK_N, BLOCK_D])
        b_v = tl.reshape(tl.load(v_cache + p_tile, mask=m_tile, other=0.0), [BLOCK_N, BLOCK_D])
    else:  # selected pages are read once per step: evict them first (H100, runs/020: step 1-9% faster)
        b_k = tl.reshape(
            tl.load(k_cache + p_tile, mask=m_tile, other=0.0, eviction_policy="evict_first"), [BLOCK_N, BLOCK_D]
        )
        b_v = tl.reshape(
            tl.load(v_cache + p_tile, mask=m_tile, other=0.0, eviction_policy="evict_first"), [BLOCK_N, BLOCK_D]
        )
    m_n = tl.reshape(m_tok, [BLOCK_N])
    if UPCAST:
        b_k = b_k.to(tl.float32)
        b_v = b_v.to(tl.float32)
    b_s = tl.dot(b_q, tl.trans(b_k))  # [BLOCK_H, BLOCK_N]
    b_s = tl.where(m_n[None, :], b_s * qk_scale, float("-inf"))
    m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
    alpha = tl.exp2(b_m - m_new)
    b_p = tl.exp2(b_s - m_new[:, None])
    b_l = b_l * alpha + tl.sum(b_p, axis=1)
    b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
    b_m = m_new
    return b_m, b_l, b_acc


@triton.jit
def _split_lse(b_m, b_l):
    """log2-sum-exp of a split's partial: -inf for an empty split, NaN for a NaN partial
    (NaN rule, README: the combine then makes the row NaN instead of dropping the split)."""
    lse = tl.where(b_l > 0, b_m + tl.log2(tl.maximum(b_l, 1e-30)), float("-inf"))
    return tl.where((b_l != b_l) | (b_m != b_m), float("nan"), lse)


@triton.jit
def _split_weights(b_lse, m_s):
    """[S] split log2-sum-exps -> combine weights: 0 for empty splits, NaN for all when a
    split is NaN (no NaN reaches the max reduction: a GPU max would drop it)."""
    nan = tl.max((m_s & (b_lse != b_lse)).to(tl.int32), axis=0) > 0
    lse = tl.where(b_lse != b_lse, float("-inf"), b_lse)
    m = tl.max(lse, axis=0)
    m = tl.where(m > float("-inf"), m, 0.0)
    w = tl.where(m_s & (lse > float("-inf")), tl.exp2(lse - m), 0.0)
    return tl.where(nan, float("nan"), w)


@triton.jit
def _split_weights_rows(b_lse, m_s):
    """``_split_weights`` for rows of heads: b_lse [H, S], m_s [1, S] or [H, S] -> [H, S]."""
    nan = tl.max((m_s & (b_lse != b_lse)).to(tl.int32), axis=1) > 0
    lse = tl.where(b_lse != b_lse, float("-inf"), b_lse)
    m = tl.max(lse, axis=1)
    m = tl.where(m > float("-inf"), m, 0.0)
    w = tl.where(m_s & (lse > float("-inf")), tl.exp2(lse - m[:, None]), 0.0)
    return tl.where(nan[:, None], float("nan"), w)


@triton.jit
def _decode_split_kernel(
    q,  # [B, Hq, D]
    k_cache,
    v_cache,  # [P, Hkv, PAGE, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    sel,  # [B, Hsel, K] int32 logical pages, -1 padded (ignored when DENSE)
    sel_phys,  # [B, Hsel, K] int32 physical pages of ``sel`` (read when HAS_PHYS)
    o_part,  # [B, Hq, S, D] float32
    lse_part,  # [B, Hq, S] float32 (log2 units)
    out,  # [B, Hq, D] (written when S == 1, or by the last split when FUSE_COMBINE)
    counters,  # [B, head programs] int32 arrival counters, zero between calls (FUSE_COMBINE)
    qk_scale,  # sm_scale * log2(e)
    n_slots,  # K (sparse) or max_pages (dense)
    num_splits,
    stride_qb,
    stride_qh,
    stride_kp,
    stride_kh,
    stride_kt,
    stride_tb,
    stride_sb,
    stride_sh,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,  # query heads served per program
    BLOCK_H: tl.constexpr,
    PER_HEAD: tl.constexpr,  # program axis 1 = query head (per_head) or KV head
    KV_GROUP: tl.constexpr,  # Hq // Hkv
    PAGES_PER_BLOCK: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,  # one split: write the final output, skip the combine
    STATIC_ITERS: tl.constexpr,  # > 0: blocks per split, known at compile time (sparse rows)
    FUSE_COMBINE: tl.constexpr,  # the last split to finish merges all splits (no combine launch)
    BLOCK_S: tl.constexpr,  # next_pow2(num_splits), for the fused combine
    DENSE: tl.constexpr,
    HAS_PHYS: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL: wait for the previous kernel, then let the combine launch
    status=None,  # [1] int32 plan status: bit 0 = a sequence grew past the page table (dense, STATUS)
    STATUS: tl.constexpr = False,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    i_b, i_x, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    BLOCK_N: tl.constexpr = PAGES_PER_BLOCK * PAGE
    if PER_HEAD:
        i_kv = i_x // KV_GROUP
        h0 = i_x
    else:
        i_kv = i_x
        h0 = i_x * KV_GROUP
    seq_len = tl.load(seq_lens + i_b)
    if DENSE:  # clamped to the page-table width (n_slots): a grown sequence is never read past it
        n_valid = tl.cdiv(seq_len, PAGE)
        if STATUS:
            tl.atomic_or(status, 1, mask=n_valid > n_slots)
        n_valid = tl.minimum(n_valid, n_slots)
    else:
        # the split range comes from the row width alone (slots past the sequence hold -1),
        # so no load waits for seq_len: the row, its physical ids and seq_len load together
        n_valid = n_slots
    per_split = tl.cdiv(tl.cdiv(n_valid, num_splits), PAGES_PER_BLOCK) * PAGES_PER_BLOCK
    lo = i_s * per_split
    hi = tl.minimum(lo + per_split, n_valid)

    o_h = tl.arange(0, BLOCK_H)
    m_h = o_h < GROUP
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    p_q = q + i_b.to(tl.int64) * stride_qb + (h0 + o_h)[:, None] * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_h[:, None] & m_d[None, :], other=0.0)  # [BLOCK_H, BLOCK_D]
    if UPCAST:
        b_q = b_q.to(tl.float32)

    o_pb = tl.arange(0, PAGES_PER_BLOCK)
    o_t = tl.arange(0, PAGE)
    p_sel = sel + i_b.to(tl.int64) * stride_sb + i_x * stride_sh
    p_sphys = sel_phys + i_b.to(tl.int64) * stride_sb + i_x * stride_sh
    p_tab = page_table + i_b.to(tl.int64) * stride_tb
    p_kv = i_kv * stride_kh + o_t[None, :, None] * stride_kt + o_d[None, None, :]  # [1, PAGE, BLOCK_D]

    b_m = tl.zeros([BLOCK_H], dtype=tl.float32) - 1.0e30
    b_l = tl.zeros([BLOCK_H], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    if STATIC_ITERS > 0:
        # sparse rows: the split's iteration count is known at compile time; unrolled, the
        # iterations' page-id and K/V loads have no loop-carried dependence and can be
        # issued ahead of the previous iteration's math
        for it in tl.static_range(STATIC_ITERS):
            b_m, b_l, b_acc = _decode_block(
                lo + it * PAGES_PER_BLOCK,
                hi,
                b_q,
                b_m,
                b_l,
                b_acc,
                p_sel,
                p_sphys,
                p_tab,
                k_cache,
                v_cache,
                p_kv,
                seq_len,
                qk_scale,
                stride_kp,
                m_d,
                o_pb,
                o_t,
                PAGE,
                BLOCK_D,
                BLOCK_N,
                PAGES_PER_BLOCK,
                DENSE,
                HAS_PHYS,
                UPCAST,
            )
    else:
        for start in range(lo, hi, PAGES_PER_BLOCK):
            b_m, b_l, b_acc = _decode_block(
                start,
                hi,
                b_q,
                b_m,
                b_l,
                b_acc,
                p_sel,
                p_sphys,
                p_tab,
                k_cache,
                v_cache,
                p_kv,
                seq_len,
                qk_scale,
                stride_kp,
                m_d,
                o_pb,
                o_t,
                PAGE,
                BLOCK_D,
                BLOCK_N,
                PAGES_PER_BLOCK,
                DENSE,
                HAS_PHYS,
                UPCAST,
            )

    b_o = b_acc / tl.maximum(b_l, 1e-30)[:, None]
    heads = (h0 + o_h).to(tl.int64)
    if SINGLE_SPLIT:
        p_out = out + i_b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + o_d[None, :]
        tl.store(p_out, b_o.to(out.dtype.element_ty), mask=m_h[:, None] & m_d[None, :])
    else:
        p_o = o_part + i_b.to(tl.int64) * stride_pb + heads[:, None] * stride_ph + i_s * stride_ps
        tl.store(p_o + o_d[None, :], b_o, mask=m_h[:, None] & m_d[None, :])
        lse = _split_lse(b_m, b_l)
        p_lse = lse_part + i_b.to(tl.int64) * stride_lb + heads * stride_lh
        tl.store(p_lse + i_s, lse, mask=m_h)
        if FUSE_COMBINE:
            # Split-K "last block merges": every thread's stores are ordered before one
            # acq_rel arrival (bar.sync + a cumulative release at GPU scope); the split
            # that arrives last reads all partials from L2 (.cg) and writes the output,
            # then rearms the counter for the next call.
            tl.debug_barrier()
            p_cnt = counters + i_b * tl.num_programs(1) + i_x
            arrived = tl.atomic_add(p_cnt, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                o_s = tl.arange(0, BLOCK_S)
                m_s = o_s < num_splits
                for g in tl.static_range(GROUP):  # unrolled: the heads' loads overlap
                    h = (h0 + g).to(tl.int64)
                    b_lse = tl.load(
                        lse_part + i_b.to(tl.int64) * stride_lb + h * stride_lh + o_s,
                        mask=m_s,
                        other=float("-inf"),
                        cache_modifier=".cg",
                    )  # [BLOCK_S]
                    b_os = tl.load(
                        o_part + i_b.to(tl.int64) * stride_pb + h * stride_ph + o_s[:, None] * stride_ps + o_d[None, :],
                        mask=m_s[:, None] & m_d[None, :],
                        other=0.0,
                        cache_modifier=".cg",
                    )  # [BLOCK_S, BLOCK_D]
                    w = _split_weights(b_lse, m_s)
                    res = tl.sum(w[:, None] * b_os, axis=0) / tl.maximum(tl.sum(w, axis=0), 1e-30)
                    tl.store(
                        out + i_b.to(tl.int64) * stride_ob + h * stride_oh + o_d, res.to(out.dtype.element_ty), mask=m_d
                    )
                tl.atomic_xchg(p_cnt, 0)


@triton.jit
def _combine_kernel(
    o_part,  # [B, Hq, S, D] float32
    lse_part,  # [B, Hq, S] float32 (log2 units)
    out,  # [B, Hq, D]
    NUM_SPLITS,
    stride_pb,
    stride_ph,
    stride_ps,
    stride_lb,
    stride_lh,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL: wait for the split kernel first
):
    if PDL:
        gdc_wait()
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < NUM_SPLITS
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    b_lse = tl.load(lse_part + i_b.to(tl.int64) * stride_lb + i_h * stride_lh + o_s, mask=m_s, other=float("-inf"))
    w = _split_weights(b_lse, m_s)  # [BLOCK_S]
    p_o = o_part + i_b.to(tl.int64) * stride_pb + i_h * stride_ph + o_s[:, None] * stride_ps + o_d[None, :]
    # every split's partial is read (a weight-0 split holding NaN still makes the row NaN, as in dense attention)
    b_o = tl.load(p_o, mask=m_s[:, None] & m_d[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    res = tl.sum(b_o * w[:, None], axis=0) / tl.maximum(tl.sum(w, axis=0), 1e-30)
    tl.store(out + i_b.to(tl.int64) * stride_ob + i_h * stride_oh + o_d, res.to(out.dtype.element_ty), mask=m_d)


def decode_workspace(
    B: int, Hq: int, num_splits: int, D: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split-K buffers: partial outputs [B, Hq, S, D], log-sum-exps [B, Hq, S] and the
    arrival counters [B, Hq] of the fused combine (zeroed here; each call leaves them zero)."""
    return (
        torch.empty(B, Hq, num_splits, D, dtype=torch.float32, device=device),
        torch.empty(B, Hq, num_splits, dtype=torch.float32, device=device),
        torch.zeros(B, Hq, dtype=torch.int32, device=device),
    )


def decode_num_splits(config: DecodeConfig, B: int, Hq: int, Hkv: int, per_head: bool, n_slots: int, device) -> int:
    head_programs = Hq if per_head else Hkv
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return choose_num_splits(config, B, head_programs, n_slots, num_sms)


def paged_decode(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    v_cache: torch.Tensor,
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    selected: torch.Tensor | None = None,  # [B, Hsel, K] int32; None = dense over all pages
    sm_scale: float | None = None,
    config: DecodeConfig | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    selected_phys: torch.Tensor | None = None,  # [B, Hsel, K] physical ids of ``selected`` (skips a lookup)
    status: torch.Tensor | None = None,  # [1] int32: bit 0 set when a sequence outgrew the page table (dense)
) -> torch.Tensor:
    """Launch split-K decode (+ combine). Inputs are assumed validated (see questkern.api).
    Dense decode reads a sequence longer than the page table up to its width only."""
    B, Hq, D = q.shape
    _, Hkv, PAGE, _ = k_cache.shape
    G = Hq // Hkv
    cfg = config or DecodeConfig()
    dense = selected is None
    per_head = (not dense) and selected.shape[1] == Hq and G > 1
    n_slots = page_table.shape[1] if dense else min(selected.shape[2], page_table.shape[1])
    S = num_splits or decode_num_splits(cfg, B, Hq, Hkv, per_head, n_slots, q.device)
    if out is None:
        out = torch.empty_like(q)
    if S > 1 and workspace is None:
        workspace = decode_workspace(B, Hq, S, D, q.device)
    o_part, lse_part, counters = workspace if S > 1 else (out, out, out)
    group = 1 if per_head else G
    block_h = max(16, next_pow2(group))  # tl.dot needs >= 16 rows: pad the group with masked heads
    if cfg.pages_per_block * PAGE < 16:
        raise ValueError(
            f"DecodeConfig.pages_per_block * page_size must be >= 16 (tl.dot), got {cfg.pages_per_block} x {PAGE}"
        )
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    sel = selected if not dense else page_table  # placeholder pointer when dense
    grid = (B, Hq if per_head else Hkv, S)
    pdl = use_pdl(q.device)  # each launch may overlap the previous kernel's tail (see _details.use_pdl)
    # sparse rows have a fixed width, so each split's block count is a compile-time
    # constant; unroll it when short (dense splits follow seq_len: a runtime loop)
    blocks_per_split = -(-(-(-n_slots // S)) // cfg.pages_per_block)
    static_iters = blocks_per_split if (not dense and blocks_per_split <= 2) else 0  # more spills (runs/008)
    _decode_split_kernel[grid](
        q,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        sel,
        sel if selected_phys is None else selected_phys,
        o_part,
        lse_part,
        out,
        counters,
        scale * _LOG2E,
        n_slots,
        S,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        page_table.stride(0),
        sel.stride(0),
        sel.stride(1),
        *(o_part.stride()[:3] if S > 1 else (0, 0, 0)),
        *(lse_part.stride()[:2] if S > 1 else (0, 0)),
        out.stride(0),
        out.stride(1),
        PAGE=PAGE,
        HEAD_DIM=D,
        BLOCK_D=next_pow2(D),
        GROUP=group,
        BLOCK_H=block_h,
        PER_HEAD=per_head,
        KV_GROUP=G,
        PAGES_PER_BLOCK=cfg.pages_per_block,
        SINGLE_SPLIT=S == 1,
        STATIC_ITERS=static_iters,
        FUSE_COMBINE=cfg.fuse_combine,
        BLOCK_S=next_pow2(S),
        DENSE=dense,
        HAS_PHYS=selected_phys is not None,
        UPCAST=dot_upcast(q.dtype),
        PDL=pdl,
        status=seq_lens if status is None else status,
        STATUS=status is not None and dense,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        launch_pdl=pdl,
    )
    if S > 1 and not cfg.fuse_combine:
        _combine_kernel[(B, Hq)](
            o_part,
            lse_part,
            out,
            S,
            o_part.stride(0),
            o_part.stride(1),
            o_part.stride(2),
            lse_part.stride(0),
            lse_part.stride(1),
            out.stride(0),
            out.stride(1),
            HEAD_DIM=D,
            BLOCK_D=next_pow2(D),
            BLOCK_S=next_pow2(S),
            PDL=pdl,
            num_warps=cfg.combine_warps,
            launch_pdl=pdl,
        )
    return out

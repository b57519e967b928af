"""The fused Quest step: page scores, then exact top-K and sparse attention in one launch.

The classic step is four dependent launches (score stream, a top-K merge with one program
per selection row, split-K decode, combine); at batch 1-8 each is a few waves of short
programs or, for the merge, 8-32 programs on 132 SMs. Here:

1. ``_select_score_kernel`` (questkern.ops.select) streams every page's metadata and writes
   each selection row's page scores, ``scores [B, rows, W]`` (slot p = logical page p).
2. ``_topk_decode_kernel``, grid ``(splits, rows, B)``, launched with PDL so that it is
   resident before stage 1 ends: every program of a row loads the row's scores (from L2),
   finds the row's exact top-K itself (the same ``_topk_mask`` / ``_topk_mask_radix`` as
   select, same tie rule: naive.py), writes its share of the selection — slots
   ``[i_s * SLOTS, (i_s + 1) * SLOTS)`` of the ascending row, the last page included —
   and attends to exactly those pages (split-K, online softmax in float32). The row's
   splits are merged by the last program to finish (``fuse_combine``) or by the decode's
   combine launch.

So the top-K runs on as many programs as the decode (``splits x rows x B``) instead of
``rows x B``, in parallel with no launch between selection and attention. Work is
balanced: each program attends to the same number of selected pages whatever the
distribution of the selection over the context.

With ``persistent`` both stages run in one launch: programs score tiles first, meet at a
grid-wide barrier (an arrival counter and a generation flag in global memory; every
program must be resident, so the launcher only takes this path when the grid fits the
SMs), then run stage 2. The Triton interpreter runs programs one after another, so there
the two stages are always two launches.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from questkern._details import dot_upcast, is_interpreter, use_pdl
from questkern.config import StepConfig, choose_step_splits, next_pow2
from questkern.ops.decode.kernel import _LOG2E, _combine_kernel, _decode_block, _split_lse, _split_weights_rows
from questkern.ops.select.kernel import (
    _finite_heads,
    _page_scores,
    _planned_pages,
    _group_scores,
    _select_score_kernel,
    _topk_mask,
    _topk_mask_radix,
    select_block_g,
)


@triton.jit
def _grid_barrier(p_count, p_gen, n_progs):
    """Every program of the launch waits here until all have arrived (sense reversal: the
    last to arrive rearms the counter and bumps the generation the others spin on)."""
    tl.debug_barrier()
    gen = tl.atomic_add(p_gen, 0, sem="acquire", scope="gpu")
    arrived = tl.atomic_add(p_count, 1, sem="acq_rel", scope="gpu")
    if arrived == n_progs - 1:
        tl.atomic_xchg(p_count, 0, sem="relaxed", scope="gpu")
        tl.atomic_add(p_gen, 1, sem="release", scope="gpu")
    else:
        while tl.atomic_add(p_gen, 0, sem="acquire", scope="gpu") == gen:
            pass
    tl.debug_barrier()


@triton.jit
def _score_tiles(
    i_p,
    n_progs,
    q,
    kmin,
    kmax,
    page_table,
    seq_lens,
    scores,
    K,
    max_pages,
    num_pages,
    n_chunks,
    n_rows,
    batch,
    stride_qb,
    stride_qh,
    stride_mp,
    stride_mh,
    stride_tb,
    stride_cb,
    stride_ch,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    SHARED: tl.constexpr,
    AGG_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Persistent stage 1: program ``i_p`` of ``n_progs`` scores tiles i_p, i_p + n_progs,
    ... of the flattened (batch, KV head, tile) space (the score stream's work, spread over
    the whole grid)."""
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    n_work = batch * n_rows * n_chunks
    for w in range(i_p, n_work, n_progs):
        i_c = w % n_chunks
        i_h = (w // n_chunks) % n_rows
        i_b = w // (n_chunks * n_rows)
        p_tab = page_table + i_b.to(tl.int64) * stride_tb
        n_pages = tl.minimum(tl.cdiv(tl.load(seq_lens + i_b), PAGE), max_pages)
        o_c = i_c * CHUNK + tl.arange(0, CHUNK)
        phys = tl.load(p_tab + o_c, mask=o_c < max_pages, other=0)
        phys = tl.minimum(tl.maximum(phys, 0), num_pages - 1).to(tl.int64)
        m_c = o_c < n_pages - 1
        p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh
        p_meta = phys[:, None] * stride_mp + i_h * stride_mh
        b_s = _page_scores(
            q, kmin, kmax, p_q, p_meta, m_g, m_c & (n_pages > K), HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE, 1, 0
        )  # SUB = 1: hierarchical metadata is refused by quest_step
        p_row = scores + i_b.to(tl.int64) * stride_cb
        if SHARED:
            m_gf = _finite_heads(p_q, m_g, HEAD_DIM, BLOCK_D, BLOCK_G)  # a non-finite query head is left out
            tl.store(p_row + i_h * stride_ch + o_c, _group_scores(b_s, m_gf, m_c, AGG_MAX), mask=o_c < n_chunks * CHUNK)
        else:
            for g in tl.static_range(GROUP):
                tl.store(
                    p_row + (i_h * GROUP + g) * stride_ch + o_c,
                    tl.sum(tl.where(o_g[:, None] == g, b_s, 0.0), axis=0),
                    mask=o_c < n_chunks * CHUNK,
                )


@triton.jit
def _topk_decode_kernel(
    q,  # [B, Hq, D]
    kmin,
    kmax,  # [P, Hkv, D] (read by the persistent stage 1 only)
    k_cache,
    v_cache,  # [P, Hkv, PAGE, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    scores,  # [B, rows, W] float32: page scores of every candidate page (slot p = page p)
    sel,  # [B, rows, K] int32: the selection, written here (ascending, last page, -1 padded)
    sel_phys,  # [B, rows, K] int32: its physical page ids
    o_part,  # [B, Hq, S, D] float32 partial outputs (S > 1)
    lse_part,  # [B, Hq, S] float32 log2-sum-exp of each partial
    out,  # [B, Hq, D]
    counters,  # [B, rows] int32 arrival counters of the fused combine, zero between calls
    barrier,  # [2] int32: the persistent grid barrier's counter and generation
    qk_scale,  # sm_scale * log2(e)
    K,
    W,
    max_pages,
    num_pages,
    num_splits,
    n_chunks,
    num_kv_heads,
    stride_qb,
    stride_qh,
    stride_mp,
    stride_mh,
    stride_kp,
    stride_kh,
    stride_kt,
    stride_tb,
    stride_cb,
    stride_ch,
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
    GROUP: tl.constexpr,  # query heads served per program (1 in per_head mode)
    BLOCK_H: tl.constexpr,  # GROUP padded to tl.dot's 16 rows
    PER_HEAD: tl.constexpr,  # a selection row per query head (else per KV head)
    KV_GROUP: tl.constexpr,  # Hq // Hkv
    PAGES_PER_BLOCK: tl.constexpr,
    SLOTS: tl.constexpr,  # selection slots per split (a multiple of PAGES_PER_BLOCK)
    BLOCK_SLOTS: tl.constexpr,  # next_pow2(SLOTS)
    BLOCK_W: tl.constexpr,  # next_pow2(candidate pages of the longest row)
    PHYS_UPFRONT: tl.constexpr,  # load the whole page-table row with the scores (else gather after top-K)
    SINGLE_SPLIT: tl.constexpr,
    FUSE_COMBINE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    RADIX: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,  # launched with PDL after the score stream: wait for it before reading scores
    PERSISTENT: tl.constexpr,  # stage 1 here too, then a grid barrier
    # persistent stage 1 only:
    SCORE_BLOCK_D: tl.constexpr,
    SCORE_BLOCK_G: tl.constexpr,
    SHARED: tl.constexpr,
    AGG_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
    status=None,  # [1] int32 plan status: bit 0 = a sequence grew past the planned width (STATUS)
    STATUS: tl.constexpr = False,
):
    i_s, i_x, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if PER_HEAD:
        i_kv = i_x // KV_GROUP
        h0 = i_x
    else:
        i_kv = i_x
        h0 = i_x * KV_GROUP
    # everything below up to the scores was written before stage 1 started: load it while
    # stage 1 still runs
    seq_len = tl.load(seq_lens + i_b)
    n_pages = _planned_pages(seq_len, PAGE, max_pages, status, STATUS)  # never past the planned page-table width
    p_tab = page_table + i_b.to(tl.int64) * stride_tb
    o_h = tl.arange(0, BLOCK_H)
    m_h = o_h < GROUP
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    b_q = tl.load(
        q + i_b.to(tl.int64) * stride_qb + (h0 + o_h)[:, None] * stride_qh + o_d[None, :],
        mask=m_h[:, None] & m_d[None, :],
        other=0.0,
    )  # [BLOCK_H, BLOCK_D]
    if UPCAST:
        b_q = b_q.to(tl.float32)
    o_w = tl.arange(0, BLOCK_W)
    m_cand = o_w < n_pages - 1  # candidates: every page but the last
    if PHYS_UPFRONT:
        b_phys = tl.load(p_tab + o_w, mask=m_cand, other=0)  # [BLOCK_W]
    last_phys = tl.load(p_tab + n_pages - 1)

    if PERSISTENT:
        n_progs = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
        i_p = (i_b * tl.num_programs(1) + i_x) * tl.num_programs(0) + i_s
        _score_tiles(
            i_p,
            n_progs,
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            scores,
            K,
            max_pages,
            num_pages,
            n_chunks,
            num_kv_heads,
            tl.num_programs(2),
            stride_qb,
            stride_qh,
            stride_mp,
            stride_mh,
            stride_tb,
            stride_cb,
            stride_ch,
            PAGE,
            HEAD_DIM,
            SCORE_BLOCK_D,
            KV_GROUP,
            SCORE_BLOCK_G,
            SHARED,
            AGG_MAX,
            CHUNK,
            IEEE,
        )
        _grid_barrier(barrier, barrier + 1, n_progs)
    elif PDL:
        gdc_wait()  # the score stream has finished and its scores are visible
        gdc_launch_dependents()  # the combine may launch now

    # ---- the row's exact top-K (every program of the row computes the same one)
    sparse = n_pages > K
    p_srow = scores + i_b.to(tl.int64) * stride_cb + i_x * stride_ch
    if sparse:
        b_sc = tl.load(p_srow + o_w, mask=m_cand, other=float("-inf"), cache_modifier=".cg")  # [BLOCK_W]
        if RADIX:
            m_sel = _topk_mask_radix(b_sc, m_cand, K - 1)
        else:
            m_sel = _topk_mask(b_sc, m_cand, K - 1)
    else:  # a short sequence attends to every page
        m_sel = m_cand
    pos = tl.cumsum(m_sel.to(tl.int32), axis=0) - 1  # [BLOCK_W] slot of each selected page
    n_sel = tl.sum(m_sel.to(tl.int32), axis=0)  # the last page goes to slot n_sel

    # ---- this split's share: slots [lo, hi) of the row
    lo = i_s * SLOTS
    hi = tl.minimum(lo + SLOTS, K)
    p_sel = sel + i_b.to(tl.int64) * stride_sb + i_x * stride_sh
    p_sphys = sel_phys + i_b.to(tl.int64) * stride_sb + i_x * stride_sh
    m_mine = m_sel & (pos >= lo) & (pos < hi)
    if not PHYS_UPFRONT:
        b_phys = tl.load(p_tab + o_w, mask=m_mine, other=0)
    tl.store(p_sel + pos, o_w, mask=m_mine)
    tl.store(p_sphys + pos, b_phys, mask=m_mine)
    o_j = lo + tl.arange(0, BLOCK_SLOTS)  # [BLOCK_SLOTS]
    m_j = o_j < hi
    tl.store(p_sel + o_j, tl.where(o_j == n_sel, n_pages - 1, -1), mask=m_j & (o_j >= n_sel))
    tl.store(p_sphys + o_j, tl.where(o_j == n_sel, last_phys, -1), mask=m_j & (o_j >= n_sel))
    tl.debug_barrier()  # this program's stores are visible to all its threads

    # ---- attend to the share (split-K partial, online softmax in float32)
    BLOCK_N: tl.constexpr = PAGES_PER_BLOCK * PAGE
    o_pb = tl.arange(0, PAGES_PER_BLOCK)
    o_t = tl.arange(0, PAGE)
    p_kv = i_kv * stride_kh + o_t[None, :, None] * stride_kt + o_d[None, None, :]  # [1, PAGE, BLOCK_D]
    b_m = tl.zeros([BLOCK_H], dtype=tl.float32) - 1.0e30
    b_l = tl.zeros([BLOCK_H], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for it in tl.static_range(SLOTS // PAGES_PER_BLOCK):
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
            False,
            True,
            UPCAST,
        )

    b_o = b_acc / tl.maximum(b_l, 1e-30)[:, None]
    heads = (h0 + o_h).to(tl.int64)
    m_out = m_h[:, None] & m_d[None, :]
    if SINGLE_SPLIT:
        tl.store(
            out + i_b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + o_d[None, :],
            b_o.to(out.dtype.element_ty),
            mask=m_out,
        )
    else:
        p_o = o_part + i_b.to(tl.int64) * stride_pb + heads[:, None] * stride_ph + i_s * stride_ps
        tl.store(p_o + o_d[None, :], b_o, mask=m_out)
        lse = _split_lse(b_m, b_l)  # NaN for a NaN partial: the combine keeps it (README)
        tl.store(lse_part + i_b.to(tl.int64) * stride_lb + heads * stride_lh + i_s, lse, mask=m_h)
        if FUSE_COMBINE:  # the last split of the row to finish merges all of them
            tl.debug_barrier()
            p_cnt = counters + i_b * tl.num_programs(1) + i_x
            arrived = tl.atomic_add(p_cnt, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                o_s = tl.arange(0, BLOCK_S)
                m_s = o_s < num_splits
                p_l = lse_part + i_b.to(tl.int64) * stride_lb + heads[:, None] * stride_lh + o_s[None, :]
                b_lse = tl.load(
                    p_l, mask=m_h[:, None] & m_s[None, :], other=float("-inf"), cache_modifier=".cg"
                )  # [BLOCK_H, BLOCK_S]
                b_w = _split_weights_rows(b_lse, m_s[None, :])  # [BLOCK_H, BLOCK_S]
                b_res = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
                for s in range(0, num_splits):
                    b_os = tl.load(
                        o_part
                        + i_b.to(tl.int64) * stride_pb
                        + heads[:, None] * stride_ph
                        + s * stride_ps
                        + o_d[None, :],
                        mask=m_out,
                        other=0.0,
                        cache_modifier=".cg",
                    )  # [BLOCK_H, BLOCK_D]
                    b_ws = tl.sum(tl.where(o_s[None, :] == s, b_w, 0.0), axis=1)  # [BLOCK_H]
                    b_res += b_ws[:, None] * b_os
                b_res = b_res / tl.maximum(tl.sum(b_w, axis=1), 1e-30)[:, None]
                tl.store(
                    out + i_b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + o_d[None, :],
                    b_res.to(out.dtype.element_ty),
                    mask=m_out,
                )
                tl.atomic_xchg(p_cnt, 0)


# ----------------------------------------------------------------------------- launcher


def step_plan(batch: int, rows: int, max_pages: int, k_pages: int, config: StepConfig, num_sms: int) -> dict:
    """Launch geometry of the fused step: stage-1 tiles and score-row width, stage-2 splits
    and slots per split (``SLOTS``, a multiple of ``pages_per_block``)."""
    n_chunks = max(1, -(-max(1, max_pages - 1) // config.chunk_pages))
    want = choose_step_splits(config, batch, rows, k_pages, num_sms)
    per = -(-k_pages // want)
    slots = -(-per // config.pages_per_block) * config.pages_per_block
    splits = -(-k_pages // slots)
    return dict(
        n_chunks=n_chunks,
        width=n_chunks * config.chunk_pages,
        splits=splits,
        slots=slots,
        block_w=next_pow2(max(1, max_pages - 1)),
    )


def step_workspace(batch: int, num_q_heads: int, rows: int, head_dim: int, geometry: dict, device):
    """Buffers of the fused step: score rows (and the score stream's id/phys rows, unused),
    split-K partials, fused-combine counters, the persistent barrier."""
    w, s = geometry["width"], geometry["splits"]
    return dict(
        scores=torch.empty(batch, rows, w, dtype=torch.float32, device=device),
        cand_idx=torch.empty(batch, rows, w, dtype=torch.int32, device=device),
        o_part=torch.empty(batch, num_q_heads, s, head_dim, dtype=torch.float32, device=device) if s > 1 else None,
        lse_part=torch.empty(batch, num_q_heads, s, dtype=torch.float32, device=device) if s > 1 else None,
        counters=torch.zeros(batch, rows, dtype=torch.int32, device=device),
        barrier=torch.zeros(2, dtype=torch.int32, device=device),
    )


def quest_step(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D]
    kmax: torch.Tensor,  # [P, Hkv, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    v_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    k_pages: int,
    *,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
    config: StepConfig | None = None,
    out: torch.Tensor | None = None,  # [B, Hq, D]
    selected: torch.Tensor | None = None,  # [B, rows, k_pages] int32, written
    selected_phys: torch.Tensor | None = None,  # [B, rows, k_pages] int32, written
    workspace: dict | None = None,
    num_sms: int | None = None,
    status: torch.Tensor | None = None,  # [1] int32: bit 0 set when a sequence outgrew the page table
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Quest decode step (selection + sparse attention) in two launches (one when
    persistent). Returns (out, selected). Inputs are assumed validated (questkern.api)."""
    if kmin.dim() == 4:
        raise ValueError(
            "quest_step (path='fused') does not take hierarchical metadata yet (kmin is 4-D "
            f"{tuple(kmin.shape)}, sub-pages); use path='classic'"
        )
    B, Hq, D = q.shape
    P, Hkv, PAGE, _ = k_cache.shape
    G = Hq // Hkv
    per_head = gqa_mode == "per_head" and G > 1
    rows = Hq if per_head else Hkv
    cfg = config or StepConfig()
    max_pages = page_table.shape[1]
    if num_sms is None:
        num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else 4
    geo = step_plan(B, rows, max_pages, k_pages, cfg, num_sms)
    if workspace is None:
        workspace = step_workspace(B, Hq, rows, D, geo, q.device)
    if out is None:
        out = torch.empty_like(q)
    if selected is None:
        selected = torch.empty(B, rows, k_pages, dtype=torch.int32, device=q.device)
    if selected_phys is None:
        selected_phys = torch.empty_like(selected)
    S = geo["splits"]
    scores, cand_idx = workspace["scores"], workspace["cand_idx"]
    o_part = workspace["o_part"] if S > 1 else out
    lse_part = workspace["lse_part"] if S > 1 else out
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)) * _LOG2E
    block_d = min(cfg.block_d, D)
    block_g = select_block_g(G)
    ieee = kmin.dtype == torch.float32 or dot_upcast(q.dtype)
    pdl = use_pdl(q.device)
    grid = (S, rows, B)
    persistent = cfg.persistent and not is_interpreter() and S * rows * B <= num_sms
    if not persistent:
        progs = -(-geo["n_chunks"] // cfg.tiles_per_program)
        _select_score_kernel[(progs, Hkv, B)](
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            cand_idx,
            scores,
            cand_idx,
            selected,
            selected_phys,
            workspace["counters"],
            k_pages,
            max_pages,
            P,
            geo["n_chunks"],
            q.stride(0),
            q.stride(1),
            kmin.stride(0),
            kmin.stride(1),
            page_table.stride(0),
            scores.stride(0),
            scores.stride(1),
            selected.stride(0),
            selected.stride(1),
            PAGE=PAGE,
            HEAD_DIM=D,
            BLOCK_D=block_d,
            GROUP=G,
            BLOCK_G=block_g,
            SHARED=not per_head,
            AGG_MAX=aggregate == "max",
            CHUNK=cfg.chunk_pages,
            IEEE=ieee,
            WRITE_PHYS=False,
            NUM_STAGES=cfg.score_stages,
            FUSED_MERGE=False,
            BLOCK_M=16,
            FILL=16,
            RADIX=False,
            TRIGGER=pdl,
            num_warps=cfg.score_warps,
        )
    _topk_decode_kernel[grid](
        q,
        kmin,
        kmax,
        k_cache,
        v_cache,
        page_table,
        seq_lens,
        scores,
        selected,
        selected_phys,
        o_part,
        lse_part,
        out,
        workspace["counters"],
        workspace["barrier"],
        scale,
        k_pages,
        geo["width"],
        max_pages,
        P,
        S,
        geo["n_chunks"],
        Hkv,
        q.stride(0),
        q.stride(1),
        kmin.stride(0),
        kmin.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        page_table.stride(0),
        scores.stride(0),
        scores.stride(1),
        selected.stride(0),
        selected.stride(1),
        *(o_part.stride()[:3] if S > 1 else (0, 0, 0)),
        *(lse_part.stride()[:2] if S > 1 else (0, 0)),
        out.stride(0),
        out.stride(1),
        PAGE=PAGE,
        HEAD_DIM=D,
        BLOCK_D=next_pow2(D),
        GROUP=1 if per_head else G,
        BLOCK_H=max(16, next_pow2(G)),
        PER_HEAD=per_head,
        KV_GROUP=G,
        PAGES_PER_BLOCK=cfg.pages_per_block,
        SLOTS=geo["slots"],
        BLOCK_SLOTS=next_pow2(geo["slots"]),
        BLOCK_W=geo["block_w"],
        PHYS_UPFRONT=geo["block_w"] <= 4096,
        SINGLE_SPLIT=S == 1,
        FUSE_COMBINE=cfg.fuse_combine and S > 1,
        BLOCK_S=next_pow2(S),
        RADIX=cfg.topk == "radix",
        UPCAST=dot_upcast(q.dtype),
        PDL=pdl and not persistent,
        PERSISTENT=persistent,
        SCORE_BLOCK_D=block_d,
        SCORE_BLOCK_G=block_g,
        SHARED=not per_head,
        AGG_MAX=aggregate == "max",
        CHUNK=cfg.chunk_pages,
        IEEE=ieee,
        status=seq_lens if status is None else status,
        STATUS=status is not None,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        launch_pdl=pdl and not persistent,
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
    return out, selected

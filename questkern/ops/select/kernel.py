"""Fused Quest estimate + top-K page selection (see naive.py for the exact rules).

One launch when one tile of ``chunk_pages`` pages covers every context in the batch
(page scores never leave registers); otherwise two: stage 1 writes (score, page)
candidates, then a merge launch takes each row's top K. Stage 1 is the score stream
(``_select_score_kernel``) when tiles are smaller than K — every page is a candidate,
so it only scores — and the tile kernel with a per-tile top-K (only each tile's K best
written) when tiles hold at least K pages. Either can instead merge in its last program
of a row (``fused_merge``; slower on the H100, off by default).

Top-K without sorting: scores are mapped to order-preserving integer keys and each
row's K-th largest key is found two bits per step (counts by reduction), only over the bits
where the row's keys differ and only until exactly K keys lie at or above the prefix;
entries above it are taken, then entries equal to it from the lowest page index up.
The score of a page is computed as ``dot(relu(q), kmax) + dot(min(q, 0), kmin)``,
which equals ``sum_c max(q_c kmin_c, q_c kmax_c)`` term by term: on tensor cores for a
GQA group, as products and a row sum for one query head; with metadata in the key
dtype (or float8_e5m2, upcast to it) every product is exact in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from questkern._details import dot_upcast, use_pdl
from questkern.config import SelectConfig, next_pow2
from questkern.ops.metadata.kernel import sub_args


@triton.jit
def _sum3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _count_max_min(a0, a1, a2, b0, b1, b2):
    return a0 + b0, tl.maximum(a1, b1), tl.minimum(a2, b2)


@triton.jit
def _planned_pages(seq_len, PAGE: tl.constexpr, max_pages, status, STATUS: tl.constexpr):
    """Pages of a sequence, clamped to the page-table width planned (a sequence that grew
    past it is read no further: never out of bounds); with STATUS, bit 0 of the plan's
    ``status`` flag is set when that happened (``QuestDecode.check``)."""
    n = tl.cdiv(seq_len, PAGE)
    if STATUS:
        tl.atomic_or(status, 1, mask=n > max_pages)
    return tl.minimum(n, max_pages)


@triton.jit
def _nan_to_inf(x):
    """NaN rule (README): a NaN page score ranks as +inf (a page whose metadata holds a
    non-finite key is always selected; ties still go to the lower page index)."""
    return tl.where(x != x, float("inf"), x)


@triton.jit
def _finite_heads(p_q, m_g, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr):
    """[BLOCK_G] query heads (rows ``p_q``, [BLOCK_G, 1]) whose every component is finite:
    a head holding NaN or +-inf is left out of its group's shared score (README)."""
    bad = tl.zeros([BLOCK_G], dtype=tl.int32)
    for d0 in tl.static_range(0, HEAD_DIM, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_q = tl.load(p_q + o_d[None, :], mask=m_g[:, None], other=0.0).to(tl.float32)  # [BLOCK_G, BLOCK_D]
        bad = tl.maximum(bad, tl.max(((b_q != b_q) | (tl.abs(b_q) == float("inf"))).to(tl.int32), axis=1))
    return m_g & (bad == 0)


@triton.jit
def _topk_mask(scores, valid, k):
    """[N] scores, [N] valid -> mask of the k best valid entries; ties toward the lower index.

    k may exceed the number of valid entries. Scores map to order-preserving int32 keys
    (invalid entries to INT_MIN, below every valid key); the threshold ``thr`` = the k-th
    largest key is built in offset binary (``u = key ^ INT_MIN``), two bits per step
    (three counts in one block-wide reduction), but only over the bits where the row's
    keys differ (those above the highest bit where the smallest and largest valid key
    differ are shared by every key) and only until ``count(key >= thr) == k`` (then the
    keys >= thr are the answer, with no tie at the boundary). Typical rows of page
    scores need ~7 reductions in all, not 16-32.
    (1-D on purpose: Triton 3.6 fails to lower a scan along the inner axis of some 2-D layouts.)
    """
    INT_MIN: tl.constexpr = -2147483647 - 1
    INT_MAX: tl.constexpr = 2147483647
    s = tl.where(valid, _nan_to_inf(scores), float("-inf")) + 0.0  # + 0.0 folds -0.0 into +0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # [N] int32, same order as the scores
    key = tl.where(valid, key, INT_MIN)
    n_valid, hi, lo = tl.reduce((valid.to(tl.int32), key, tl.where(valid, key, INT_MAX)), 0, _count_max_min)
    diff = hi ^ lo  # valid keys can differ only at or below its highest set bit
    # highest set bit by the float exponent (rounding up can overestimate by one: harmless)
    top = tl.where(diff < 0, 31, (diff.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127)
    top = tl.maximum(top, -1)
    mask = tl.where(top >= 31, 0, -1 << tl.minimum(top + 1, 31))  # the shared high bits
    c_thr = n_valid  # count(key >= thr), thr = the shared prefix: every valid key
    bit = tl.where(n_valid > k, top, -1)  # k >= n_valid: every valid entry, no search
    thr_u = tl.where(n_valid > k, (hi ^ INT_MIN) & mask, 0)
    while (bit >= 0) & (c_thr != k):
        # bits `bit` and `bit - 1` at once (only `bit` when it is bit 0)
        sh = tl.maximum(bit - 1, 0)
        c1 = thr_u | (1 << sh)
        c2 = thr_u | (2 << sh)
        c3 = thr_u | (3 << sh)
        n1, n2, n3 = tl.reduce(
            (
                (key >= (c1 ^ INT_MIN)).to(tl.int32),
                (key >= (c2 ^ INT_MIN)).to(tl.int32),
                (key >= (c3 ^ INT_MIN)).to(tl.int32),
            ),
            0,
            _sum3,
        )
        n2 = tl.where(bit >= 1, n2, 0)
        n3 = tl.where(bit >= 1, n3, 0)
        thr_u = tl.where(n3 >= k, c3, tl.where(n2 >= k, c2, tl.where(n1 >= k, c1, thr_u)))
        c_thr = tl.where(n3 >= k, n3, tl.where(n2 >= k, n2, tl.where(n1 >= k, n1, c_thr)))
        bit -= 2
    thr = thr_u ^ INT_MIN
    if c_thr == k:  # no tie at the boundary: exactly the keys >= thr
        sel = key >= thr
    else:  # the keys above thr, then those equal to it from the lowest index up
        gt = key > thr
        eq = key == thr
        n_gt = tl.sum(gt.to(tl.int32), axis=0)
        rank = tl.cumsum(eq.to(tl.int32), axis=0)
        sel = gt | (eq & (rank <= k - n_gt))
    return sel & valid


@triton.jit
def _topk_mask_radix(scores, valid, k):
    """Same contract as ``_topk_mask``, by an 8-bit radix select: four histogram passes
    (``tl.histogram`` over the active entries) find the k-th largest key byte by byte."""
    s = tl.where(valid, _nan_to_inf(scores), float("-inf")) + 0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # [N] int32, same order as the scores
    u = key ^ (-2147483647 - 1)  # offset binary: byte-wise order of u == order of key
    k_rem = tl.minimum(k, tl.sum((key == key).to(tl.int32), axis=0))  # entries to take at or below the prefix
    active = key == key
    prefix = k_rem * 0
    o_b = tl.arange(0, 256)
    for p in tl.static_range(4):
        digit = (u >> (24 - 8 * p)) & 255
        hist = tl.histogram(digit, 256, mask=active)  # [256]
        suffix = tl.cumsum(hist, axis=0, reverse=True)  # entries with digit >= d
        d_star = tl.sum((suffix >= k_rem).to(tl.int32), axis=0) - 1
        k_rem = k_rem - tl.sum(tl.where(o_b > d_star, hist, 0), axis=0)
        active = active & (digit == d_star)
        prefix = prefix | (d_star << (24 - 8 * p))
    thr = prefix ^ (-2147483647 - 1)
    eq = key == thr
    rank = tl.cumsum(eq.to(tl.int32), axis=0)
    return ((key > thr) | (eq & (rank <= k_rem))) & valid


@triton.jit
def _emit_selection(p_row, p_prow, sel, ids, phys, n_pages, last_phys, K, FILL: tl.constexpr, WRITE_PHYS: tl.constexpr):
    """Write one row: selected ids ascending, then the last page, then -1 up to K.

    With WRITE_PHYS the physical page ids go to the same slots of ``p_prow`` (decode
    then needs no page-table lookup). Every slot is written by exactly one store.
    """
    sel_i = sel.to(tl.int32)
    pos = tl.cumsum(sel_i, axis=0) - 1
    n_sel = tl.sum(sel_i, axis=0)
    o_f = tl.arange(0, FILL)  # FILL = next_pow2(K): one block covers the row
    m_fill = (o_f > n_sel) & (o_f < K)
    tl.store(p_row + pos, ids, mask=sel)
    tl.store(p_row + n_sel, n_pages - 1, mask=n_sel < K)
    tl.store(p_row + o_f, o_f * 0 - 1, mask=m_fill)
    if WRITE_PHYS:
        tl.store(p_prow + pos, phys.to(tl.int32), mask=sel)
        tl.store(p_prow + n_sel, last_phys, mask=n_sel < K)
        tl.store(p_prow + o_f, o_f * 0 - 1, mask=m_fill)


@triton.jit
def _tile_row(
    scores,
    valid,
    ids,
    phys,
    p_row,
    p_srow,
    p_prow,
    n_pages,
    last_phys,
    K,
    KC: tl.constexpr,
    FILL: tl.constexpr,
    ONE_STAGE: tl.constexpr,
    TOPK: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    RADIX: tl.constexpr,
):
    """Top-K of one selection row within a tile: final output (one stage) or the tile's
    KC best candidates with their scores (two stages). Without TOPK (a tile no larger
    than K - 1) every valid page is a candidate."""
    if not TOPK:
        sel = valid
    elif RADIX:
        sel = _topk_mask_radix(scores, valid, K - 1)
    else:
        sel = _topk_mask(scores, valid, K - 1)
    if ONE_STAGE:
        _emit_selection(p_row, p_prow, sel, ids, phys, n_pages, last_phys, K, FILL, WRITE_PHYS)
    else:  # at most KC entries are selected: KC >= min(K - 1, CHUNK)
        sel_i = sel.to(tl.int32)
        pos = tl.cumsum(sel_i, axis=0) - 1
        n_sel = tl.sum(sel_i, axis=0)
        o_k = tl.arange(0, KC)
        tl.store(p_row + pos, ids, mask=sel)
        tl.store(p_srow + pos, scores, mask=sel)
        tl.store(p_row + o_k, o_k * 0 - 1, mask=o_k >= n_sel)
        tl.store(p_srow + o_k, tl.zeros([KC], tl.float32) + float("-inf"), mask=o_k >= n_sel)
        if WRITE_PHYS:
            tl.store(p_prow + pos, phys.to(tl.int32), mask=sel)


@triton.jit
def _page_scores(
    q,
    kmin,
    kmax,
    p_q,
    p_meta,
    m_g,
    m_load,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
    SUB: tl.constexpr,
    stride_ms,
):
    """Upper-bound scores [BLOCK_G, CHUNK] of a tile of pages for a group's query heads:
    ``dot(relu(q), kmax) + dot(min(q, 0), kmin)`` over the head dim in BLOCK_D slices
    (tensor cores; BLOCK_G >= 16), or the same as products and a row sum when BLOCK_G == 1.
    Hierarchical metadata (SUB > 1 sub-pages a page, ``stride_ms`` apart): the page's
    score is the max of its sub-pages' bounds, a NaN one counting as +inf.

    p_q: [BLOCK_G, 1] query-row pointers; p_meta: [CHUNK, 1] metadata offsets of the pages.
    """
    if SUB == 1:
        b_s, q_bad = _bound_tile(q, kmin, kmax, p_q, p_meta, m_g, m_load, HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE)
    else:
        b_s = tl.full([BLOCK_G, CHUNK], float("-inf"), dtype=tl.float32)
        q_bad = tl.zeros([BLOCK_G], dtype=tl.int32)
        for j in tl.static_range(SUB):
            b_j, q_bad = _bound_tile(
                q, kmin, kmax, p_q, p_meta + j * stride_ms, m_g, m_load, HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE
            )  # [BLOCK_G, CHUNK] bounds of sub-page j
            b_s = tl.maximum(b_s, _nan_to_inf(b_j))
    return tl.where(q_bad[:, None] > 0, float("nan"), b_s)


@triton.jit
def _bound_tile(
    q,
    kmin,
    kmax,
    p_q,
    p_meta,
    m_g,
    m_load,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
):
    """(bounds [BLOCK_G, CHUNK] of the metadata rows at ``p_meta``, [BLOCK_G] query heads
    holding NaN or +-inf): the body of ``_page_scores`` for one (sub-)page per row."""
    b_s = tl.zeros([BLOCK_G, CHUNK], dtype=tl.float32)
    q_bad = tl.zeros([BLOCK_G], dtype=tl.int32)  # query heads holding NaN or +-inf: their rows are NaN
    for d0 in tl.static_range(0, HEAD_DIM, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_q = tl.load(p_q + o_d[None, :], mask=m_g[:, None], other=0.0)  # [BLOCK_G, BLOCK_D]
        q32 = b_q.to(tl.float32)
        q_bad = tl.maximum(q_bad, tl.max(((q32 != q32) | (tl.abs(q32) == float("inf"))).to(tl.int32), axis=1))
        # metadata is streamed once per step: evict it first (H100, runs/020: select 0-17% faster)
        b_lo = tl.load(
            kmin + p_meta + o_d[None, :], mask=m_load[:, None], other=0.0, eviction_policy="evict_first"
        )  # [CHUNK, BLOCK_D]
        b_hi = tl.load(kmax + p_meta + o_d[None, :], mask=m_load[:, None], other=0.0, eviction_policy="evict_first")
        if b_lo.dtype.is_fp8():  # e5m2 metadata: exact in the query's 16-bit type (never q in fp8);
            # +-inf (keys past +-57344) -> +-the largest finite query-dtype value, as in the
            # reference: still a bound, and relu(q) = 0 times it is 0, not NaN (found by bits:
            # the interpreter reads e5m2 inf as 65536)
            lo_inf = b_lo.to(tl.uint8, bitcast=True) == 0xFC
            hi_inf = b_hi.to(tl.uint8, bitcast=True) == 0x7C
            # (a plain value, not a named constexpr: the unrolled head-dim loop would reassign it)
            big = 65504.0 if b_q.dtype == tl.float16 else 3.3895313892515355e38
            # NaN (a non-finite key) by its bits too: the interpreter reads e5m2 NaN as a finite value
            lo_nan = (b_lo.to(tl.uint8, bitcast=True) & 0x7F) > 0x7C
            hi_nan = (b_hi.to(tl.uint8, bitcast=True) & 0x7F) > 0x7C
            b_lo = tl.where(lo_nan, float("nan"), tl.where(lo_inf, -big, b_lo.to(tl.float32))).to(b_q.dtype)
            b_hi = tl.where(hi_nan, float("nan"), tl.where(hi_inf, big, b_hi.to(tl.float32))).to(b_q.dtype)
        zero = tl.zeros_like(b_q)
        q_pos = tl.maximum(b_q, zero).to(b_hi.dtype)
        q_neg = tl.minimum(b_q, zero).to(b_lo.dtype)
        if BLOCK_G == 1:  # one query head: float32 FMAs and a row sum (no dot operands staged in shared memory)
            b_s += tl.sum(
                q_pos.to(tl.float32) * b_hi.to(tl.float32) + q_neg.to(tl.float32) * b_lo.to(tl.float32), axis=1
            )[None, :]
        elif IEEE:
            b_s += tl.dot(q_pos.to(tl.float32), tl.trans(b_hi.to(tl.float32)), input_precision="ieee")
            b_s += tl.dot(q_neg.to(tl.float32), tl.trans(b_lo.to(tl.float32)), input_precision="ieee")
        else:
            b_s += tl.dot(q_pos, tl.trans(b_hi))
            b_s += tl.dot(q_neg, tl.trans(b_lo))
    return b_s, q_bad


@triton.jit
def _group_scores(b_s, m_g, m_pages, AGG_MAX: tl.constexpr):
    """[BLOCK_G, CHUNK] per-query-head scores -> [CHUNK] shared-selection score of the
    group (max or sum over its valid heads; invalid pages/heads never contribute; callers
    pass ``m_g & _finite_heads(..)`` so that a non-finite query head does not either).
    A NaN score (NaN metadata) counts as +inf."""
    m = m_g[:, None] & m_pages[None, :]
    b_s = _nan_to_inf(b_s)  # no NaN reaches the reduction (a GPU max drops it)
    if AGG_MAX:
        return tl.max(tl.where(m, b_s, float("-inf")), axis=0)
    return tl.sum(tl.where(m, b_s, 0.0), axis=0)


@triton.jit
def _select_tile_kernel(
    q,  # [B, Hq, D]
    kmin,
    kmax,  # [P, Hkv, D] or [P, Hkv, SUB, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    out_idx,  # one stage: [B, Hsel, K]; two stages: candidates [B, Hsel, NC * KC]
    out_score,  # two stages: [B, Hsel, NC * KC] float32 (unused in one stage)
    out_phys,  # like out_idx, physical page ids (written when WRITE_PHYS)
    final_idx,  # FUSED_MERGE: [B, Hsel, K] final rows (the two-stage path's out)
    final_phys,  # FUSED_MERGE: [B, Hsel, K] their physical ids
    counters,  # FUSED_MERGE: [B, Hkv] int32 tile arrival counters, zero between calls
    K,  # pages per selection, the last page included
    max_pages,
    num_pages,
    stride_fb,
    stride_fh,
    stride_qb,
    stride_qh,
    stride_mp,
    stride_mh,
    stride_tb,
    stride_ob,
    stride_oh,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    SHARED: tl.constexpr,
    AGG_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
    KC: tl.constexpr,
    ONE_STAGE: tl.constexpr,
    FILL: tl.constexpr,
    IEEE: tl.constexpr,
    TOPK: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    RADIX: tl.constexpr,
    FUSED_MERGE: tl.constexpr,  # the last tile of a row to finish merges it (no merge launch)
    BLOCK_M: tl.constexpr,  # FUSED_MERGE: next_pow2(tiles * KC)
    TRIGGER: tl.constexpr,  # one stage: a decode launched with PDL may start now (it waits for this grid)
    status=None,  # [1] int32 plan status: bit 0 = a sequence grew past the planned width (STATUS)
    STATUS: tl.constexpr = False,
    gate=None,  # GATED: [B, Hkv] int32, 0 = this KV head reuses its rows (questkern.ops.select.reuse)
    GATED: tl.constexpr = False,
    stride_ms=0,  # SUB > 1: stride of the sub-page axis of kmin/kmax
    SUB: tl.constexpr = 1,  # sub-pages per page (hierarchical metadata [P, Hkv, SUB, D])
):
    if TRIGGER:
        gdc_launch_dependents()
    i_b, i_h, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if GATED:
        if tl.load(gate + i_b * tl.num_programs(1) + i_h) == 0:
            return
    o_c = i_c * CHUNK + tl.arange(0, CHUNK)  # logical pages of this tile
    p_tab = page_table + i_b.to(tl.int64) * stride_tb
    # the page-table row is read without waiting for seq_len (ids past the sequence are
    # clamped, never dereferenced unmasked): one dependent DRAM round trip fewer
    phys = tl.load(p_tab + o_c, mask=o_c < max_pages, other=0)
    seq_len = tl.load(seq_lens + i_b)
    phys = tl.minimum(tl.maximum(phys, 0), num_pages - 1).to(tl.int64)
    n_pages = _planned_pages(seq_len, PAGE, max_pages, status, STATUS)
    sparse = n_pages > K
    m_c = o_c < n_pages - 1  # candidates: every page but the last
    m_load = m_c & sparse  # a dense sequence needs no scores
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh
    p_meta = phys[:, None] * stride_mp + i_h * stride_mh

    # upper-bound scores [BLOCK_G, CHUNK], one row per query head
    b_s = _page_scores(q, kmin, kmax, p_q, p_meta, m_g, m_load, HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE, SUB, stride_ms)

    p_out = out_idx + i_b.to(tl.int64) * stride_ob
    p_sco = out_score + i_b.to(tl.int64) * stride_ob
    p_phy = out_phys + i_b.to(tl.int64) * stride_ob
    tile = 0 if ONE_STAGE else i_c * KC
    last_phys = 0
    if ONE_STAGE and WRITE_PHYS:
        last_phys = tl.load(p_tab + n_pages - 1)
    if SHARED:
        b_agg = _group_scores(b_s, _finite_heads(p_q, m_g, HEAD_DIM, BLOCK_D, BLOCK_G), m_c, AGG_MAX)  # [CHUNK]
        r = i_h * stride_oh + tile
        _tile_row(
            b_agg,
            m_c,
            o_c,
            phys,
            p_out + r,
            p_sco + r,
            p_phy + r,
            n_pages,
            last_phys,
            K,
            KC,
            FILL,
            ONE_STAGE,
            TOPK,
            WRITE_PHYS,
            RADIX,
        )
    else:
        for g in tl.static_range(GROUP):
            b_row = tl.sum(tl.where(o_g[:, None] == g, b_s, 0.0), axis=0)  # [CHUNK] scores of query head g
            r = (i_h * GROUP + g) * stride_oh + tile
            _tile_row(
                b_row,
                m_c,
                o_c,
                phys,
                p_out + r,
                p_sco + r,
                p_phy + r,
                n_pages,
                last_phys,
                K,
                KC,
                FILL,
                ONE_STAGE,
                TOPK,
                WRITE_PHYS,
                RADIX,
            )

    if FUSED_MERGE:  # rows finish at different times: one row's merge overlaps other rows' tiles
        _arrive_and_merge(
            counters + i_b * tl.num_programs(1) + i_h,
            tl.num_programs(2),
            p_out,
            p_sco,
            p_phy,
            stride_oh,
            final_idx + i_b.to(tl.int64) * stride_fb,
            final_phys + i_b.to(tl.int64) * stride_fb,
            stride_fh,
            p_tab,
            n_pages,
            K,
            tl.num_programs(2) * KC,
            i_h,
            GROUP,
            SHARED,
            BLOCK_M,
            FILL,
            WRITE_PHYS,
            RADIX,
        )


@triton.jit
def _select_score_kernel(
    q,  # [B, Hq, D]
    kmin,
    kmax,  # [P, Hkv, D] or [P, Hkv, SUB, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    cand_idx,  # [B, Hsel, NC * CHUNK] int32: page p at slot p, -1 = not a candidate
    cand_score,  # [B, Hsel, NC * CHUNK] float32
    cand_phys,  # [B, Hsel, NC * CHUNK] int32 (written when WRITE_PHYS)
    final_idx,  # FUSED_MERGE: [B, Hsel, K] the selection
    final_phys,  # FUSED_MERGE: [B, Hsel, K] its physical ids (written when WRITE_PHYS)
    counters,  # FUSED_MERGE: [B, Hkv] int32 program arrival counters, zero between calls
    K,
    max_pages,
    num_pages,
    n_chunks,
    stride_qb,
    stride_qh,
    stride_mp,
    stride_mh,
    stride_tb,
    stride_cb,
    stride_ch,
    stride_fb,
    stride_fh,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    SHARED: tl.constexpr,
    AGG_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
    IEEE: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    FUSED_MERGE: tl.constexpr,  # the last program of a row to finish merges it (no merge launch)
    BLOCK_M: tl.constexpr,  # FUSED_MERGE: next_pow2(NC * CHUNK)
    FILL: tl.constexpr,
    RADIX: tl.constexpr,  # FUSED_MERGE: the merge's top-K algorithm (SelectConfig.topk)
    TRIGGER: tl.constexpr,  # FUSED_MERGE: a decode launched with PDL may start now
    status=None,  # [1] int32 plan status (STATUS), see _planned_pages
    STATUS: tl.constexpr = False,
    gate=None,  # GATED: [B, Hkv] int32, 0 = this KV head reuses its rows (questkern.ops.select.reuse)
    GATED: tl.constexpr = False,
    stride_ms=0,  # SUB > 1: stride of the sub-page axis of kmin/kmax
    SUB: tl.constexpr = 1,  # sub-pages per page (hierarchical metadata [P, Hkv, SUB, D])
):
    """Stage 1 of the two-stage path when tiles keep every page (``chunk_pages < K``):
    no tile top-K, so each program streams tiles ``i_s, i_s + S, ...`` of its row,
    software-pipelined over ``NUM_STAGES`` tiles (page-table and metadata loads of the
    next tiles in flight while this one is scored), and writes every candidate's score.
    The grid is (programs, Hkv, B): a row's programs are scheduled together, so with
    FUSED_MERGE rows complete one after another and a row's merge overlaps the streaming
    of later rows (the order made no difference without it, runs/015)."""
    if TRIGGER:
        gdc_launch_dependents()
    i_s, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if GATED:
        if tl.load(gate + i_b * tl.num_programs(1) + i_h) == 0:
            return
    n_progs = tl.num_programs(0)
    p_tab = page_table + i_b.to(tl.int64) * stride_tb
    seq_len = tl.load(seq_lens + i_b)
    n_pages = _planned_pages(seq_len, PAGE, max_pages, status, STATUS)
    sparse = n_pages > K
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh
    p_cand = i_b.to(tl.int64) * stride_cb
    if SHARED:
        m_gf = _finite_heads(p_q, m_g, HEAD_DIM, BLOCK_D, BLOCK_G)  # heads in the group's score
    else:
        m_gf = m_g
    for i_c in tl.range(i_s, n_chunks, n_progs, num_stages=NUM_STAGES):
        o_c = i_c * CHUNK + tl.arange(0, CHUNK)  # logical pages of this tile
        phys = tl.load(p_tab + o_c, mask=o_c < max_pages, other=0)
        phys = tl.minimum(tl.maximum(phys, 0), num_pages - 1).to(tl.int64)
        m_c = o_c < n_pages - 1  # candidates: every page but the last
        p_meta = phys[:, None] * stride_mp + i_h * stride_mh
        b_s = _page_scores(
            q, kmin, kmax, p_q, p_meta, m_g, m_c & sparse, HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE, SUB, stride_ms
        )
        ids = tl.where(m_c, o_c, -1)
        if SHARED:
            r = p_cand + i_h * stride_ch + o_c
            tl.store(cand_idx + r, ids)
            tl.store(cand_score + r, _group_scores(b_s, m_gf, m_c, AGG_MAX))
            if WRITE_PHYS:
                tl.store(cand_phys + r, phys.to(tl.int32))
        else:
            for g in tl.static_range(GROUP):
                r = p_cand + (i_h * GROUP + g) * stride_ch + o_c
                tl.store(cand_idx + r, ids)
                tl.store(cand_score + r, tl.sum(tl.where(o_g[:, None] == g, b_s, 0.0), axis=0))
                if WRITE_PHYS:
                    tl.store(cand_phys + r, phys.to(tl.int32))

    if FUSED_MERGE:
        _arrive_and_merge(
            counters + i_b * tl.num_programs(1) + i_h,
            n_progs,
            cand_idx + p_cand,
            cand_score + p_cand,
            cand_phys + p_cand,
            stride_ch,
            final_idx + i_b.to(tl.int64) * stride_fb,
            final_phys + i_b.to(tl.int64) * stride_fb,
            stride_fh,
            p_tab,
            n_pages,
            K,
            n_chunks * CHUNK,
            i_h,
            GROUP,
            SHARED,
            BLOCK_M,
            FILL,
            WRITE_PHYS,
            RADIX,
        )


@triton.jit
def _arrive_and_merge(
    p_cnt,
    n_progs,
    p_cidx,
    p_csco,
    p_cphys,
    stride_ch,
    p_fidx,
    p_fphys,
    stride_fh,
    p_tab,
    n_pages,
    K,
    n_cand,
    i_h,
    GROUP: tl.constexpr,
    SHARED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    FILL: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    RADIX: tl.constexpr,
):
    """Fused merge of stage 1: this program's candidate stores are ordered before one
    acq_rel arrival on the row's counter (bar.sync + a cumulative release); the last of
    the ``n_progs`` programs of KV head ``i_h`` reads every candidate of its rows from L2,
    merges them (one row, or GROUP rows per head) and rearms the counter.

    p_cidx/p_csco/p_cphys: the batch entry's candidate rows (row r at ``r * stride_ch``);
    p_fidx/p_fphys: its final rows (row r at ``r * stride_fh``).
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(p_cnt, 1, sem="acq_rel", scope="gpu")
    if arrived == n_progs - 1:
        if SHARED:
            _merge_row(
                p_cidx + i_h * stride_ch,
                p_csco + i_h * stride_ch,
                p_cphys + i_h * stride_ch,
                p_fidx + i_h * stride_fh,
                p_fphys + i_h * stride_fh,
                p_tab,
                n_pages,
                K,
                n_cand,
                BLOCK_M,
                FILL,
                WRITE_PHYS,
                RADIX,
            )
        else:
            for g in tl.static_range(GROUP):
                r = i_h * GROUP + g
                _merge_row(
                    p_cidx + r * stride_ch,
                    p_csco + r * stride_ch,
                    p_cphys + r * stride_ch,
                    p_fidx + r * stride_fh,
                    p_fphys + r * stride_fh,
                    p_tab,
                    n_pages,
                    K,
                    n_cand,
                    BLOCK_M,
                    FILL,
                    WRITE_PHYS,
                    RADIX,
                )
        tl.atomic_xchg(p_cnt, 0)


@triton.jit
def _merge_row(
    p_cidx,
    p_csco,
    p_cphys,
    p_out,
    p_oph,
    p_tab,
    n_pages,
    K,
    N_CAND,
    BLOCK_N: tl.constexpr,
    FILL: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    RADIX: tl.constexpr,
):
    """Final top-K of one row over its tiles' candidates (read from L2: they may come from
    other CTAs of the same launch), then the row's output."""
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N_CAND
    ids = tl.load(p_cidx + o_n, mask=m_n, other=-1, cache_modifier=".cg")  # [BLOCK_N], ascending page order
    scores = tl.load(p_csco + o_n, mask=m_n, other=float("-inf"), cache_modifier=".cg")
    phys = ids
    last_phys = 0
    if WRITE_PHYS:
        phys = tl.load(p_cphys + o_n, mask=m_n, other=0, cache_modifier=".cg")
        last_phys = tl.load(p_tab + n_pages - 1)
    if RADIX:
        sel = _topk_mask_radix(scores, ids >= 0, K - 1)
    else:
        sel = _topk_mask(scores, ids >= 0, K - 1)
    _emit_selection(p_out, p_oph, sel, ids, phys, n_pages, last_phys, K, FILL, WRITE_PHYS)


@triton.jit
def _select_merge_kernel(
    cand_idx,  # [B, Hsel, N_CAND] int32, -1 = empty
    cand_score,  # [B, Hsel, N_CAND] float32
    cand_phys,  # [B, Hsel, N_CAND] int32 (read when WRITE_PHYS)
    out_idx,  # [B, Hsel, K] int32
    out_phys,  # [B, Hsel, K] int32 (written when WRITE_PHYS)
    page_table,  # [B, max_pages]
    seq_lens,  # [B]
    K,
    N_CAND,
    stride_tb,
    stride_cb,
    stride_ch,
    stride_ob,
    stride_oh,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FILL: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    RADIX: tl.constexpr,
    TRIGGER: tl.constexpr,  # a decode launched with PDL may start now (it waits for this grid)
    max_pages=None,  # page-table width: n_pages is clamped to it
    gate=None,  # GATED: [B, Hkv] int32, 0 = this KV head reuses its rows (questkern.ops.select.reuse)
    GATE_DIV: tl.constexpr = 1,  # rows per KV head
    GATED: tl.constexpr = False,
):
    # Launched without PDL: on the H100 a merge launched with PDL (waiting in gdc_wait
    # from the start) made the MHA 8K/32K select 10 us slower (runs/014).
    if TRIGGER:
        gdc_launch_dependents()
    i_b, i_r = tl.program_id(0), tl.program_id(1)
    if GATED:
        if tl.load(gate + i_b * (tl.num_programs(1) // GATE_DIV) + i_r // GATE_DIV) == 0:
            return
    n_pages = _planned_pages(tl.load(seq_lens + i_b), PAGE, max_pages, seq_lens, False)
    c = i_b.to(tl.int64) * stride_cb + i_r * stride_ch
    r = i_b.to(tl.int64) * stride_ob + i_r * stride_oh
    _merge_row(
        cand_idx + c,
        cand_score + c,
        cand_phys + c,
        out_idx + r,
        out_phys + r,
        page_table + i_b.to(tl.int64) * stride_tb,
        n_pages,
        K,
        N_CAND,
        BLOCK_N,
        FILL,
        WRITE_PHYS,
        RADIX,
    )


def select_plan(max_pages: int, k_pages: int, config: SelectConfig) -> tuple[int, int]:
    """(number of tiles, candidates kept per tile) for a batch whose longest context has max_pages."""
    n_chunks = max(1, -(-max(1, max_pages - 1) // config.chunk_pages))
    kc = min(next_pow2(max(1, k_pages - 1)), config.chunk_pages)
    return n_chunks, kc


def select_block_g(group: int) -> int:
    """Query-head rows per program: 1 for MHA (scores as products and sums: 0.6-1.7 us
    faster than tl.dot on the H100, runs/013), else the group padded to tl.dot's 16."""
    return 1 if group == 1 else max(16, next_pow2(group))


def stream_scores(config: SelectConfig, k_pages: int) -> bool:
    """Whether the two-stage path runs ``_select_score_kernel`` (tiles of fewer than K
    pages keep every page, so stage 1 only scores)."""
    return config.chunk_pages <= k_pages - 1


def select_pages(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D], or [P, Hkv, SUB, D] hierarchical
    kmax: torch.Tensor,  # like kmin
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    page_size: int,  # PAGE: the physical page (hierarchical metadata: SUB sub-pages of it)
    k_pages: int,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    config: SelectConfig | None = None,
    out: torch.Tensor | None = None,  # [B, Hsel, k_pages] int32 logical page ids
    out_phys: torch.Tensor | None = None,  # [B, Hsel, k_pages] int32 physical ids (written when given)
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    status: torch.Tensor | None = None,  # [1] int32: bit 0 set when a sequence outgrew the page table
    gate: torch.Tensor
    | None = None,  # [B, Hkv] int32 (questkern.ops.select.reuse): rows of a 0 entry are left as they are
) -> torch.Tensor:
    """Launch the selection; returns ``out``. Inputs are assumed validated (see questkern.api).
    A sequence longer than the page table (``page_table.shape[1]`` pages) is read up to it only.
    With ``gate``, only the KV heads whose entry is nonzero select; the others' rows of ``out``
    (and ``out_phys``) keep what they held. With 4-D metadata a page scores the max of its
    sub-pages' bounds; top-K runs over the physical pages."""
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    shared = gqa_mode == "shared"
    rows = Hkv if shared else Hq
    cfg = config or SelectConfig()
    max_pages = page_table.shape[1]
    n_chunks, kc = select_plan(max_pages, k_pages, cfg)
    if out is None:
        out = torch.empty(B, rows, k_pages, dtype=torch.int32, device=q.device)
    write_phys = out_phys is not None
    if not write_phys:
        out_phys = out  # never written
    common = dict(
        PAGE=page_size,
        HEAD_DIM=D,
        BLOCK_D=min(cfg.block_d, D),
        GROUP=G,
        BLOCK_G=select_block_g(G),
        SHARED=shared,
        AGG_MAX=aggregate == "max",
        CHUNK=cfg.chunk_pages,
        KC=kc,
        FILL=next_pow2(k_pages),
        IEEE=kmin.dtype == torch.float32 or dot_upcast(q.dtype),
        TOPK=cfg.chunk_pages > k_pages - 1,
        WRITE_PHYS=write_phys,
        RADIX=cfg.topk == "radix",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    strides = (q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), page_table.stride(0))
    flag = dict(
        status=seq_lens if status is None else status,
        STATUS=status is not None,
        gate=seq_lens if gate is None else gate,
        GATED=gate is not None,
    )
    sub = sub_args(kmin)  # SUB and the sub-page stride (SUB = 1 for 3-D metadata)
    if n_chunks == 1:
        _select_tile_kernel[(B, Hkv, 1)](
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            out,
            out,
            out_phys,
            out,
            out,
            out,
            k_pages,
            max_pages,
            kmin.shape[0],
            0,
            0,
            *strides,
            out.stride(0),
            out.stride(1),
            ONE_STAGE=True,
            FUSED_MERGE=False,
            BLOCK_M=16,
            TRIGGER=use_pdl(q.device),
            **flag,
            **sub,
            **common,
        )
        return out
    if workspace is None:
        workspace = select_workspace(B, rows, max_pages, k_pages, cfg, q.device)
    cand_idx, cand_score, cand_phys, counters = workspace  # [B, rows, n_chunks * kc] x3, [B, Hkv]
    n_cand = n_chunks * kc
    if stream_scores(cfg, k_pages):
        progs = -(-n_chunks // cfg.tiles_per_program)
        _select_score_kernel[(progs, Hkv, B)](
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            cand_idx,
            cand_score,
            cand_phys,
            out,
            out_phys,
            counters,
            k_pages,
            max_pages,
            kmin.shape[0],
            n_chunks,
            *strides,
            cand_idx.stride(0),
            cand_idx.stride(1),
            out.stride(0),
            out.stride(1),
            PAGE=page_size,
            HEAD_DIM=D,
            BLOCK_D=common["BLOCK_D"],
            GROUP=G,
            BLOCK_G=common["BLOCK_G"],
            SHARED=shared,
            AGG_MAX=common["AGG_MAX"],
            CHUNK=cfg.chunk_pages,
            IEEE=common["IEEE"],
            WRITE_PHYS=write_phys,
            NUM_STAGES=cfg.num_stages,
            FUSED_MERGE=cfg.fused_merge,
            BLOCK_M=next_pow2(n_cand),
            FILL=common["FILL"],
            RADIX=common["RADIX"],
            TRIGGER=False,
            num_warps=cfg.num_warps,
            **flag,
            **sub,
        )
    else:
        _select_tile_kernel[(B, Hkv, n_chunks)](
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            cand_idx,
            cand_score,
            cand_phys,
            out,
            out_phys,
            counters,
            k_pages,
            max_pages,
            kmin.shape[0],
            out.stride(0),
            out.stride(1),
            *strides,
            cand_idx.stride(0),
            cand_idx.stride(1),
            ONE_STAGE=False,
            FUSED_MERGE=cfg.fused_merge,
            BLOCK_M=next_pow2(n_cand),
            TRIGGER=cfg.fused_merge and use_pdl(q.device),
            **flag,
            **sub,
            **common,
        )
    if cfg.fused_merge:
        return out
    _select_merge_kernel[(B, rows)](
        cand_idx,
        cand_score,
        cand_phys,
        out,
        out_phys,
        page_table,
        seq_lens,
        k_pages,
        n_cand,
        page_table.stride(0),
        cand_idx.stride(0),
        cand_idx.stride(1),
        out.stride(0),
        out.stride(1),
        PAGE=page_size,
        BLOCK_N=next_pow2(n_cand),
        FILL=common["FILL"],
        WRITE_PHYS=write_phys,
        RADIX=common["RADIX"],
        TRIGGER=use_pdl(q.device),
        max_pages=max_pages,
        gate=flag["gate"],
        GATE_DIV=rows // Hkv,
        GATED=gate is not None,
        num_warps=cfg.merge_warps,
    )
    return out


def select_workspace(
    B: int, rows: int, max_pages: int, k_pages: int, config: SelectConfig, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Buffers of the two-stage path: candidate (page ids, scores, physical ids), each
    [B, rows, tiles * KC], and the fused merge's arrival counters [B, rows] (zeroed here;
    every call leaves them zero)."""
    n_chunks, kc = select_plan(max_pages, k_pages, config)
    n = n_chunks * kc
    return (
        torch.empty(B, rows, n, dtype=torch.int32, device=device),
        torch.empty(B, rows, n, dtype=torch.float32, device=device),
        torch.empty(B, rows, n, dtype=torch.int32, device=device),
        torch.zeros(B, rows, dtype=torch.int32, device=device),
    )

"""Adaptive-budget Quest selection (Triton): the smallest page set whose estimated
score mass passes a threshold, capped by a minimum and a maximum budget.

The rule and its float64 reference are in :mod:`questkern.ops.select.adaptive_naive`;
the output format is that of :func:`questkern.ops.select.select_pages` with width
``K_max = ceil(max_budget / page_size)``: ascending logical page ids, the last page
always included, ``-1`` padded (rows may hold fewer than ``min(n, K_max)`` pages).

How the kernel finds ``k*`` without sorting: masses ``m = exp2(z - max z) / Z`` of the
candidates are computed in registers; a 32-step bitwise bisection over the same
order-preserving integer keys as the fixed top-K (``_topk_mask``) finds the largest
key threshold ``T`` whose pages ``key >= T`` carry at least ``threshold - m_last``;
pages above ``T`` are all needed, and of the pages tied at ``T`` (equal scores, so
equal masses) just enough are counted. ``k`` is then clamped to
``[K_min - 1, K_max - 1]`` and the fixed kernel's ``_topk_mask`` (with a per-row k)
and ``_emit_selection`` produce the rows.

Long contexts run in two launches, like the fixed kernel: each tile of
``chunk_pages`` pages keeps its top ``K_max - 1`` candidates (the global prefix the
rule can pick is among them) plus its softmax partials (max and sum of ``exp2``)
and, in the tile holding it, the last page's logit; the merge launch combines the
partials into the global normalizer and applies the rule to the candidates.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from questkern._details import dot_upcast
from questkern.config import SelectConfig, next_pow2
from questkern.ops.select.adaptive_naive import AdaptiveBudget
from questkern.ops.select.kernel import (
    _emit_selection,
    _finite_heads,
    _group_scores,
    _nan_to_inf,
    _page_scores,
    _planned_pages,
    _topk_mask,
    select_block_g,
    select_plan,
)

_LOG2E = 1.4426950408889634


@triton.jit
def _mass_count(scores, valid, mass, need):
    """[N] scores/valid/mass, scalar need -> int32: the fewest entries, best scores first
    (ties to the lower index), whose mass reaches ``need`` (every valid entry if it is
    never reached, 0 if need <= 0)."""
    s = tl.where(valid, scores, float("-inf")) + 0.0  # + 0.0 folds -0.0 into +0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64) + 2147483648  # [N] in [0, 2^32)
    mm = tl.where(valid, mass, 0.0)
    thr = tl.min(key, axis=0) * 0  # largest t with mass(key >= t) >= need
    for i in tl.static_range(32):
        cand = thr + (1 << (31 - i))
        got = tl.sum(tl.where(key >= cand, mm, 0.0), axis=0)
        thr = tl.where(got >= need, cand, thr)
    gt = (key > thr) & valid
    eq = (key == thr) & valid
    n_gt = tl.sum(gt.to(tl.int32), axis=0)
    n_eq = tl.sum(eq.to(tl.int32), axis=0)
    n_valid = tl.sum(valid.to(tl.int32), axis=0)
    m_gt = tl.sum(tl.where(gt, mm, 0.0), axis=0)
    m_t = tl.max(tl.where(eq, mm, 0.0), axis=0)  # tied entries carry equal masses
    reached = (n_eq > 0) & (m_t > 0) & (m_gt + m_t * n_eq.to(tl.float32) >= need)
    j = tl.ceil((need - m_gt) / tl.where(m_t > 0, m_t, 1.0))
    j = tl.minimum(tl.maximum(j, 1.0), n_eq.to(tl.float32)).to(tl.int32)
    k = tl.where(reached, n_gt + j, n_valid)
    return tl.where(need <= 0.0, 0, k)


@triton.jit
def _exp2_from(z, z_ref):
    """exp2(z - z_ref), with exp2(inf - inf) = 1: an infinite logit at the maximum."""
    return tl.where(z == z_ref, 1.0, tl.exp2(z - z_ref))


@triton.jit
def _adaptive_row(
    scores,
    v_all,
    v_c,
    is_last,
    ids,
    phys,
    p_row,
    p_srow,
    p_prow,
    p_aux,
    i_c,
    n_pages,
    last_phys,
    K_MIN,
    K_MAX,
    threshold,
    zscale,
    NC: tl.constexpr,
    KC: tl.constexpr,
    FILL: tl.constexpr,
    ONE_STAGE: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
):
    """One selection row within a tile: the final row (one stage) or the tile's K_MAX - 1
    best candidates plus its softmax partials (two stages). NaN scores rank as +inf, and
    +inf scores share the whole mass (the softmax's limit; README)."""
    scores = _nan_to_inf(scores)
    z = scores * zscale  # base-2 estimated logits
    z_max = tl.max(tl.where(v_all, z, float("-inf")), axis=0)
    z_ref = tl.where(z_max > float("-inf"), z_max, 0.0)
    e = tl.where(v_all, _exp2_from(z, z_ref), 0.0)
    e_sum = tl.sum(e, axis=0)
    if ONE_STAGE:
        mass = e / tl.maximum(e_sum, 1e-30)
        m_last = tl.sum(tl.where(is_last, mass, 0.0), axis=0)
        k = _mass_count(scores, v_c, mass, threshold - m_last)
        k = tl.minimum(tl.maximum(k, K_MIN - 1), K_MAX - 1)
        sel = _topk_mask(scores, v_c, k)
        _emit_selection(p_row, p_prow, sel, ids, phys, n_pages, last_phys, K_MAX, FILL, WRITE_PHYS)
    else:  # at most KC entries are selected: KC >= min(K_MAX - 1, CHUNK)
        sel = _topk_mask(scores, v_c, K_MAX - 1)
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
        tl.store(p_aux + i_c, z_max)
        tl.store(p_aux + NC + i_c, e_sum)
        has_last = tl.sum(is_last.to(tl.int32), axis=0) > 0
        tl.store(p_aux + 2 * NC, tl.sum(tl.where(is_last, z, 0.0), axis=0), mask=has_last)


@triton.jit
def _adaptive_tile_kernel(
    q,  # [B, Hq, D]
    kmin,
    kmax,  # [P, Hkv, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    out_idx,  # one stage: [B, Hsel, K_MAX]; two stages: candidates [B, Hsel, NC * KC]
    out_score,  # two stages: [B, Hsel, NC * KC] float32 candidate scores
    out_phys,  # like out_idx, physical page ids (written when WRITE_PHYS)
    aux,  # two stages: [B, Hsel, 2 * NC + 1] float32: tile max, tile sum of exp2, last-page logit
    K_MIN,
    K_MAX,  # pages, the last page included
    threshold,  # target estimated mass
    zscale,  # sm_scale / (A * temperature) * log2(e): scores -> base-2 logits
    max_pages,
    num_pages,
    stride_qb,
    stride_qh,
    stride_mp,
    stride_mh,
    stride_tb,
    stride_ob,
    stride_oh,
    stride_ab,
    stride_ah,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    SHARED: tl.constexpr,
    AGG_MAX: tl.constexpr,
    CHUNK: tl.constexpr,
    KC: tl.constexpr,
    NC: tl.constexpr,
    ONE_STAGE: tl.constexpr,
    FILL: tl.constexpr,
    IEEE: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    status=None,  # [1] int32 plan status (STATUS), see kernel._planned_pages
    STATUS: tl.constexpr = False,
):
    i_b, i_h, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_c = i_c * CHUNK + tl.arange(0, CHUNK)  # logical pages of this tile
    p_tab = page_table + i_b.to(tl.int64) * stride_tb
    phys = tl.load(p_tab + o_c, mask=o_c < max_pages, other=0)
    seq_len = tl.load(seq_lens + i_b)
    phys = tl.minimum(tl.maximum(phys, 0), num_pages - 1).to(tl.int64)  # never dereferenced out of range
    n_pages = _planned_pages(seq_len, PAGE, max_pages, status, STATUS)
    sparse = n_pages > K_MIN  # otherwise every page is attended: no scores needed
    m_all = o_c < n_pages  # every page: the last one counts in the mass
    m_c = o_c < n_pages - 1  # candidates
    is_last = o_c == n_pages - 1
    m_load = m_all & sparse
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh
    p_meta = phys[:, None] * stride_mp + i_h * stride_mh

    # upper-bound scores [BLOCK_G, CHUNK], one row per query head
    b_s = _page_scores(
        q, kmin, kmax, p_q, p_meta, m_g, m_load, HEAD_DIM, BLOCK_D, BLOCK_G, CHUNK, IEEE, 1, 0
    )  # SUB = 1: hierarchical metadata is refused by select_pages_adaptive

    p_out = out_idx + i_b.to(tl.int64) * stride_ob
    p_sco = out_score + i_b.to(tl.int64) * stride_ob
    p_phy = out_phys + i_b.to(tl.int64) * stride_ob
    p_aux = aux + i_b.to(tl.int64) * stride_ab
    tile = 0 if ONE_STAGE else i_c * KC
    last_phys = 0
    if ONE_STAGE and WRITE_PHYS:
        last_phys = tl.load(p_tab + n_pages - 1)
    if SHARED:
        b_agg = _group_scores(b_s, _finite_heads(p_q, m_g, HEAD_DIM, BLOCK_D, BLOCK_G), m_all, AGG_MAX)  # [CHUNK]
        r = i_h * stride_oh + tile
        _adaptive_row(
            b_agg,
            m_all,
            m_c,
            is_last,
            o_c,
            phys,
            p_out + r,
            p_sco + r,
            p_phy + r,
            p_aux + i_h * stride_ah,
            i_c,
            n_pages,
            last_phys,
            K_MIN,
            K_MAX,
            threshold,
            zscale,
            NC,
            KC,
            FILL,
            ONE_STAGE,
            WRITE_PHYS,
        )
    else:
        for g in tl.static_range(GROUP):
            b_row = tl.sum(tl.where(o_g[:, None] == g, b_s, 0.0), axis=0)  # [CHUNK] scores of query head g
            h = i_h * GROUP + g
            r = h * stride_oh + tile
            _adaptive_row(
                b_row,
                m_all,
                m_c,
                is_last,
                o_c,
                phys,
                p_out + r,
                p_sco + r,
                p_phy + r,
                p_aux + h * stride_ah,
                i_c,
                n_pages,
                last_phys,
                K_MIN,
                K_MAX,
                threshold,
                zscale,
                NC,
                KC,
                FILL,
                ONE_STAGE,
                WRITE_PHYS,
            )


@triton.jit
def _adaptive_merge_kernel(
    cand_idx,  # [B, Hsel, N_CAND] int32, -1 = empty
    cand_score,  # [B, Hsel, N_CAND] float32
    cand_phys,  # [B, Hsel, N_CAND] int32 (read when WRITE_PHYS)
    aux,  # [B, Hsel, 2 * NC + 1] float32
    out_idx,  # [B, Hsel, K_MAX] int32
    out_phys,  # [B, Hsel, K_MAX] int32 (written when WRITE_PHYS)
    page_table,  # [B, max_pages]
    seq_lens,  # [B]
    K_MIN,
    K_MAX,
    N_CAND,
    threshold,
    zscale,
    stride_tb,
    stride_cb,
    stride_ch,
    stride_ab,
    stride_ah,
    stride_ob,
    stride_oh,
    PAGE: tl.constexpr,
    NC: tl.constexpr,
    BLOCK_NC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FILL: tl.constexpr,
    WRITE_PHYS: tl.constexpr,
    max_pages=None,  # page-table width: n_pages is clamped to it
):
    i_b, i_r = tl.program_id(0), tl.program_id(1)
    n_pages = _planned_pages(tl.load(seq_lens + i_b), PAGE, max_pages, seq_lens, False)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N_CAND
    p_c = i_b.to(tl.int64) * stride_cb + i_r * stride_ch + o_n
    ids = tl.load(cand_idx + p_c, mask=m_n, other=-1)  # [BLOCK_N], ascending page order
    scores = tl.load(cand_score + p_c, mask=m_n, other=float("-inf"))
    valid = ids >= 0
    phys = ids
    last_phys = 0
    if WRITE_PHYS:
        phys = tl.load(cand_phys + p_c, mask=m_n, other=0)
        last_phys = tl.load(page_table + i_b.to(tl.int64) * stride_tb + n_pages - 1)

    p_aux = aux + i_b.to(tl.int64) * stride_ab + i_r * stride_ah
    o_t = tl.arange(0, BLOCK_NC)
    m_t = o_t < NC
    t_max = tl.load(p_aux + o_t, mask=m_t, other=float("-inf"))  # [BLOCK_NC]
    t_sum = tl.load(p_aux + NC + o_t, mask=m_t, other=0.0)
    z_all = tl.max(t_max, axis=0)
    w = tl.where(t_max > float("-inf"), _exp2_from(t_max, z_all), 0.0)
    inv = 1.0 / tl.maximum(tl.sum(t_sum * w, axis=0), 1e-30)
    z_last = tl.load(p_aux + 2 * NC)
    mass = tl.where(valid, _exp2_from(scores * zscale, z_all), 0.0) * inv
    m_last = _exp2_from(z_last, z_all) * inv

    k = _mass_count(scores, valid, mass, threshold - m_last)
    k = tl.minimum(tl.maximum(k, K_MIN - 1), K_MAX - 1)
    sel = _topk_mask(scores, valid, k)
    r = i_b.to(tl.int64) * stride_ob + i_r * stride_oh
    _emit_selection(out_idx + r, out_phys + r, sel, ids, phys, n_pages, last_phys, K_MAX, FILL, WRITE_PHYS)


def adaptive_workspace(B: int, rows: int, max_pages: int, k_max: int, config: SelectConfig, device):
    """Two-stage buffers: candidate (page ids, scores, physical ids) [B, rows, tiles * KC]
    and softmax partials [B, rows, 2 * tiles + 1]."""
    n_chunks, kc = select_plan(max_pages, k_max, config)
    n = n_chunks * kc
    return (
        torch.empty(B, rows, n, dtype=torch.int32, device=device),
        torch.empty(B, rows, n, dtype=torch.float32, device=device),
        torch.empty(B, rows, n, dtype=torch.int32, device=device),
        torch.empty(B, rows, 2 * n_chunks + 1, dtype=torch.float32, device=device),
    )


def select_pages_adaptive(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D]
    kmax: torch.Tensor,  # [P, Hkv, D]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    page_size: int,
    adaptive: AdaptiveBudget,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
    config: SelectConfig | None = None,
    out: torch.Tensor | None = None,  # [B, Hsel, K_max] int32 logical page ids (K_max capped at max_pages)
    out_phys: torch.Tensor | None = None,  # [B, Hsel, K_max] int32 physical ids (written when given)
    workspace: tuple | None = None,
    status: torch.Tensor | None = None,  # [1] int32: bit 0 set when a sequence outgrew the page table
) -> torch.Tensor:
    """Launch the adaptive selection; returns ``out`` [B, Hsel, K_max]. Inputs are
    assumed validated like :func:`questkern.ops.select.select_pages`'s (see questkern.api)."""
    if not isinstance(adaptive, AdaptiveBudget):
        raise TypeError(f"adaptive must be an AdaptiveBudget, got {type(adaptive).__name__}")
    if kmin.dim() == 4:
        raise ValueError(
            "adaptive: the adaptive budget does not take hierarchical metadata yet (kmin is 4-D "
            f"{tuple(kmin.shape)}, sub-pages); use a fixed budget"
        )
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    shared = gqa_mode == "shared"
    rows = Hkv if shared else Hq
    max_pages = page_table.shape[1]
    k_min, k_max = adaptive.page_bounds(page_size, max_pages)
    cfg = config or SelectConfig()
    n_chunks, kc = select_plan(max_pages, k_max, cfg)
    div = G if (shared and aggregate == "sum") else 1
    zscale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)) / (div * adaptive.temperature) * _LOG2E
    if out is None:
        out = torch.empty(B, rows, k_max, dtype=torch.int32, device=q.device)
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
        NC=n_chunks,
        FILL=next_pow2(k_max),
        IEEE=kmin.dtype == torch.float32 or dot_upcast(q.dtype),
        WRITE_PHYS=write_phys,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    thr = float(adaptive.threshold)
    head = (q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), page_table.stride(0))
    flag = dict(status=seq_lens if status is None else status, STATUS=status is not None)
    if n_chunks == 1:
        _adaptive_tile_kernel[(B, Hkv, 1)](
            q,
            kmin,
            kmax,
            page_table,
            seq_lens,
            out,
            out,
            out_phys,
            out,
            k_min,
            k_max,
            thr,
            zscale,
            max_pages,
            kmin.shape[0],
            *head,
            out.stride(0),
            out.stride(1),
            0,
            0,
            ONE_STAGE=True,
            **flag,
            **common,
        )
        return out
    if workspace is None:
        workspace = adaptive_workspace(B, rows, max_pages, k_max, cfg, q.device)
    cand_idx, cand_score, cand_phys, aux = workspace
    _adaptive_tile_kernel[(B, Hkv, n_chunks)](
        q,
        kmin,
        kmax,
        page_table,
        seq_lens,
        cand_idx,
        cand_score,
        cand_phys,
        aux,
        k_min,
        k_max,
        thr,
        zscale,
        max_pages,
        kmin.shape[0],
        *head,
        cand_idx.stride(0),
        cand_idx.stride(1),
        aux.stride(0),
        aux.stride(1),
        ONE_STAGE=False,
        **flag,
        **common,
    )
    n_cand = n_chunks * kc
    _adaptive_merge_kernel[(B, rows)](
        cand_idx,
        cand_score,
        cand_phys,
        aux,
        out,
        out_phys,
        page_table,
        seq_lens,
        k_min,
        k_max,
        n_cand,
        thr,
        zscale,
        page_table.stride(0),
        cand_idx.stride(0),
        cand_idx.stride(1),
        aux.stride(0),
        aux.stride(1),
        out.stride(0),
        out.stride(1),
        PAGE=page_size,
        NC=n_chunks,
        BLOCK_NC=next_pow2(n_chunks),
        BLOCK_N=next_pow2(n_cand),
        FILL=common["FILL"],
        WRITE_PHYS=write_phys,
        max_pages=max_pages,
        num_warps=cfg.merge_warps,
    )
    return out

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
from questkern.ops.select.kernel import _emit_selection, _topk_mask, select_plan

_LOG2E = 1.4426950408889634


@triton.jit
def _mass_count(scores, valid, mass, need):
    """[R, N] scores/valid/mass, [R] need -> [R] int32: the fewest entries, best scores
    first (ties to the lower column), whose mass reaches ``need`` (all valid entries if
    it is never reached, 0 if need <= 0)."""
    s = tl.where(valid, scores, float("-inf")) + 0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64) + 2147483648  # [R, N]
    mm = tl.where(valid, mass, 0.0)
    thr = tl.sum(key, axis=1) * 0  # [R] int64
    for i in tl.static_range(32):
        cand = thr + (1 << (31 - i))
        got = tl.sum(tl.where(key >= cand[:, None], mm, 0.0), axis=1)
        thr = tl.where(got >= need, cand, thr)
    gt = (key > thr[:, None]) & valid
    eq = (key == thr[:, None]) & valid
    n_gt = tl.sum(gt.to(tl.int32), axis=1)
    n_eq = tl.sum(eq.to(tl.int32), axis=1)
    n_valid = tl.sum(valid.to(tl.int32), axis=1)
    m_gt = tl.sum(tl.where(gt, mm, 0.0), axis=1)
    m_t = tl.max(tl.where(eq, mm, 0.0), axis=1)  # tied entries carry equal masses
    reached = (n_eq > 0) & (m_gt + m_t * n_eq.to(tl.float32) >= need) & (m_t > 0)
    j = tl.ceil((need - m_gt) / tl.where(m_t > 0, m_t, 1.0))
    j = tl.minimum(tl.maximum(j, 1.0), n_eq.to(tl.float32)).to(tl.int32)
    k = tl.where(reached, n_gt + j, n_valid)
    return tl.where(need <= 0.0, 0, k)


@triton.jit
def _adaptive_tile_kernel(
    q,  # [B, Hq, D]
    kmin, kmax,  # [P, Hkv, D]
    page_table,  # [B, max_pages] int32
    seq_lens,  # [B] int32
    out_idx,  # one stage: [B, Hsel, K_MAX]; two stages: candidates [B, Hsel, NC * KC]
    out_score,  # two stages: [B, Hsel, NC * KC] float32 candidate scores
    aux,  # two stages: [B, Hsel, 2 * NC + 1] float32: tile max, tile sum of exp2, last-page logit
    K_MIN, K_MAX,  # pages, the last page included
    threshold,  # target estimated mass
    zscale,  # sm_scale / A * log2(e): scores -> base-2 logits
    stride_qb, stride_qh,
    stride_mp, stride_mh,
    stride_tb,
    stride_ob, stride_oh,
    stride_ab, stride_ah,
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
):
    i_b, i_h, i_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens + i_b)
    n_pages = tl.cdiv(seq_len, PAGE)
    sparse = n_pages > K_MIN  # otherwise every page is attended: no scores needed

    o_c = i_c * CHUNK + tl.arange(0, CHUNK)  # logical pages of this tile
    m_all = o_c < n_pages  # every page (the last one counts in the mass)
    m_c = o_c < n_pages - 1  # candidates
    m_load = m_all & sparse
    phys = tl.load(page_table + i_b.to(tl.int64) * stride_tb + o_c, mask=m_load, other=0).to(tl.int64)
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    p_q = q + i_b.to(tl.int64) * stride_qb + (i_h * GROUP + o_g)[:, None] * stride_qh
    p_meta = phys[:, None] * stride_mp + i_h * stride_mh

    b_s = tl.zeros([BLOCK_G, CHUNK], dtype=tl.float32)
    for d0 in tl.static_range(0, HEAD_DIM, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D)
        b_q = tl.load(p_q + o_d[None, :], mask=m_g[:, None], other=0.0)  # [BLOCK_G, BLOCK_D]
        b_lo = tl.load(kmin + p_meta + o_d[None, :], mask=m_load[:, None], other=0.0)  # [CHUNK, BLOCK_D]
        b_hi = tl.load(kmax + p_meta + o_d[None, :], mask=m_load[:, None], other=0.0)
        zero = tl.zeros_like(b_q)
        q_pos = tl.maximum(b_q, zero).to(b_hi.dtype)
        q_neg = tl.minimum(b_q, zero).to(b_lo.dtype)
        if IEEE:
            b_s += tl.dot(q_pos.to(tl.float32), tl.trans(b_hi.to(tl.float32)), input_precision="ieee")
            b_s += tl.dot(q_neg.to(tl.float32), tl.trans(b_lo.to(tl.float32)), input_precision="ieee")
        else:
            b_s += tl.dot(q_pos, tl.trans(b_hi))
            b_s += tl.dot(q_neg, tl.trans(b_lo))

    if SHARED:
        m_ga = m_g[:, None] & m_all[None, :]
        if AGG_MAX:
            scores = tl.max(tl.where(m_ga, b_s, float("-inf")), axis=0)[None, :]  # [1, CHUNK]
        else:
            scores = tl.sum(tl.where(m_ga, b_s, 0.0), axis=0)[None, :]
        v_all = m_all[None, :]
        v_c = m_c[None, :]
        rows = i_h + tl.arange(0, 1)
        m_rows = rows >= 0
    else:
        scores = b_s  # [BLOCK_G, CHUNK]
        v_all = m_g[:, None] & m_all[None, :]
        v_c = m_g[:, None] & m_c[None, :]
        rows = i_h * GROUP + o_g
        m_rows = m_g
    ids = o_c[None, :] + (v_c.to(tl.int32) * 0)  # [R, CHUNK]
    p_rows = out_idx + i_b.to(tl.int64) * stride_ob + rows.to(tl.int64) * stride_oh

    z = scores * zscale  # base-2 estimated logits
    z_max = tl.max(tl.where(v_all, z, float("-inf")), axis=1)  # [R]
    z_ref = tl.where(z_max > float("-inf"), z_max, 0.0)
    e = tl.where(v_all, tl.exp2(z - z_ref[:, None]), 0.0)
    e_sum = tl.sum(e, axis=1)  # [R]
    is_last = (o_c == n_pages - 1)[None, :] & v_all

    if ONE_STAGE:
        mass = e / tl.maximum(e_sum, 1e-30)[:, None]
        m_last = tl.sum(tl.where(is_last, mass, 0.0), axis=1)
        k = _mass_count(scores, v_c, mass, threshold - m_last)
        k = tl.minimum(tl.maximum(k, K_MIN - 1), K_MAX - 1)
        sel = _topk_mask(scores, v_c, k)
        _emit_selection(p_rows, m_rows, sel, ids, n_pages, K_MAX, FILL)
    else:
        sel = _topk_mask(scores, v_c, K_MAX - 1)  # at most KC entries: KC >= min(K_MAX - 1, CHUNK)
        sel_i = sel.to(tl.int32)
        pos = tl.cumsum(sel_i, axis=1) - 1
        p_rows = p_rows + i_c * KC
        p_srows = out_score + i_b.to(tl.int64) * stride_ob + rows.to(tl.int64) * stride_oh + i_c * KC
        tl.store(p_rows[:, None] + pos, ids, mask=sel & m_rows[:, None])
        tl.store(p_srows[:, None] + pos, scores, mask=sel & m_rows[:, None])
        n_sel = tl.sum(sel_i, axis=1)
        o_k = tl.arange(0, KC)
        m_fill = m_rows[:, None] & (o_k[None, :] >= n_sel[:, None])
        tl.store(p_rows[:, None] + o_k[None, :], o_k[None, :] * 0 - 1 + n_sel[:, None] * 0, mask=m_fill)
        tl.store(p_srows[:, None] + o_k[None, :], tl.zeros([1, KC], tl.float32) + float("-inf") + n_sel[:, None] * 0.0, mask=m_fill)
        p_aux = aux + i_b.to(tl.int64) * stride_ab + rows.to(tl.int64) * stride_ah
        tl.store(p_aux + i_c, z_max, mask=m_rows)
        tl.store(p_aux + NC + i_c, e_sum, mask=m_rows)
        z_last = tl.sum(tl.where(is_last, z, 0.0), axis=1)
        has_last = tl.sum(is_last.to(tl.int32), axis=1) > 0
        tl.store(p_aux + 2 * NC, z_last, mask=m_rows & has_last)


@triton.jit
def _adaptive_merge_kernel(
    cand_idx,  # [B, Hsel, N_CAND] int32, -1 = empty
    cand_score,  # [B, Hsel, N_CAND] float32
    aux,  # [B, Hsel, 2 * NC + 1] float32
    out_idx,  # [B, Hsel, K_MAX] int32
    seq_lens,  # [B]
    K_MIN, K_MAX, N_CAND,
    threshold, zscale,
    stride_cb, stride_ch,
    stride_ab, stride_ah,
    stride_ob, stride_oh,
    PAGE: tl.constexpr,
    NC: tl.constexpr,
    BLOCK_NC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FILL: tl.constexpr,
):
    i_b, i_r = tl.program_id(0), tl.program_id(1)
    n_pages = tl.cdiv(tl.load(seq_lens + i_b), PAGE)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N_CAND
    p_c = i_b.to(tl.int64) * stride_cb + i_r * stride_ch + o_n
    ids = tl.load(cand_idx + p_c, mask=m_n, other=-1)[None, :]  # [1, BLOCK_N]
    scores = tl.load(cand_score + p_c, mask=m_n, other=float("-inf"))[None, :]
    valid = ids >= 0

    p_aux = aux + i_b.to(tl.int64) * stride_ab + i_r * stride_ah
    o_t = tl.arange(0, BLOCK_NC)
    m_t = o_t < NC
    t_max = tl.load(p_aux + o_t, mask=m_t, other=float("-inf"))[None, :]  # [1, BLOCK_NC]
    t_sum = tl.load(p_aux + NC + o_t, mask=m_t, other=0.0)[None, :]
    z_all = tl.max(t_max, axis=1)  # [1]
    w = tl.where(t_max > float("-inf"), tl.exp2(t_max - z_all[:, None]), 0.0)
    total = tl.sum(t_sum * w, axis=1)  # [1]
    z_last = tl.load(p_aux + 2 * NC + tl.arange(0, 1))
    inv = 1.0 / tl.maximum(total, 1e-30)
    mass = tl.where(valid, tl.exp2(scores * zscale - z_all[:, None]), 0.0) * inv[:, None]
    m_last = tl.exp2(z_last - z_all) * inv

    k = _mass_count(scores, valid, mass, threshold - m_last)
    k = tl.minimum(tl.maximum(k, K_MIN - 1), K_MAX - 1)
    sel = _topk_mask(scores, valid, k)
    rows = i_r + tl.arange(0, 1)
    p_rows = out_idx + i_b.to(tl.int64) * stride_ob + rows.to(tl.int64) * stride_oh
    _emit_selection(p_rows, rows >= 0, sel, ids, n_pages, K_MAX, FILL)


def adaptive_workspace(B: int, rows: int, max_pages: int, k_max: int, config: SelectConfig, device):
    """(candidate ids, candidate scores, softmax partials) for the two-stage path."""
    n_chunks, kc = select_plan(max_pages, k_max, config)
    n = n_chunks * kc
    return (torch.empty(B, rows, n, dtype=torch.int32, device=device),
            torch.empty(B, rows, n, dtype=torch.float32, device=device),
            torch.empty(B, rows, 2 * n_chunks + 1, dtype=torch.float32, device=device))


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
    out: torch.Tensor | None = None,  # [B, Hsel, K_max] int32
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Launch the adaptive selection -> [B, Hsel, K_max] int32. Inputs are assumed
    validated like :func:`questkern.ops.select.select_pages`'s (see questkern.api)."""
    if not isinstance(adaptive, AdaptiveBudget):
        raise TypeError(f"adaptive must be an AdaptiveBudget, got {type(adaptive).__name__}")
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    shared = gqa_mode == "shared"
    rows = Hkv if shared else Hq
    k_min, k_max = adaptive.page_bounds(page_size)
    cfg = config or SelectConfig()
    max_pages = page_table.shape[1]
    n_chunks, kc = select_plan(max_pages, k_max, cfg)
    div = G if (shared and aggregate == "sum") else 1
    zscale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)) / div * _LOG2E
    if out is None:
        out = torch.empty(B, rows, k_max, dtype=torch.int32, device=q.device)
    common = dict(
        PAGE=page_size, HEAD_DIM=D, BLOCK_D=min(cfg.block_d, D), GROUP=G, BLOCK_G=max(16, next_pow2(G)),
        SHARED=shared, AGG_MAX=aggregate == "max", CHUNK=cfg.chunk_pages, KC=kc, NC=n_chunks,
        FILL=next_pow2(k_max), IEEE=kmin.dtype == torch.float32 or dot_upcast(kmin.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    thr = float(adaptive.threshold)
    if n_chunks == 1:
        _adaptive_tile_kernel[(B, Hkv, 1)](
            q, kmin, kmax, page_table, seq_lens, out, out, out, k_min, k_max, thr, zscale,
            q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), page_table.stride(0),
            out.stride(0), out.stride(1), 0, 0, ONE_STAGE=True, **common,
        )
        return out
    if workspace is None:
        workspace = adaptive_workspace(B, rows, max_pages, k_max, cfg, q.device)
    cand_idx, cand_score, aux = workspace
    _adaptive_tile_kernel[(B, Hkv, n_chunks)](
        q, kmin, kmax, page_table, seq_lens, cand_idx, cand_score, aux, k_min, k_max, thr, zscale,
        q.stride(0), q.stride(1), kmin.stride(0), kmin.stride(1), page_table.stride(0),
        cand_idx.stride(0), cand_idx.stride(1), aux.stride(0), aux.stride(1), ONE_STAGE=False, **common,
    )
    n_cand = n_chunks * kc
    _adaptive_merge_kernel[(B, rows)](
        cand_idx, cand_score, aux, out, seq_lens, k_min, k_max, n_cand, thr, zscale,
        cand_idx.stride(0), cand_idx.stride(1), aux.stride(0), aux.stride(1), out.stride(0), out.stride(1),
        PAGE=page_size, NC=n_chunks, BLOCK_NC=next_pow2(n_chunks), BLOCK_N=next_pow2(n_cand),
        FILL=common["FILL"], num_warps=cfg.merge_warps,
    )
    return out

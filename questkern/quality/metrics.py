"""Quality metrics of Quest page selection for one decode step of one layer.

Definitions (per query head ``h``, keys ``[0, S)`` of one layer):

* ``p_h = softmax(q_h . K^T * sm_scale)`` — the true (dense) attention, float32.
* **recall** of a page set = the true softmax mass on its tokens, ``sum_{t in sel} p_h[t]``.
* **relative output error** = ``||o_sel - o_dense|| / ||o_dense||`` where ``o_sel`` is
  softmax attention restricted to the selected tokens (renormalized), as the sparse
  decode kernel computes it.

The selection is questkern's rule (:mod:`questkern.ops.select.naive`): the last page
always, plus the ``K - 1`` best other pages by the Quest upper bound, ties to the lower
page index. Selections for every K are prefixes of one stable descending order, so a
whole recall-vs-K curve costs one sort: ``curve[h, k]`` is the recall with ``K = k+1``
pages. Tests check these curves against ``select_pages_ref`` selections.
"""

from __future__ import annotations

import torch


def attention_probs(q: torch.Tensor, k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """q [Hq, D], k [Hkv, S, D] -> p [Hq, S] float32 (rows sum to 1)."""
    Hq = q.shape[0]
    G = Hq // k.shape[0]
    kk = k.float().repeat_interleave(G, dim=0)  # [Hq, S, D]
    s = torch.einsum("hsd,hd->hs", kk, q.float()) * sm_scale
    return torch.softmax(s, dim=-1)


def page_sums(x: torch.Tensor, page_size: int) -> torch.Tensor:
    """x [H, S, ...] -> per-page sums [H, n, ...] (the partial last page zero padded)."""
    H, S = x.shape[:2]
    n = -(-S // page_size)
    pad = n * page_size - S
    if pad:
        x = torch.cat([x, x.new_zeros(H, pad, *x.shape[2:])], dim=1)
    return x.view(H, n, page_size, *x.shape[2:]).sum(2)


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """q [Hq, D], kmin/kmax [n, Hkv, D] -> Quest upper bounds [Hq, n] float32.

    Same arithmetic as :func:`questkern.ops.select.naive.page_scores_ref`.
    """
    Hq = q.shape[0]
    G = Hq // kmin.shape[1]
    lo = kmin.float().repeat_interleave(G, dim=1)  # [n, Hq, D]
    hi = kmax.float().repeat_interleave(G, dim=1)
    qq = q.float()[None]  # [1, Hq, D]
    return torch.maximum(qq * lo, qq * hi).sum(-1).t().contiguous()


def row_scores(u: torch.Tensor, num_kv_heads: int, gqa_mode: str, aggregate: str = "sum") -> torch.Tensor:
    """Per-head scores [Hq, n] -> selection-row scores [R, n] (R = Hq or Hkv)."""
    if gqa_mode == "per_head":
        return u
    Hq, n = u.shape
    g = u.view(num_kv_heads, Hq // num_kv_heads, n)
    return g.sum(1) if aggregate == "sum" else g.amax(1)


def selection_order(s: torch.Tensor) -> torch.Tensor:
    """Row scores [R, n] -> candidate order [R, n-1]: pages 0..n-2 by score descending,
    ties to the lower page index (the fixed rule's order)."""
    return torch.sort(s[:, :-1], dim=1, descending=True, stable=True).indices


def rows_to_heads(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """Per-row tensor [R, ...] -> per-query-head [Hq, ...] (rows are KV heads when R < Hq)."""
    return x if x.shape[0] == num_q_heads else x.repeat_interleave(num_q_heads // x.shape[0], dim=0)


def mass_curve(pm: torch.Tensor, order_h: torch.Tensor) -> torch.Tensor:
    """Page masses [Hq, n], per-head order [Hq, n-1] -> recall curve [Hq, n] (index k: K = k+1 pages)."""
    last = pm[:, -1:]
    return torch.cat([last, last + torch.cumsum(torch.gather(pm[:, :-1], 1, order_h), dim=1)], dim=1)


def error_curve(
    pv: torch.Tensor,
    out_dense: torch.Tensor,
    curve: torch.Tensor,
    order_h: torch.Tensor,
    ks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative output error at every K (or at the curve indices ``ks`` [Hq, m]).

    pv [Hq, n, D]: per-page sums of p * v; out_dense [Hq, D]; curve [Hq, n] (mass_curve).
    Returns [Hq, n] (or [Hq, m]).
    """
    Hq, n, D = pv.shape
    last = pv[:, -1:, :]
    cum = torch.cat(
        [last, last + torch.cumsum(torch.gather(pv[:, :-1], 1, order_h[..., None].expand(-1, -1, D)), dim=1)], 1
    )
    mass = curve
    if ks is not None:
        cum = torch.gather(cum, 1, ks[..., None].expand(-1, -1, D))
        mass = torch.gather(curve, 1, ks)
    out = cum / mass.clamp_min(1e-30)[..., None]
    den = out_dense.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # [Hq, 1]
    return (out - out_dense[:, None, :]).norm(dim=-1) / den


def oracle_curve(pm: torch.Tensor) -> torch.Tensor:
    """Best page-granular recall at every K (last page kept, then pages by true mass) [Hq, n]."""
    best = torch.sort(pm[:, :-1], dim=1, descending=True).values
    last = pm[:, -1:]
    return torch.cat([last, last + torch.cumsum(best, dim=1)], dim=1)


def adaptive_pages(s: torch.Tensor, order: torch.Tensor, scale, thresholds, k_min: int, k_max: int) -> torch.Tensor:
    """Adaptive K per (scale,) threshold and row, before capping at n.

    s [R, n] row scores, order [R, n-1] (selection_order), ``scale`` = sm_scale / (A * T)
    — a float gives [len(thresholds), R], a sequence of scales gives
    [len(scale), len(thresholds), R] (see :mod:`questkern.ops.select.adaptive_naive`,
    whose rule this vectorizes: the number of prefixes whose estimated mass stays below
    the threshold is the smallest k reaching it, because prefix masses never decrease).
    """
    scales = torch.as_tensor(scale, dtype=torch.float64).reshape(-1, 1, 1)  # [C, 1, 1]
    m = torch.softmax(s.double()[None] * scales, dim=2)  # [C, R, n] estimated mass
    last = m[..., -1:]
    idx = order[None].expand(m.shape[0], -1, -1)
    prefix = torch.cat([last, last + torch.cumsum(torch.gather(m[..., :-1], 2, idx), dim=2)], dim=2)  # [C, R, n]
    n = s.shape[1]
    thr = torch.as_tensor(list(thresholds), dtype=torch.float64)[None, :, None, None]  # [1, T, 1, 1]
    k_star = (prefix[:, None] < thr).sum(-1).clamp(max=n - 1)  # [C, T, R]
    out = (k_star + 1).clamp(min=k_min, max=k_max)
    return out[0] if isinstance(scale, (int, float)) else out


def selection_recall(p: torch.Tensor, selected: torch.Tensor, page_size: int) -> torch.Tensor:
    """Recall of an explicit selection: p [Hq, S], selected [Hsel, K] logical pages (-1 pad) -> [Hq]."""
    Hq, S = p.shape
    pm = page_sums(p, page_size)  # [Hq, n]
    sel = rows_to_heads(selected.long(), Hq)
    valid = sel >= 0
    got = torch.gather(pm, 1, sel.clamp_min(0)) * valid
    return got.sum(1)

"""Float32 reference for Quest selection with an exact re-rank stage (issue 16).

The fixed rule (:mod:`questkern.ops.select.naive`) keeps the last page plus the
``K - 1`` best other pages by the Quest upper bound. On varied text the bound ranks the
needle's page too low in the few heads that retrieve it; a second stage fixes most of
that while reading only the keys of a few pages:

* ``K = ceil(budget / page_size)``; a sequence of ``<= K`` pages attends all of them;
* stage 1: the ``C = min(n - 1, rerank * (K - 1))`` best pages ``0 .. n-2`` by the
  fixed rule's row score (bound, aggregated over the group for ``shared``), in the
  fixed rule's order (score descending, ties to the lower page index);
* stage 2: per query head ``h`` and candidate page ``p``, the exact log-mass
  ``l_hp = logsumexp_{t in p} (q_h . k_t * sm_scale)`` (the partial last page is never a
  candidate); ``w_hp = softmax_p(l_hp)`` over the candidates; the row score is ``w_hp``
  (``per_head``) or ``sum_{h in group} w_hp`` (``shared``; each head's vote weighs the
  same);
* the ``K - 1`` candidates with the best row score (ties to the earlier candidate in
  stage-1 order) plus the last page.

Output as :func:`select_pages_ref`: ``[B, Hsel, K]`` int32 ascending logical page ids,
``-1`` padded. ``rerank = 0`` is exactly :func:`select_pages_ref`. Bytes read per row
beyond the fixed rule: the keys of the ``C`` candidate pages.
"""

from __future__ import annotations

import math

import torch

from questkern.ops.select.naive import page_scores_ref, select_pages_ref, selection_rows_ref


def select_pages_rerank_ref(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D]
    kmax: torch.Tensor,  # [P, Hkv, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages]
    seq_lens: torch.Tensor,  # [B]
    page_size: int,
    budget: int,
    rerank: int,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
) -> torch.Tensor:
    """[B, Hsel, K] int32 selected logical pages (see module doc)."""
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be an int >= 0 (candidates per selected page), got {rerank!r}")
    if rerank == 0:
        return select_pages_ref(q, kmin, kmax, page_table, seq_lens, page_size, budget, gqa_mode, aggregate)
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    K = -(-budget // page_size)
    rows = Hkv if gqa_mode == "shared" else Hq
    out = torch.full((B, rows, K), -1, dtype=torch.int32)
    for b, u in enumerate(page_scores_ref(q, kmin, kmax, page_table, seq_lens, page_size)):
        n = u.shape[1]
        if n <= K:
            out[b, :, :n] = torch.arange(n, dtype=torch.int32)
            continue
        s = selection_rows_ref(u, Hkv, gqa_mode, aggregate)  # [R, n]
        C = min(n - 1, rerank * (K - 1))
        for r in range(rows):
            cand = torch.sort(s[r, : n - 1].cpu(), descending=True, stable=True).indices[:C]  # [C]
            heads = [r] if gqa_mode == "per_head" else list(range(r * G, (r + 1) * G))
            w = torch.zeros(C, dtype=torch.float64)
            for h in heads:
                keys = k_cache[page_table[b, cand].long(), h // G].float()  # [C, PAGE, D]
                lse = torch.logsumexp((keys @ q[b, h].float()) * scale, dim=1)  # [C] (full pages only)
                w += torch.softmax(lse.double(), dim=0)
            keep = cand[torch.sort(w, descending=True, stable=True).indices[: K - 1]]
            ids = torch.cat([keep.sort().values, torch.tensor([n - 1])])
            out[b, r] = ids.to(torch.int32)
    return out.to(q.device)

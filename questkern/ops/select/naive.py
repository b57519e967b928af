"""Float32 reference for Quest page selection (estimate + top-K).

Rules (DESIGN.md §1), shared by the kernels and this reference:
* score of a page for query q: sum_c max(q_c * kmin_c, q_c * kmax_c);
* K = ceil(budget / page_size); a sequence of <= K pages attends all of them;
* otherwise the last page is always attended and the K-1 best of the others are
  added; **ties break toward the lower logical page index**;
* output rows list logical page ids in ascending order, padded with -1 to width K.
GQA: ``per_head`` gives one row per query head; ``shared`` one row per KV head from
the group's aggregated score (``sum`` or ``max`` over the group's query heads).
Metadata may be float32, the key dtype, or float8_e5m2 (safe-rounded; a key past
+-57344 makes kmax +inf / kmin -inf there, read as +-the largest finite value of the
query dtype — still a bound on any key, and a zero query component adds 0, not NaN).

NaN and infinity (README): the score is computed as ``relu(q) . kmax + min(q, 0) . kmin``
(equal to the sum above when kmin <= kmax), so NaN metadata (a page holding a non-finite
key) gives a NaN score, infinite metadata in float32/16-bit dtypes a NaN or +inf one; a NaN score ranks
as +inf (always selected, ties to the lower page index). A query head holding NaN or
+-inf scores NaN on every page (per_head: its row keeps the lowest pages) and is left out
of its group's ``shared`` score.

Hierarchical pages (LServe): metadata [P, Hkv, SUB, D] holds one min/max per sub-page of
page_size // SUB tokens; a page's score is the max of its sub-pages' scores (a NaN one
counting as +inf), and top-K runs over the physical pages of ``page_size`` tokens.
"""

from __future__ import annotations

import torch


def page_scores_ref(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D] or [P, Hkv, SUB, D] (hierarchical)
    kmax: torch.Tensor,  # like kmin
    page_table: torch.Tensor,  # [B, max_pages]
    seq_lens: torch.Tensor,  # [B]
    page_size: int,  # the physical page
) -> list[torch.Tensor]:
    """Per sequence: scores [Hq, n_pages] float32 (upper bounds of q.k per page)."""
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    out = []
    for b in range(B):
        n = -(-int(seq_lens[b]) // page_size)
        phys = page_table[b, :n].long()
        lo = kmin[phys].float().repeat_interleave(G, dim=1)  # [n, Hq, D]
        hi = kmax[phys].float().repeat_interleave(G, dim=1)
        if kmin.dtype == torch.float8_e5m2:  # +-inf (keys past +-57344) read as +-the query dtype's max
            big = torch.finfo(q.dtype).max
            lo = lo.clamp(min=-big)
            hi = hi.clamp(max=big)
        qq = q[b].float()[None]  # [1, Hq, D]
        if kmin.dim() == 4:  # lo, hi [n, Hq, SUB, D]: per-sub-page bounds, NaN -> +inf, max over sub-pages
            qs = qq[:, :, None]  # [1, Hq, 1, D]
            s = (qs.clamp(min=0) * hi + qs.clamp(max=0) * lo).sum(-1)  # [n, Hq, SUB]
            s = torch.nan_to_num(s, nan=float("inf"), posinf=float("inf"), neginf=float("-inf")).amax(-1)
        else:
            s = (qq.clamp(min=0) * hi + qq.clamp(max=0) * lo).sum(-1)  # [n, Hq]
        s[:, ~torch.isfinite(q[b].float()).all(-1)] = float("nan")  # non-finite query heads
        out.append(s.t().contiguous())
    return out


def selection_rows_ref(
    scores: torch.Tensor, num_kv_heads: int, gqa_mode: str, aggregate: str = "sum", heads: torch.Tensor | None = None
) -> torch.Tensor:
    """[Hq, n] per-query-head scores -> [Hsel, n] selection-row scores: per_head keeps them;
    shared aggregates each KV head's group by ``sum`` or ``max`` over the heads in ``heads``
    ([Hq] bool, default all; a non-finite query head is left out), a NaN score counting as +inf."""
    if gqa_mode != "shared":
        return scores
    s = torch.nan_to_num(scores, nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    if heads is not None:
        s = s.masked_fill(~heads.to(s.device)[:, None], 0.0 if aggregate == "sum" else float("-inf"))
    s = s.view(num_kv_heads, scores.shape[0] // num_kv_heads, -1)
    return s.sum(1) if aggregate == "sum" else s.amax(1)


def topk_pages_ref(scores: torch.Tensor, k_pages: int) -> torch.Tensor:
    """scores [R, n] -> [R, k_pages] int32 ascending logical ids, -1 padded."""
    R, n = scores.shape
    scores = torch.nan_to_num(scores, nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN ranks as +inf
    out = torch.full((R, k_pages), -1, dtype=torch.int32)
    for r in range(R):
        if n <= k_pages:
            ids = torch.arange(n)
        else:
            order = torch.sort(scores[r, : n - 1].cpu(), descending=True, stable=True).indices
            ids = torch.cat([order[: k_pages - 1].sort().values, torch.tensor([n - 1])])
        out[r, : len(ids)] = ids.to(torch.int32)
    return out


def select_pages_ref(
    q: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,  # PAGE, the physical page (also with hierarchical metadata)
    budget: int,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
) -> torch.Tensor:
    """[B, Hsel, K] int32 selected logical pages, K = ceil(budget / page_size) (see module doc)."""
    B, Hq, _ = q.shape
    Hkv = kmin.shape[1]
    k_pages = -(-budget // page_size)
    rows = Hkv if gqa_mode == "shared" else Hq
    out = torch.full((B, rows, k_pages), -1, dtype=torch.int32)
    for b, s in enumerate(page_scores_ref(q, kmin, kmax, page_table, seq_lens, page_size)):
        heads = torch.isfinite(q[b].float()).all(-1)  # [Hq]
        out[b] = topk_pages_ref(selection_rows_ref(s, Hkv, gqa_mode, aggregate, heads), k_pages)
    return out.to(q.device)

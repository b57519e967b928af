"""Float64 reference for adaptive-budget Quest page selection.

Fixed Quest attends ``K = ceil(budget / page_size)`` pages whatever the query. The
adaptive rule picks, per selection row (a query head for ``per_head``, a KV head for
``shared``), the **smallest page set whose estimated score mass passes a threshold**,
capped by a minimum and a maximum budget. Exactly:

* ``u_p``: the Quest upper bound of page ``p`` (``sum_c max(q_c kmin_c, q_c kmax_c)``;
  for ``shared`` the group aggregate: ``sum`` or ``max`` over the group's query heads).
* estimated logit ``z_p = u_p * sm_scale / (A * T)``, with ``A = G`` for ``shared`` +
  ``sum`` (the group *mean* of the per-head logits, so the scale matches one head) and
  ``A = 1`` otherwise; ``sm_scale`` defaults to ``1 / sqrt(head_dim)``; ``T`` is the
  budget's ``temperature`` (default 1). Upper bounds spread far more than true logits
  (each channel takes its extreme), so at ``T = 1`` the estimate is over-confident;
  the quality study measures which ``T`` calibrates it.
* estimated mass ``m_p = softmax_p(z)`` over **all** pages of the sequence (each page
  counts as one key whose logit is its upper bound; the partial last page too).
* candidates: pages ``0 .. n-2`` in the fixed rule's order (score descending, ties to
  the lower page index). ``k*`` = the smallest ``k >= 0`` with
  ``m_last + sum_{i<k} m_order[i] >= threshold`` (``k* = n - 1`` if never reached).
* ``K = clamp(k* + 1, K_min, K_max)``, ``K_min = ceil(min_budget / page_size)``,
  ``K_max = ceil(max_budget / page_size)``; a sequence of ``<= K`` pages attends all
  of them, otherwise the last page plus the first ``K - 1`` candidates in order.
* Output: ``[B, Hsel, K_max]`` int32 ascending logical page ids, ``-1`` padded — the
  format of :func:`questkern.ops.select.select_pages` with width ``K_max`` (capped at
  the page-table width); rows may hold fewer than ``min(n, K_max)`` pages.

The masses are computed in float64 here; the Triton kernel computes them in float32,
so the two agree exactly except when a prefix mass lies within float32 rounding of the
threshold (tests keep a margin; :func:`adaptive_margin_ref` measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from questkern.ops.select.naive import page_scores_ref, selection_rows_ref


@dataclass(frozen=True)
class AdaptiveBudget:
    """Adaptive budget: smallest page set with estimated mass >= ``threshold``.

    threshold: target estimated score mass in (0, 1].
    min_budget / max_budget: token budgets bounding the pages attended (each is
        rounded up to whole pages: ``ceil(budget / page_size)``).
    temperature: divides the estimated logits (> 0; larger = flatter estimate, more pages).
    """

    threshold: float = 0.9
    min_budget: int = 64
    max_budget: int = 2048
    temperature: float = 1.0

    def __post_init__(self):
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not 0.0 < self.threshold <= 1.0
        ):
            raise ValueError(f"AdaptiveBudget.threshold must be a number in (0, 1], got {self.threshold!r}")
        for name in ("min_budget", "max_budget"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"AdaptiveBudget.{name} must be a positive int (tokens), got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == float("inf"):
            raise ValueError(f"AdaptiveBudget.temperature must be a finite number > 0, got {t!r}")
        if self.min_budget > self.max_budget:
            raise ValueError(f"AdaptiveBudget.min_budget ({self.min_budget}) must be <= max_budget ({self.max_budget})")

    def page_bounds(self, page_size: int, max_pages: int | None = None) -> tuple[int, int]:
        """(K_min, K_max) in pages, the last page included; with ``max_pages`` (the page
        table width) both are capped at it — no row can hold more pages, so the
        selection is unchanged and the output is no wider than the table."""
        k_min, k_max = -(-self.min_budget // page_size), -(-self.max_budget // page_size)
        if max_pages is not None:
            k_max = min(k_max, max_pages)
            k_min = min(k_min, k_max)
        return k_min, k_max


def _row_scores(q, kmin, kmax, page_table, seq_lens, page_size, gqa_mode, aggregate):
    """Per sequence: (scores [R, n] float64, divisor A) for the selection rows."""
    B, Hq, _ = q.shape
    Hkv = kmin.shape[1]
    G = Hq // Hkv
    out = [
        selection_rows_ref(s.double(), Hkv, gqa_mode, aggregate, torch.isfinite(q[b].float()).all(-1))  # [R, n]
        for b, s in enumerate(page_scores_ref(q, kmin, kmax, page_table, seq_lens, page_size))
    ]
    div = G if (gqa_mode == "shared" and aggregate == "sum") else 1
    return out, div


def _mass(z: torch.Tensor) -> torch.Tensor:
    """softmax over dim 1; a row holding +inf logits gives them equal shares of the whole mass
    (the softmax's limit; torch.softmax would give NaN)."""
    inf = torch.isinf(z) & (z > 0)
    has = inf.any(dim=1, keepdim=True)
    lim = inf.double() / inf.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(has, lim, torch.softmax(torch.where(has, torch.zeros_like(z), z), dim=1))


def adaptive_k_ref(
    scores: torch.Tensor, threshold: float, k_min: int, k_max: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [R, n] (upper bounds, already aggregated) -> (K [R] int64, order [R, n-1]).

    ``scale`` multiplies the scores into estimated logits (sm_scale / A).
    """
    scores = scores.cpu()  # the reference runs on the CPU (stable sort, float64), whatever the inputs' device
    scores = scores.nan_to_num(nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN ranks as +inf
    R, n = scores.shape
    z = scores.double() * scale
    m = _mass(z)  # [R, n] estimated mass
    order = torch.sort(scores[:, : n - 1], dim=1, descending=True, stable=True).indices  # [R, n-1]
    prefix = m[:, n - 1 : n] + torch.cumsum(torch.gather(m[:, : n - 1], 1, order), dim=1)  # [R, n-1]: k = 1..n-1
    mass0 = m[:, n - 1]  # k = 0
    reached = torch.cat([(mass0 >= threshold)[:, None], prefix >= threshold], dim=1)  # [R, n]
    idx = torch.arange(n).expand(R, n)
    k_star = torch.where(reached, idx, torch.full_like(idx, n - 1)).amin(dim=1)  # [R]
    K = (k_star + 1).clamp(min=k_min, max=k_max)
    return K, order


def select_pages_adaptive_ref(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D]
    kmax: torch.Tensor,  # [P, Hkv, D]
    page_table: torch.Tensor,  # [B, max_pages]
    seq_lens: torch.Tensor,  # [B]
    page_size: int,
    adaptive: AdaptiveBudget,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
    return_k: bool = False,
):
    """[B, Hsel, K_max] int32 selected logical pages (see module doc).

    With ``return_k`` also the pages attended per row, [B, Hsel] int64 (``min(n, K)``).
    """
    B, Hq, D = q.shape
    k_min, k_max = adaptive.page_bounds(page_size, page_table.shape[1])
    scale0 = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    rows_scores, div = _row_scores(q, kmin, kmax, page_table, seq_lens, page_size, gqa_mode, aggregate)
    R = rows_scores[0].shape[0]
    out = torch.full((B, R, k_max), -1, dtype=torch.int32)
    counts = torch.zeros(B, R, dtype=torch.int64)
    for b, s in enumerate(rows_scores):
        n = s.shape[1]
        K, order = adaptive_k_ref(s, adaptive.threshold, k_min, k_max, scale0 / (div * adaptive.temperature))
        for r in range(R):
            k = int(K[r])
            if n <= k:
                ids = torch.arange(n)
            else:
                ids = torch.cat([order[r, : k - 1].sort().values, torch.tensor([n - 1])])
            out[b, r, : len(ids)] = ids.to(torch.int32)
            counts[b, r] = len(ids)
    out = out.to(q.device)
    return (out, counts) if return_k else out


def adaptive_margin_ref(
    q,
    kmin,
    kmax,
    page_table,
    seq_lens,
    page_size: int,
    adaptive: AdaptiveBudget,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
) -> float:
    """Smallest |prefix mass - threshold| over all rows and prefixes (float64).

    Kernel and reference may legitimately differ by one page where this is below the
    float32 rounding of a sum of masses (about 1e-6); tests require a larger margin.
    """
    D = q.shape[2]
    scale0 = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    rows_scores, div = _row_scores(q, kmin, kmax, page_table, seq_lens, page_size, gqa_mode, aggregate)
    best = math.inf
    for s in rows_scores:
        n = s.shape[1]
        m = _mass(s * (scale0 / (div * adaptive.temperature)))
        order = torch.sort(s[:, : n - 1], dim=1, descending=True, stable=True).indices
        prefix = torch.cat(
            [m[:, n - 1 :], m[:, n - 1 : n] + torch.cumsum(torch.gather(m[:, : n - 1], 1, order), dim=1)], dim=1
        )
        best = min(best, float((prefix - adaptive.threshold).abs().min()))
    return best

"""Quality objective: attention recall of Quest's page selection on synthetic traces.

``quality_fn(page_size, budget, gqa_mode) -> float`` in [0, 1] is pluggable (the tuner
takes any such callable). :func:`default_quality_fn` picks the tuner's default: recall on
the real model traces of ``questkern quality traces`` when they are cached
(:func:`questkern.quality.objective`), else :func:`synthetic_recall` below. Recall is the fraction of dense softmax attention mass that falls on the tokens
of the selected pages, averaged over query heads and sequences.

The synthetic trace plants a few high-attention spans in Gaussian keys: each span is a
run of 1-8 tokens at a random position whose keys point along a query direction (the
KV group's mean query, or one query head's own direction, so that ``per_head`` and
``shared`` selection differ), with varied strength. Spans straddle page boundaries, so
larger pages waste budget on unimportant neighbours - the page-size/budget trade-off
the Pareto front shows. Selection uses the float32 reference
(:func:`questkern.ops.select.select_pages_ref`), so the number does not depend on the
GPU or on kernel configs.
"""

from __future__ import annotations

import functools
import math

import torch

from questkern.ops.select import select_pages_ref

TRACE = dict(batch=4, seq_len=8192, num_kv_heads=2, group=4, head_dim=64, spans=16, seed=0)


@functools.lru_cache(maxsize=1)
def synthetic_trace(batch: int = 4, seq_len: int = 8192, num_kv_heads: int = 2, group: int = 4, head_dim: int = 64,
                    spans: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, D] and keys [B, T, Hkv, D] (float32, CPU) with planted attention spans."""
    g = torch.Generator().manual_seed(seed)
    B, T, Hkv, G, D = batch, seq_len, num_kv_heads, group, head_dim
    Hq = Hkv * G
    base = torch.randn(B, Hkv, 1, D, generator=g)
    q = (base + 0.7 * torch.randn(B, Hkv, G, D, generator=g)).reshape(B, Hq, D)  # [B, Hq, D]
    k = 0.5 * torch.randn(B, T, Hkv, D, generator=g)  # [B, T, Hkv, D]
    for b in range(B):
        for h in range(Hkv):
            for _ in range(spans):
                start = int(torch.randint(0, T - 8, (1,), generator=g))
                length = int(torch.randint(1, 9, (1,), generator=g))
                target = int(torch.randint(-1, G, (1,), generator=g))  # -1: the group's mean query
                qd = q[b, h * G:(h + 1) * G].mean(0) if target < 0 else q[b, h * G + target]
                # keys of real models concentrate on a few outlier channels: point the span
                # along the query's 8 largest channels, scaled so that its logit is `strength`
                top = qd.abs().topk(8).indices
                u = torch.zeros(D)
                u[top] = qd[top].sign()
                strength = 4.0 + 5.0 * float(torch.rand(1, generator=g))
                hot = strength * math.sqrt(D) / float(qd @ u) * u
                k[b, start:start + length, h] = 0.2 * k[b, start:start + length, h] + hot
    return q, k


def dense_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights of dense attention: [B, Hq, T] (scale 1/sqrt(D))."""
    G = q.shape[1] // k.shape[2]
    logits = torch.einsum("bhd,bthd->bht", q, k.repeat_interleave(G, dim=2)) / math.sqrt(k.shape[3])
    return torch.softmax(logits, dim=-1)


def attention_recall(q: torch.Tensor, k: torch.Tensor, page_size: int, budget: int, gqa_mode: str,
                     aggregate: str = "sum", probs: torch.Tensor | None = None) -> float:
    """Mean over (sequence, query head) of the dense softmax mass on the selected pages.

    q [B, Hq, D], k [B, T, Hkv, D] float32 (contiguous sequences; T need not be a
    multiple of page_size); ``probs`` [B, Hq, T] = :func:`dense_probs` when precomputed.
    """
    B, T, Hkv, D = k.shape
    Hq = q.shape[1]
    G = Hq // Hkv
    if probs is None:
        probs = dense_probs(q, k)
    n_pages = -(-T // page_size)
    pad = n_pages * page_size - T
    kp = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad))  # [B, n*PAGE, Hkv, D]
    valid = (torch.arange(n_pages * page_size) < T).view(1, n_pages, page_size, 1, 1)
    pages = kp.view(B, n_pages, page_size, Hkv, D)
    kmin = torch.where(valid, pages, torch.inf).amin(2).reshape(B * n_pages, Hkv, D)  # [B*n, Hkv, D]
    kmax = torch.where(valid, pages, -torch.inf).amax(2).reshape(B * n_pages, Hkv, D)
    table = torch.arange(B * n_pages, dtype=torch.int32).view(B, n_pages)  # [B, n]
    seq_lens = torch.full((B,), T, dtype=torch.int32)
    sel = select_pages_ref(q, kmin, kmax, table, seq_lens, page_size, budget, gqa_mode, aggregate)  # [B, Hsel, K]
    page_mass = torch.nn.functional.pad(probs, (0, pad)).view(B, Hq, n_pages, page_size).sum(-1)  # [B, Hq, n]
    rows = sel if sel.shape[1] == Hq else sel.repeat_interleave(G, dim=1)  # [B, Hq, K]
    mask = torch.zeros(B, Hq, n_pages + 1)
    mask.scatter_(2, torch.where(rows >= 0, rows, n_pages).long(), 1.0)  # -1 padding -> the spare column
    return float((page_mass * mask[..., :n_pages]).sum(-1).mean())


@functools.lru_cache(maxsize=1)
def _trace_probs() -> torch.Tensor:
    return dense_probs(*synthetic_trace(**TRACE))


@functools.lru_cache(maxsize=256)
def synthetic_recall(page_size: int, budget: int, gqa_mode: str = "shared") -> float:
    """Default ``quality_fn``: attention recall on :data:`TRACE` (deterministic, cached)."""
    q, k = synthetic_trace(**TRACE)
    return attention_recall(q, k, int(page_size), int(budget), gqa_mode, probs=_trace_probs())


def default_quality_fn():
    """The tuner's quality objective: real cached traces if any, else the synthetic one.

    Real traces live in ``$QUESTKERN_TRACE_DIR`` or ``~/.cache/questkern/traces`` (made by
    ``questkern quality traces``); reading them needs the ``quality`` extra.
    """
    try:
        from questkern.quality.objective import objective
        from questkern.quality.traces import list_traces

        if not list_traces(None):
            return synthetic_recall
    except ImportError:
        return synthetic_recall

    def trace_recall(page_size: int, budget: int, gqa_mode: str) -> float:
        return objective(page_size, budget, gqa_mode)

    trace_recall.__qualname__ = "questkern.quality.objective"
    return trace_recall

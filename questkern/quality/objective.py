"""Quality objective for the tuner: mean attention recall of a (page size, budget, GQA mode).

    from questkern.quality import objective
    r = objective(page_size=16, budget=2048, gqa_mode="shared", aggregate="sum")  # float in [0, 1]

The value is the mean, over cached traces x layers >= ``dense_layers`` x decode steps x
query heads, of the true softmax mass on the pages questkern's fixed-budget selection
picks (fp32 metadata). Recall curves over every K are computed once per (trace set,
page size, mode) and cached in the process, so sweeping budgets is cheap. With no
cached traces the objective falls back to synthetic traces and warns (numbers on
those say little about a real model: run ``questkern quality traces``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch

from questkern import validate as V
from questkern.quality import metrics as M
from questkern.ops.metadata.minmax import page_minmax
from questkern.quality.traces import Trace, load_traces


@lru_cache(maxsize=4)
def _traces(trace_dir: str | None, max_len: int | None) -> tuple[Trace, ...]:
    return tuple(load_traces(Path(trace_dir) if trace_dir else None, max_len=max_len))


@lru_cache(maxsize=32)
def _curves(
    trace_dir: str | None, max_len: int | None, page_size: int, gqa_mode: str, aggregate: str, dense_layers: int
) -> tuple[torch.Tensor, ...]:
    """Recall curves [Hq, n] per (trace, layer, step) sample."""
    out = []
    for tr in _traces(trace_dir, max_len):
        sm_scale = float(tr.info.get("sm_scale") or 1.0 / math.sqrt(tr.q.shape[-1]))
        Hkv = tr.k.shape[1]
        for layer in range(dense_layers, tr.num_layers):
            for t in range(tr.steps):
                S = tr.seq_len(t)
                q = tr.q[t, layer].float()
                k = tr.k[layer, :, :S].float()
                pm = M.page_sums(M.attention_probs(q, k, sm_scale), page_size)
                lo, hi = page_minmax(k, page_size)
                s = M.row_scores(M.page_scores(q, lo, hi), Hkv, gqa_mode, aggregate)
                out.append(M.mass_curve(pm, M.rows_to_heads(M.selection_order(s), q.shape[0])))
    return tuple(out)


def objective(
    page_size: int,
    budget: int,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    *,
    trace_dir: str | Path | None = None,
    max_len: int | None = None,
    dense_layers: int = 2,
) -> float:
    """Mean attention recall in [0, 1] of fixed-budget Quest selection on cached traces.

    max_len: only traces of at most this many tokens (faster; None = all).
    """
    V.check_choice("page_size", page_size, V.PAGE_SIZES)
    V.check_positive_int("budget", budget)
    V.check_choice("gqa_mode", gqa_mode, V.GQA_MODES)
    V.check_choice("aggregate", aggregate, V.AGGREGATES)
    k_pages = -(-budget // page_size)
    curves = _curves(
        str(trace_dir) if trace_dir else None,
        max_len,
        page_size,
        gqa_mode,
        aggregate if gqa_mode == "shared" else "sum",
        dense_layers,
    )
    if not curves:
        raise ValueError(f"no samples: every trace has <= dense_layers={dense_layers} layers")
    total, count = 0.0, 0
    for c in curves:
        k = min(k_pages, c.shape[1]) - 1
        total += float(c[:, k].sum())
        count += c.shape[0]
    return total / count


def clear_cache() -> None:
    """Forget loaded traces and curves (after recapturing traces in the same process)."""
    _curves.cache_clear()
    _traces.cache_clear()

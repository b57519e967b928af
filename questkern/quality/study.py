"""The quality study: recall / output error of Quest selection on cached traces.

For every trace, layer, decode step and page size it computes the true attention, the
page masses, and for each *variant* (GQA mode x aggregate x metadata type) the recall
and output-error curves over K (see :mod:`questkern.quality.metrics`). Each *policy*
then picks K per selection row:

* ``fixed``    — ``K = ceil(budget / page_size)`` for budgets in FIXED_BUDGETS tokens;
* ``prop``     — budget proportional to the context: ``K = ceil(ratio * S / page_size)``;
* ``adaptive`` — smallest page set whose estimated mass passes a threshold, capped by
  ``[ADAPTIVE_MIN, ADAPTIVE_MAX]`` tokens (:mod:`questkern.ops.select.adaptive_naive`),
  for THRESHOLDS x TEMPERATURES of the estimate;
* ``oracle``   — the best pages by true mass at each fixed budget (the ceiling of any
  page-granular selection; not implementable, shown for reference).

Outputs (``reports/data``):

* ``quality_recall.csv`` — one row per (kind, context, page_size, gqa_mode, aggregate,
  meta, policy, param, temperature): recall mean / p10 / min, output error mean / p90, pages and
  tokens attended per selection row, fraction of dense K/V bytes read, sample count.
  Samples are (trace, layer >= dense_layers, step, query head).
* ``quality_layers.csv`` — per (kind, context, layer, head) recall and error of
  ``fixed`` budgets at page 16, shared-sum, fp32 metadata.
* ``quality_answers.json`` — the headline answers derived from the two (see answers()).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from questkern.quality import metrics as M
from questkern.ops.metadata.minmax import page_minmax, round_meta
from questkern.quality.traces import Trace, list_traces, load_trace

FIXED_BUDGETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
PROP_RATIOS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)  # adaptive estimate: logits / T (upper bounds are over-confident at T=1)
ADAPTIVE_MIN, ADAPTIVE_MAX = 32, 4096
LAYER_BUDGETS = (64, 256, 1024)

# (gqa_mode, aggregate, meta); GQA variants with exact metadata, metadata variants on shared-sum
VARIANTS = (
    ("shared", "sum", "fp32"),
    ("shared", "max", "fp32"),
    ("per_head", "", "fp32"),
    ("shared", "sum", "bf16"),
    ("shared", "sum", "fp16"),
    ("shared", "sum", "fp8_e5m2"),
)


def policies(page_size: int, S: int) -> list[tuple[str, float, int | None, float]]:
    """(policy, param, fixed K or None for adaptive, temperature) for one page size and context S."""
    out: list[tuple[str, float, int | None, float]] = [
        ("fixed", b, -(-b // page_size), math.nan) for b in FIXED_BUDGETS
    ]
    out += [("prop", r, max(1, math.ceil(r * S / page_size)), math.nan) for r in PROP_RATIOS]
    out += [("adaptive", t, None, T) for T in TEMPERATURES for t in THRESHOLDS]
    return out


def step_metrics(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    page_size: int,
    sm_scale: float,
    variants=VARIANTS,
    dense: tuple | None = None,
) -> dict:
    """One layer, one decode step. q [Hq, D], k/v [Hkv, S, D].

    ``dense``: (p [Hq, S], p*v [Hq, S, D], out_dense [Hq, D]) when already computed
    (they do not depend on the page size). Returns {variant: {"recall","err": [n_pol, Hq],
    "pages": [n_pol, R]}} plus "oracle": recall [n_fixed, Hq] and "policies".
    """
    Hq, D = q.shape
    Hkv, S, _ = k.shape
    G = Hq // Hkv
    qf, kf = q.float(), k.float()
    p, pvt, out_dense = dense if dense is not None else dense_attention(qf, kf, v, sm_scale)
    pm = M.page_sums(p, page_size)  # [Hq, n]
    pv = M.page_sums(pvt, page_size)  # [Hq, n, D]
    n = pm.shape[1]
    pols = policies(page_size, S)
    fixed_k = torch.tensor([K for _, _, K, _ in pols if K is not None], dtype=torch.long)[
        :, None
    ]  # [n_fixed+n_prop, 1]
    k_min, k_max = -(-ADAPTIVE_MIN // page_size), -(-ADAPTIVE_MAX // page_size)
    kmin0, kmax0 = page_minmax(kf, page_size)  # [n, Hkv, D]
    res: dict = {"policies": pols}
    meta_cache: dict = {}
    for mode, agg, meta in variants:
        if meta not in meta_cache:
            lo, hi = round_meta(kmin0, kmax0, meta)
            meta_cache[meta] = M.page_scores(qf, lo, hi)  # [Hq, n]
        u = meta_cache[meta]
        s = M.row_scores(u, Hkv, mode, agg or "sum")  # [R, n]
        R = s.shape[0]
        order = M.selection_order(s)  # [R, n-1]
        order_h = M.rows_to_heads(order, Hq)
        curve = M.mass_curve(pm, order_h)  # [Hq, n]
        div = G if (mode == "shared" and agg == "sum") else 1
        ad = M.adaptive_pages(s, order, [sm_scale / (div * T) for T in TEMPERATURES], THRESHOLDS, k_min, k_max)
        K_rows = torch.cat([fixed_k.expand(-1, R), ad.reshape(-1, R)])  # policies() order: fixed, prop, adaptive
        K_rows = K_rows.clamp(max=n)  # a short sequence attends all its pages
        ks = M.rows_to_heads(K_rows.t(), Hq) - 1  # [Hq, n_pol]
        recall = torch.gather(curve, 1, ks).t()  # [n_pol, Hq]
        err = M.error_curve(pv, out_dense, curve, order_h, ks).t()
        res[(mode, agg, meta)] = {"recall": recall, "err": err, "pages": K_rows}
    orc = M.oracle_curve(pm)
    kf_idx = torch.tensor([min(-(-b // page_size), n) - 1 for b in FIXED_BUDGETS])
    res["oracle"] = orc[:, kf_idx].t()  # [n_fixed, Hq]
    res["n"] = n
    res["S"] = S
    return res


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float):
    """(p [Hq, S], p*v [Hq, S, D], dense output [Hq, D]) in float32."""
    G = q.shape[0] // k.shape[0]
    p = M.attention_probs(q.float(), k.float(), sm_scale)
    pvt = p[..., None] * v.float().repeat_interleave(G, dim=0)
    return p, pvt, pvt.sum(1)


class _Acc:
    """Collects per-sample blocks per group key, then summarizes one row per policy.

    ``add(key, names, recall=[n_pol, X], ...)``: row i of every array belongs to
    ``key + names[i]``; columns are samples (query heads or selection rows).
    """

    def __init__(self):
        self.blocks: dict = {}

    def add(self, key, names, **arrays):
        d = self.blocks.setdefault((key, tuple(names)), defaultdict(list))
        for name, a in arrays.items():
            d[name].append(torch.as_tensor(a, dtype=torch.float32).reshape(len(names), -1))

    def rows(self, key_names):
        out = []
        for (key, names), d in self.blocks.items():
            cat = {k: torch.cat(v, dim=1).numpy() for k, v in d.items()}
            for i, nm in enumerate(names):
                r = dict(zip(key_names, key + nm))
                rec = cat["recall"][i]
                r.update(
                    recall_mean=float(rec.mean()), recall_p10=float(np.percentile(rec, 10)), recall_min=float(rec.min())
                )
                if "err" in cat:
                    e = cat["err"][i]
                    r.update(err_mean=float(e.mean()), err_p90=float(np.percentile(e, 90)))
                for name in ("pages", "tokens", "read_frac"):
                    if name in cat:
                        r[f"{name}_mean"] = float(cat[name][i].mean())
                r["samples"] = int(rec.size)
                out.append(r)
        return out


def study_trace(
    trace: Trace, page_sizes, dense_layers: int, acc: _Acc, layer_acc: _Acc, variants=VARIANTS, step_stride: int = 1
) -> None:
    """Add one trace's samples (every ``step_stride``-th decode step) to the accumulators."""
    info = trace.info
    kind, ctx = info.get("kind", "?"), int(info.get("target", info.get("length", 0)))
    sm_scale = float(info.get("sm_scale") or 1.0 / math.sqrt(trace.q.shape[-1]))
    T, L, Hq, D = trace.q.shape
    Hkv = trace.k.shape[1]
    G = Hq // Hkv
    fixed_names = [("oracle", b, math.nan) for b in FIXED_BUDGETS]
    layer_idx = [FIXED_BUDGETS.index(b) for b in LAYER_BUDGETS]
    for layer in range(L):
        for t in range(0, T, step_stride):
            S = trace.seq_len(t)
            q = trace.q[t, layer].float()
            k = trace.k[layer, :, :S].float()
            dense = dense_attention(q, k, trace.v[layer, :, :S], sm_scale)
            for P in page_sizes:
                r = step_metrics(q, k, None, P, sm_scale, variants, dense=dense)
                names = [(pol, param, temp) for pol, param, _, temp in r["policies"]]
                for mode, agg, meta in variants:
                    d = r[(mode, agg, meta)]
                    rows_per_kv = G if mode == "per_head" else 1
                    tokens = (d["pages"] * P).clamp(max=S).float()  # [n_pol, R]
                    if layer >= dense_layers:
                        acc.add(
                            (kind, ctx, P, mode, agg, meta),
                            names,
                            recall=d["recall"],
                            err=d["err"],
                            pages=d["pages"].float(),
                            tokens=tokens,
                            read_frac=tokens * rows_per_kv / S,
                        )
                    if (P, mode, agg, meta) == (16, "shared", "sum", "fp32"):
                        for h in range(Hq):
                            layer_acc.add(
                                (kind, ctx, layer, h),
                                [(b,) for b in LAYER_BUDGETS],
                                recall=d["recall"][layer_idx, h],
                                err=d["err"][layer_idx, h],
                            )
                if layer >= dense_layers:
                    toks = torch.tensor([min(-(-b // P) * P, S) for b in FIXED_BUDGETS], dtype=torch.float32)[:, None]
                    pages = torch.tensor([min(-(-b // P), r["n"]) for b in FIXED_BUDGETS], dtype=torch.float32)[:, None]
                    acc.add(
                        (kind, ctx, P, "oracle", "", "fp32"),
                        fixed_names,
                        recall=r["oracle"],
                        pages=pages.expand(-1, Hq),
                        tokens=toks.expand(-1, Hq),
                        read_frac=toks.expand(-1, Hq) * G / S,
                    )


KEY_NAMES = ("kind", "context", "page_size", "gqa_mode", "aggregate", "meta", "policy", "param", "temperature")
LAYER_KEY_NAMES = ("kind", "context", "layer", "head", "budget")


def run_study(
    trace_dir: Path | None,
    out_dir: Path,
    *,
    page_sizes=(8, 16, 32, 64),
    dense_layers: int = 2,
    variants=VARIANTS,
    log=print,
    traces: list[Trace] | None = None,
    step_stride: int = 1,
) -> dict:
    """Compute the study from the cached traces and write the CSVs + answers JSON."""
    import pandas as pd

    from questkern._io import write_csv_atomic, write_json_atomic

    out_dir = Path(out_dir)
    if traces is None:
        paths = list_traces(trace_dir)
        if not paths:
            raise FileNotFoundError(f"no traces in {trace_dir}; run `questkern quality traces` first")
        sources = [(p.name, lambda p=p: load_trace(p)) for p in paths]
    else:
        sources = [(t.info.get("name", f"trace{i}"), lambda t=t: t) for i, t in enumerate(traces)]
    acc, layer_acc = _Acc(), _Acc()
    t0 = time.time()
    for i, (name, get) in enumerate(sources, 1):
        t1 = time.time()
        study_trace(get(), page_sizes, dense_layers, acc, layer_acc, variants, step_stride)
        left = (time.time() - t0) / i * (len(sources) - i)
        log(
            f"  [{i}/{len(sources)}] {name}: {time.time() - t1:.0f}s"
            + (f", ~{left:.0f}s left" if i < len(sources) else "")
        )
    summary = pd.DataFrame(acc.rows(KEY_NAMES)).sort_values(list(KEY_NAMES)).reset_index(drop=True)
    summary.insert(len(KEY_NAMES), "min_budget", np.where(summary["policy"] == "adaptive", ADAPTIVE_MIN, np.nan))
    summary.insert(len(KEY_NAMES) + 1, "max_budget", np.where(summary["policy"] == "adaptive", ADAPTIVE_MAX, np.nan))
    summary.insert(len(KEY_NAMES) + 2, "dense_layers", dense_layers)
    layers = pd.DataFrame(layer_acc.rows(LAYER_KEY_NAMES)).sort_values(list(LAYER_KEY_NAMES)).reset_index(drop=True)
    layers = layers.drop(columns=[c for c in ("recall_p10", "recall_min") if c in layers])
    write_csv_atomic(out_dir / "quality_recall.csv", summary, float_format="%.6g")
    write_csv_atomic(out_dir / "quality_layers.csv", layers, float_format="%.6g")
    from questkern.quality.answers import answers

    ans = answers(summary, _maybe_csv(out_dir / "quality_passkey.csv"))
    write_json_atomic(out_dir / "quality_answers.json", ans)
    log(
        f"study of {len(sources)} traces in {time.time() - t0:.0f}s -> {out_dir}/quality_recall.csv, quality_layers.csv, quality_answers.json"
    )
    return ans


def _maybe_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path, dtype={"expected": str, "answer": str}) if Path(path).exists() else None

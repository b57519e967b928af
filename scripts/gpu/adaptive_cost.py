"""GPU: cost of adaptive-budget selection vs fixed top-K (issue 6).

Run from the repo root: ``PYTHONPATH=. python3 scripts/gpu/adaptive_cost.py`` (or
``bash scripts/gpu/adaptive_cost.sh``). Writes ``reports/data/adaptive_cost_<gpu>.csv``.

1. Correctness on the GPU: adaptive kernel == float64 reference on integer-valued keys
   (8K context, shared and per_head, one and two stages).
2. Latency (CUDA-graph replays timed by triton.testing.do_bench, median, L2 flushed between reps), bf16, d=128, page 16,
   Hq/Hkv 32/8 and 32/32, batch 1 and 8, contexts 8K/32K/128K:
   * ``select``: fixed top-K at budget 2048 vs adaptive (threshold 0.9, 256..2048 tokens);
   * ``step``: select + sparse decode (+ combine), fixed vs adaptive.
   Keys are random ("flat": estimated mass spread, adaptive K near its max) or with
   query-aligned keys planted in 8 pages per head ("peaked": adaptive K small), so the
   decode side of the trade shows both ways.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import tempfile

import torch

from questkern.cache import PagedKVCache
from questkern.config import default_decode_config, default_select_config
from questkern._timing import time_fn
from questkern.ops.decode import decode_workspace, paged_decode
from questkern.ops.decode.kernel import decode_num_splits
from questkern.ops.select import select_pages
from questkern.ops.select.adaptive import adaptive_workspace, select_pages_adaptive
from questkern.ops.select.adaptive_naive import AdaptiveBudget, adaptive_margin_ref, select_pages_adaptive_ref
from questkern.ops.select.kernel import select_workspace

DEV = torch.device("cuda")
PAGE, D = 16, 128
BUDGET = 2048
ADAPTIVE = AdaptiveBudget(0.9, 256, 2048)


def make_cache(B, L, hkv, peaked: bool, integer: bool = False, seed: int = 0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    cache = PagedKVCache(B, L, hkv, D, page_size=PAGE, dtype=torch.bfloat16, device=DEV, shuffle=True, seed=seed)
    shape = (B, L, hkv, D)
    if integer:
        k = torch.randint(-4, 5, shape, generator=g, device=DEV).to(torch.bfloat16)
    else:
        k = torch.randn(shape, generator=g, device=DEV).to(torch.bfloat16)
    v = torch.randn(shape, generator=g, device=DEV).to(torch.bfloat16)
    q_dir = torch.randn(B, hkv, D, generator=g, device=DEV)
    if peaked:  # 8 pages per (sequence, kv head) whose keys align with the query direction
        hot = torch.randint(0, L // PAGE - 1, (B, hkv, 8), generator=g, device=DEV)
        for b in range(B):
            for h in range(hkv):
                for p in hot[b, h].tolist():
                    k[b, p * PAGE : (p + 1) * PAGE, h] += (3.0 * q_dir[b, h]).to(torch.bfloat16)
    cache.append(k, v)
    return cache, q_dir


def check_correctness():
    ok = True
    for mode, chunk in (("shared", 1024), ("per_head", 1024), ("shared", 64), ("per_head", 64)):
        cache, _ = make_cache(2, 8192, 2, peaked=False, integer=True, seed=3)
        g = torch.Generator(device=DEV).manual_seed(4)
        q = torch.randint(-3, 4, (2, 8, D), generator=g, device=DEV).to(torch.bfloat16)
        args = (q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, PAGE)
        ad = ADAPTIVE
        for i in range(30):
            if adaptive_margin_ref(*args, ad, mode) > 1e-4:
                break
            ad = AdaptiveBudget(ADAPTIVE.threshold * (1 - 0.01 * (i + 1)), ad.min_budget, ad.max_budget)
        ref = select_pages_adaptive_ref(*args, ad, mode).to(DEV)
        cfg = default_select_config(cache.page_table.shape[1], D)
        cfg = type(cfg)(**{**cfg.to_dict(), "chunk_pages": chunk})
        got = select_pages_adaptive(*args, ad, mode, config=cfg)
        same = torch.equal(got, ref)
        ok &= same
        print(f"check adaptive {mode:8s} chunk {chunk:4d}: {'OK' if same else 'MISMATCH'}")
    return ok


def bench_case(B, L, hq, hkv, peaked):
    cache, q_dir = make_cache(B, L, hkv, peaked)
    G = hq // hkv
    q = (q_dir.repeat_interleave(G, 1) + 0.5 * torch.randn(B, hq, D, device=DEV)).to(torch.bfloat16)
    max_pages = cache.page_table.shape[1]
    s_cfg = default_select_config(max_pages, D)
    d_cfg = default_decode_config(PAGE, D)
    k_fixed = min(-(-BUDGET // PAGE), max_pages)
    _, k_max = ADAPTIVE.page_bounds(PAGE, max_pages)
    rows = []
    for mode in ("shared", "per_head") if G > 1 else ("shared",):
        nrows = hkv if mode == "shared" else hq
        tabs = (cache.kmin, cache.kmax, cache.page_table, cache.seq_lens)
        out_f = torch.empty(B, nrows, k_fixed, dtype=torch.int32, device=DEV)
        phys_f = torch.empty_like(out_f)
        ws_f = select_workspace(B, nrows, max_pages, k_fixed, s_cfg, DEV)
        out_a = torch.empty(B, nrows, k_max, dtype=torch.int32, device=DEV)
        phys_a = torch.empty_like(out_a)
        ws_a = adaptive_workspace(B, nrows, max_pages, k_max, s_cfg, DEV)
        sel_f = lambda: select_pages(
            q, *tabs, PAGE, k_fixed, mode, "sum", s_cfg, out=out_f, out_phys=phys_f, workspace=ws_f
        )  # noqa: E731
        sel_a = lambda: select_pages_adaptive(
            q, *tabs, PAGE, ADAPTIVE, mode, "sum", config=s_cfg, out=out_a, out_phys=phys_a, workspace=ws_a
        )  # noqa: E731
        per_head = mode == "per_head"
        splits_f = decode_num_splits(d_cfg, B, hq, hkv, per_head, k_fixed, DEV)
        splits_a = decode_num_splits(d_cfg, B, hq, hkv, per_head, k_max, DEV)
        out = torch.empty(B, hq, D, dtype=torch.bfloat16, device=DEV)
        ws_df = decode_workspace(B, hq, splits_f, D, DEV)
        ws_da = decode_workspace(B, hq, splits_a, D, DEV)

        def step_f():
            sel_f()
            paged_decode(
                q,
                cache.k_cache,
                cache.v_cache,
                cache.page_table,
                cache.seq_lens,
                out_f,
                None,
                d_cfg,
                num_splits=splits_f,
                out=out,
                workspace=ws_df,
                selected_phys=phys_f,
            )

        def step_a():
            sel_a()
            paged_decode(
                q,
                cache.k_cache,
                cache.v_cache,
                cache.page_table,
                cache.seq_lens,
                out_a,
                None,
                d_cfg,
                num_splits=splits_a,
                out=out,
                workspace=ws_da,
                selected_phys=phys_a,
            )

        step_a()
        pages_a = float((out_a >= 0).sum(-1).float().mean())
        t = {
            name: time_fn(fn, rep_ms=100)  # CUDA graph replay, do_bench median, L2 flushed
            for name, fn in (
                ("select_fixed_us", sel_f),
                ("select_adaptive_us", sel_a),
                ("step_fixed_us", step_f),
                ("step_adaptive_us", step_a),
            )
        }
        row = dict(
            gpu=torch.cuda.get_device_name(),
            batch=B,
            context=L,
            hq=hq,
            hkv=hkv,
            head_dim=D,
            page_size=PAGE,
            gqa_mode=mode,
            keys="peaked" if peaked else "flat",
            fixed_budget=BUDGET,
            fixed_pages=k_fixed,
            threshold=ADAPTIVE.threshold,
            min_budget=ADAPTIVE.min_budget,
            max_budget=ADAPTIVE.max_budget,
            adaptive_pages_mean=round(pages_a, 2),
            **{k: round(v, 2) for k, v in t.items()},
            select_ratio=round(t["select_adaptive_us"] / t["select_fixed_us"], 3),
            step_ratio=round(t["step_adaptive_us"] / t["step_fixed_us"], 3),
        )
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("adaptive_cost.py needs a CUDA device", file=sys.stderr)
        return 2
    ok = check_correctness()
    rows = []
    for L in (8192, 32768, 131072):
        for B in (1, 8):
            if B * L > 8 * 32768 * 2:
                continue  # keep memory and time small
            for hq, hkv in ((32, 8), (32, 32)):
                for peaked in (False, True):
                    rows += bench_case(B, L, hq, hkv, peaked)
                    torch.cuda.empty_cache()
    slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    path = os.path.join("reports", "data", f"adaptive_cost_{slug}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    print(f"wrote {path} ({len(rows)} rows); correctness {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

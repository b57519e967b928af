"""Quick H100 exploration: select and decode configs at 32K/128K, batch 1 (issue 7 groundwork).

Prints, per case, the heuristic time and the best config of a small grid, each timed
with CUDA graphs + do_bench (median, L2 flushed); writes explore.csv to $OUT.
"""

import csv, itertools, os, torch
from questkern.bench.core import Case, build_cache
from questkern._timing import time_fn, device_info
from questkern.config import SelectConfig, DecodeConfig, default_select_config, default_decode_config
from questkern.ops.select import select_pages, select_workspace
from questkern.ops.decode import paged_decode, decode_workspace

out_dir = os.environ.get("OUT", "out")
dev = torch.device("cuda")
rows = []
print(device_info())
for (hq, hkv), L in itertools.product([(32, 32), (32, 8)], [32768, 131072]):
    case = Case(1, hq, hkv, 128, torch.bfloat16, L, 16, 2048)
    cache = build_cache(case, dev)
    q = torch.randn(1, hq, 128, device=dev, dtype=torch.bfloat16)
    K = 128
    maxp = cache.page_table.shape[1]
    res = {}
    for topk, chunk, warps, mw in itertools.product(["bisect", "radix"], [64, 512], [4, 8], [4, 16]):
        cfg = SelectConfig(
            chunk_pages=chunk, block_d=128 if chunk <= 128 else 64, num_warps=warps, merge_warps=mw, topk=topk
        )
        ws = select_workspace(1, hkv, maxp, K, cfg, dev)
        out = torch.empty(1, hkv, K, dtype=torch.int32, device=dev)
        outp = torch.empty_like(out)
        try:
            us = time_fn(
                lambda: select_pages(
                    q,
                    cache.kmin,
                    cache.kmax,
                    cache.page_table,
                    cache.seq_lens,
                    16,
                    K,
                    "shared",
                    "sum",
                    cfg,
                    out=out,
                    out_phys=outp,
                    workspace=ws,
                ),
                rep_ms=40,
            )
        except Exception as e:
            us = float("nan")
            print("fail", cfg, repr(e)[:200])
        res[cfg] = us
        rows.append(dict(op="select", hq=hq, hkv=hkv, L=L, cfg=cfg.to_dict(), us=us))
    dflt = default_select_config(maxp, 128)
    best = min(res, key=lambda c: res[c] if res[c] == res[c] else 1e9)
    print(
        f"select {hq}/{hkv} L={L}: default {dflt} {res.get(dflt, float('nan')):.1f}us | best {best} {res[best]:.1f}us"
    )
    sel = torch.empty(1, hkv, K, dtype=torch.int32, device=dev)
    selp = torch.empty_like(sel)
    select_pages(
        q,
        cache.kmin,
        cache.kmax,
        cache.page_table,
        cache.seq_lens,
        16,
        K,
        "shared",
        "sum",
        best,
        out=sel,
        out_phys=selp,
    )
    for r in sorted(res, key=lambda c: res[c] if res[c] == res[c] else 1e9)[:5]:
        print("   ", r, f"{res[r]:.1f}")
    res = {}
    for ppb, splits, warps, stages in itertools.product([2, 4, 8], [0], [4, 8], [1, 2]):
        cfg = DecodeConfig(pages_per_block=ppb, num_splits=splits, num_warps=warps, num_stages=stages)
        o = torch.empty_like(q)
        from questkern.ops.decode.kernel import decode_num_splits

        S = decode_num_splits(cfg, 1, hq, hkv, False, K, dev)
        ws = decode_workspace(1, hq, S, 128, dev)
        try:
            us = time_fn(
                lambda: paged_decode(
                    q,
                    cache.k_cache,
                    cache.v_cache,
                    cache.page_table,
                    cache.seq_lens,
                    sel,
                    None,
                    cfg,
                    num_splits=S,
                    out=o,
                    workspace=ws,
                    selected_phys=selp,
                ),
                rep_ms=40,
            )
        except Exception as e:
            us = float("nan")
            print("fail", cfg, repr(e)[:200])
        res[(cfg, S)] = us
        rows.append(dict(op="sparse_decode", hq=hq, hkv=hkv, L=L, cfg=cfg.to_dict(), splits=S, us=us))
    best = min(res, key=lambda c: res[c] if res[c] == res[c] else 1e9)
    dkey = [k for k in res if k[0] == default_decode_config(16, 128)][0]
    print(f"sparse {hq}/{hkv} L={L}: default {dkey} {res[dkey]:.1f}us | best {best} {res[best]:.1f}us")
    torch.cuda.empty_cache()
with open(os.path.join(out_dir, "explore.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["op", "hq", "hkv", "L", "cfg", "splits", "us"])
    w.writeheader()
    w.writerows(rows)

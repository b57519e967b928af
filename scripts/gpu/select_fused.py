"""Select with the merge fused into the tile kernel vs a separate merge launch (H100, issue 7).

Same inputs, outputs compared for equality, each timed with CUDA graphs + do_bench
(median, L2 flushed); prints one line per shape and writes select_fused.csv to $OUT.
"""

import csv, dataclasses, itertools, os, torch
from questkern.bench.core import Case, build_cache
from questkern._timing import device_info, time_fn
from questkern.config import default_select_config
from questkern.ops.select import select_pages, select_workspace

print(device_info())
rows = []
for B, (hq, hkv), L in itertools.product([1, 8], [(32, 32), (32, 8)], [32768, 131072]):
    cache = build_cache(Case(B, hq, hkv, 128, torch.bfloat16, L, 16, 2048), torch.device("cuda"))
    q = torch.randn(B, hq, 128, device="cuda", dtype=torch.bfloat16)
    maxp = cache.page_table.shape[1]
    res, outs = {}, {}
    for fused in (False, True):
        cfg = dataclasses.replace(default_select_config(maxp, 128), fused_merge=fused)
        ws = select_workspace(B, hkv, maxp, 128, cfg, q.device)
        out = torch.empty(B, hkv, 128, dtype=torch.int32, device="cuda")
        ph = torch.empty_like(out)
        fn = lambda: select_pages(
            q,
            cache.kmin,
            cache.kmax,
            cache.page_table,
            cache.seq_lens,
            16,
            128,
            "shared",
            "sum",
            cfg,
            out=out,
            out_phys=ph,
            workspace=ws,
        )
        res[fused] = time_fn(fn, rep_ms=100)
        fn()
        torch.cuda.synchronize()
        outs[fused] = (out.clone(), ph.clone())
        assert torch.count_nonzero(ws[3]) == 0
    same = all(torch.equal(a, b) for a, b in zip(outs[False], outs[True]))
    print(f"B={B} {hq}/{hkv} L={L}: separate merge {res[False]:.1f} us, fused {res[True]:.1f} us, identical={same}")
    rows.append(
        dict(batch=B, q_heads=hq, kv_heads=hkv, seq_len=L, separate_us=res[False], fused_us=res[True], identical=same)
    )
    torch.cuda.empty_cache()
with open(os.path.join(os.environ.get("OUT", "."), "select_fused.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)

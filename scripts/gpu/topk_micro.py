"""Top-K micro-benchmark and select sweep (issues 3/7): the merge's top-K, old vs new.

  floor            a graph with one trivial kernel (what any measured launch costs)
  bisect2          the former top-K: 2 bits per step, a [N, 4] count per step, all 32 bits
  prefix           the current ``_topk_mask``: 2 bits per step (3 counts in one tuple
                   reduction), only the bits where the row's keys differ, stopping once
                   exactly k keys are at/above the prefix
  prefix1          the same, 1 bit per step (its first version, runs/010)
  radix            ``_topk_mask_radix`` (8-bit histograms)
  noTopK           the same loads and emit with a trivial mask: the merge's fixed cost
                   (folded in from the former scripts/gpu/merge_micro.py)
Rows of N candidate scores, k = 127, emit included (as in the merge kernel). Then the
whole select at 32K/128K (MHA 32/32 and GQA 32/8) over a grid of chunk/merge warps,
next to torch.topk on the same scores. CUDA graphs + do_bench median, L2 flushed.
Column ``ab`` holds the run's A/B flag (runs/013: MHA scores elementwise vs tl.dot; runs/015:
the score stream's row-major grid order), each a module switch since removed (both
variants now measure the same code).
Writes topk_micro.csv to $OUT. ``python3 scripts/gpu/topk_micro.py select`` skips the merge micro-benchmark.
"""

import csv, itertools, os, sys
import torch, triton, triton.language as tl
from questkern.bench.core import Case, build_cache
from questkern._timing import time_fn, device_info
from questkern.config import SelectConfig, default_select_config
from questkern.ops.select import select_pages, select_workspace
from questkern.ops.select.kernel import _topk_mask, _topk_mask_radix, _emit_selection
from questkern.ops.select.naive import page_scores_ref, selection_rows_ref


@triton.jit
def _topk_mask_bisect2(scores, valid, k):  # the former _topk_mask, kept here for comparison
    s = tl.where(valid, scores, float("-inf")) + 0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    thr = tl.min(key, axis=0) * 0 - 2147483647 - 1
    thr = tl.where(tl.sum((key >= 0).to(tl.int32), axis=0) >= k, 0, thr)
    o_j = tl.arange(0, 4)
    for i in tl.static_range(15):
        cand = thr + (o_j << (29 - 2 * i))
        cnt = tl.sum((key[:, None] >= cand[None, :]).to(tl.int32), axis=0)
        thr = thr + (tl.max(tl.where(cnt >= k, o_j, 0), axis=0) << (29 - 2 * i))
    cand = thr + 1
    thr = tl.where(tl.sum((key >= cand).to(tl.int32), axis=0) >= k, cand, thr)
    gt = key > thr
    eq = key == thr
    n_gt = tl.sum(gt.to(tl.int32), axis=0)
    rank = tl.cumsum(eq.to(tl.int32), axis=0)
    return (gt | (eq & (rank <= k - n_gt))) & valid


@triton.jit
def _topk_mask_prefix1(scores, valid, k):
    """First version of the current one: one bit per step (runs/010)."""
    INT_MIN: tl.constexpr = -2147483647 - 1
    s = tl.where(valid, scores, float("-inf")) + 0.0  # + 0.0 folds -0.0 into +0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # [N] int32, same order as the scores
    key = tl.where(valid, key, INT_MIN)
    n_valid = tl.sum(valid.to(tl.int32), axis=0)
    hi = tl.max(key, axis=0)
    lo = tl.min(tl.where(valid, key, hi), axis=0)
    diff = hi ^ lo  # the bits where valid keys can differ are at or below its highest set bit
    # highest set bit by the float exponent (rounding up can overestimate by one: harmless)
    top = tl.where(diff < 0, 31, (diff.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 127)
    top = tl.maximum(top, -1)
    mask = tl.where(top >= 31, 0, -1 << tl.minimum(top + 1, 31))  # the shared high bits
    thr_u = (hi ^ INT_MIN) & mask  # <= every valid key's u: count(key >= thr) = n_valid
    c_thr = n_valid
    bit = tl.where(n_valid > k, top, -1)  # k >= n_valid: every valid entry, no search
    thr_u = tl.where(n_valid > k, thr_u, 0)
    while (bit >= 0) & (c_thr != k):
        cand_u = thr_u | (1 << bit)
        c = tl.sum((key >= (cand_u ^ INT_MIN)).to(tl.int32), axis=0)
        thr_u = tl.where(c >= k, cand_u, thr_u)
        c_thr = tl.where(c >= k, c, c_thr)
        bit -= 1
    thr = thr_u ^ INT_MIN
    gt = key > thr
    eq = (key == thr) & valid
    n_gt = tl.sum(gt.to(tl.int32), axis=0)
    rank = tl.cumsum(eq.to(tl.int32), axis=0)
    return (gt | (eq & (rank <= k - n_gt))) & valid


@triton.jit
def _noop(x):
    tl.store(x, tl.load(x) + 1)


@triton.jit
def _merge_variant(
    cand_idx, cand_score, out_idx, K, N_CAND, BLOCK_N: tl.constexpr, FILL: tl.constexpr, MODE: tl.constexpr
):
    i_r = tl.program_id(0)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N_CAND
    ids = tl.load(cand_idx + i_r * N_CAND + o_n, mask=m_n, other=-1)
    scores = tl.load(cand_score + i_r * N_CAND + o_n, mask=m_n, other=float("-inf"))
    if MODE == 0:
        sel = _topk_mask_bisect2(scores, ids >= 0, K - 1)
    elif MODE == 1:
        sel = _topk_mask(scores, ids >= 0, K - 1)
    elif MODE == 2:
        sel = _topk_mask_radix(scores, ids >= 0, K - 1)
    elif MODE == 3:
        sel = _topk_mask_prefix1(scores, ids >= 0, K - 1)
    else:  # no top-K: the merge's loads and emit alone (its fixed cost); K - 1 entries that
        # depend on the loaded scores (so the loads stay) and keep the emit within its row
        sel = (o_n < K - 1) & (ids >= 0) & (scores == scores)
    _emit_selection(out_idx + i_r * K, out_idx + i_r * K, sel, ids, ids, N_CAND + 1, 0, K, FILL, False)


out_dir = os.environ.get("OUT", "out")
info = device_info()
print(info)
rows_out = []
x = torch.zeros(1, device="cuda", dtype=torch.int32)
floor = time_fn(lambda: _noop[(1,)](x), rep_ms=50)
print(f"floor {floor:.2f} us")
rows_out.append(dict(kind="floor", us=floor))
names = ["bisect2", "prefix", "radix", "prefix1", "noTopK"]
only_select = "select" in sys.argv[1:]  # skip the merge micro-benchmark
for rows, n, dist in [] if only_select else itertools.product([32], [1024, 2048, 8192], ["randn", "quest"]):
    ids = torch.arange(n, device="cuda", dtype=torch.int32).repeat(rows, 1).contiguous()
    sc = torch.randn(rows, n, device="cuda")
    if dist == "quest":  # positive upper bounds of similar size, as page scores are
        sc = 20.0 + 3.0 * sc
    res = {}
    outs = {}
    for mode, warps in itertools.product(range(5), (2, 4, 8, 16)):
        out = torch.full((rows, 128), -7, device="cuda", dtype=torch.int32)
        f = lambda: _merge_variant[(rows,)](ids, sc, out, 128, n, BLOCK_N=n, FILL=128, MODE=mode, num_warps=warps)
        us = time_fn(f, rep_ms=40)
        f()
        torch.cuda.synchronize()
        outs[(mode, warps)] = out.clone()
        res[(mode, warps)] = us
        rows_out.append(dict(kind="merge", rows=rows, n=n, dist=dist, variant=names[mode], warps=warps, us=us))
    ref = outs[(0, 4)]
    agree = all(torch.equal(o, ref) for (m, _), o in outs.items() if names[m] != "noTopK")
    print(
        f"rows={rows} N={n} {dist}: "
        + "  ".join(f"{names[m]}/w{w}={u:.1f}" for (m, w), u in res.items())
        + f"  agree={agree}"
    )

dev = torch.device("cuda")
for (hq, hkv), L in itertools.product([(32, 32), (32, 8)], [32768, 131072]):
    case = Case(1, hq, hkv, 128, torch.bfloat16, L, 16, 2048)
    cache = build_cache(case, dev)
    q = torch.randn(1, hq, 128, device=dev, dtype=torch.bfloat16)
    K = 128
    maxp = cache.page_table.shape[1]
    sc = selection_rows_ref(
        page_scores_ref(q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, 16)[0], hkv, "shared"
    )
    sc = sc.reshape(-1, sc.shape[-1]).contiguous().float()
    t_topk = time_fn(lambda: torch.topk(sc, K, dim=-1), rep_ms=40)
    dflt = default_select_config(maxp, 128)
    # the score stream (chunk < K) with and without the fused merge (run 015 also varied the grid order)
    grid = [(dflt, True)]
    for c, t, fused, rm in itertools.product([32, 64], [1, 2], [False, True], [True]):
        for w in (4, 8) if fused else (4,):
            for mw in (4,) if fused else (4, 8):
                grid.append(
                    (
                        SelectConfig(
                            chunk_pages=c,
                            block_d=128,
                            num_warps=w,
                            merge_warps=mw,
                            tiles_per_program=t,
                            fused_merge=fused,
                        ),
                        rm,
                    )
                )
    ref = torch.empty(1, hkv, K, dtype=torch.int32, device=dev)
    select_pages(q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, 16, K, "shared", "sum", dflt, out=ref)
    best = None
    mismatches = 0
    for cfg, ew in grid:
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
        out.fill_(-7)
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
            cfg,
            out=out,
            out_phys=outp,
            workspace=ws,
        )
        mismatches += int(not torch.equal(out, ref))
        rows_out.append(dict(kind="select", hq=hq, hkv=hkv, L=L, cfg=cfg.to_dict(), ab=ew, us=us, topk_torch_us=t_topk))
        if us == us and (best is None or us < best[1]):
            best = (cfg, us, ew)
    print(
        f"select {hq}/{hkv} L={L}: torch.topk {t_topk:.1f}us | default {rows_out[-len(grid)]['us']:.1f}us | best {best[1]:.1f}us {best[0]} row_major={best[2]} | selections differing from the default config's: {mismatches}"
    )
    for ew in sorted({e for _, e in grid}):
        for fu in (False, True):
            sub = [r["us"] for r in rows_out[-len(grid) :] if r["ab"] == ew and r["cfg"]["fused_merge"] == fu]
            print(f"   row_major={ew} fused_merge={fu}: best {min(sub):.1f}us")
        print(f"   best with row_major={ew}: {min(r['us'] for r in rows_out[-len(grid) :] if r['ab'] == ew):.1f}us")
    del cache
    torch.cuda.empty_cache()
with open(os.path.join(out_dir, "topk_micro.csv"), "w", newline="") as f:
    keys = ["kind", "rows", "n", "dist", "variant", "warps", "hq", "hkv", "L", "cfg", "ab", "us", "topk_torch_us"]
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows_out)
    f.write(f"# {info}\n")

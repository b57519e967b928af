"""Micro-benchmarks that split the select merge's time (issue 7 investigation).

Times with CUDA graphs + do_bench (median, L2 flushed), on one device:
  floor          a graph with one trivial kernel (what any measured launch costs)
  merge_full     the real merge kernel over N candidates per row
  merge_noTopK   same loads/stores, selection replaced by a trivial mask
  merge_topkOnly same loads + top-K, result reduced to one int per row (no scatter)
"""
import torch, triton, triton.language as tl
from questkern.bench.timing import time_fn, device_info
from questkern.ops.select.kernel import _topk_mask, _topk_mask_radix, _emit_selection


@triton.jit
def _noop(x):
    tl.store(x, tl.load(x) + 1)


@triton.jit
def _merge_variant(cand_idx, cand_score, out_idx, K, N_CAND, BLOCK_N: tl.constexpr, FILL: tl.constexpr, MODE: tl.constexpr):
    i_r = tl.program_id(0)
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N_CAND
    ids = tl.load(cand_idx + i_r * N_CAND + o_n, mask=m_n, other=-1)
    scores = tl.load(cand_score + i_r * N_CAND + o_n, mask=m_n, other=float("-inf"))
    if MODE == 0:  # no top-K
        sel = (scores > 1.5) & (ids >= 0)
    elif MODE == 1:
        sel = _topk_mask(scores, ids >= 0, K - 1)
    else:
        sel = _topk_mask_radix(scores, ids >= 0, K - 1)
    if MODE == 3:
        sel = _topk_mask(scores, ids >= 0, K - 1)
        tl.store(out_idx + i_r * K, tl.sum(sel.to(tl.int32), axis=0))
    else:
        _emit_selection(out_idx + i_r * K, out_idx + i_r * K, sel, ids, ids, 100, 0, K, FILL, False)


print(device_info())
x = torch.zeros(1, device="cuda", dtype=torch.int32)
print(f"floor(1 tiny kernel graph) {time_fn(lambda: _noop[(1,)](x)):.2f} us")
for rows, n in [(8, 2048), (32, 2048), (8, 8192), (32, 8192), (8, 512)]:
    ids = torch.arange(n, device="cuda", dtype=torch.int32).repeat(rows, 1).contiguous()
    sc = torch.randn(rows, n, device="cuda")
    out = torch.empty(rows, 128, device="cuda", dtype=torch.int32)
    res = []
    for mode, name in [(0, "noTopK"), (1, "bisect"), (2, "radix"), (3, "bisect_noEmit")]:
        for warps in (4, 8, 16):
            us = time_fn(lambda: _merge_variant[(rows,)](ids, sc, out, 128, n, BLOCK_N=n, FILL=128, MODE=mode, num_warps=warps), rep_ms=50)
            res.append(f"{name}/w{warps}={us:.1f}")
    print(f"rows={rows} N={n}: " + "  ".join(res))

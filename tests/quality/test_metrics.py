"""Recall / error curves and the adaptive K agree with questkern's selection references."""

from __future__ import annotations

import math

import pytest
import torch

from questkern.ops.decode.naive import paged_attention_ref
from questkern.ops.select import select_pages_ref
from questkern.ops.select.adaptive_naive import AdaptiveBudget, select_pages_adaptive_ref
from questkern.quality import metrics as M
from questkern.ops.metadata.minmax import page_minmax

HQ, HKV, D, S, PAGE = 4, 2, 32, 203, 16


@pytest.fixture(scope="module")
def step():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(HQ, D, generator=g).to(torch.bfloat16).float()
    k = (torch.randn(HKV, S, D, generator=g) + 2 * torch.randn(HKV, 1, D, generator=g)).to(torch.bfloat16).float()
    v = torch.randn(HKV, S, D, generator=g)
    n = -(-S // PAGE)
    kmin, kmax = page_minmax(k, PAGE)  # [n, Hkv, D]
    table = torch.arange(n, dtype=torch.int32)[None]
    lens = torch.tensor([S], dtype=torch.int32)
    pad = n * PAGE - S
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(HKV, n, PAGE, D).transpose(0, 1)
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(HKV, n, PAGE, D).transpose(0, 1)
    return q, k, v, kmin, kmax, table, lens, kp, vp


@pytest.mark.parametrize("mode,agg", [("shared", "sum"), ("shared", "max"), ("per_head", "sum")])
def test_curves_match_select_pages_ref(step, mode, agg):
    q, k, v, kmin, kmax, table, lens, kp, vp = step
    scale = 1 / math.sqrt(D)
    p = M.attention_probs(q, k, scale)
    vv = v.repeat_interleave(HQ // HKV, 0)
    pm, pv = M.page_sums(p, PAGE), M.page_sums(p[..., None] * vv, PAGE)
    out_dense = torch.einsum("hs,hsd->hd", p, vv)
    s = M.row_scores(M.page_scores(q, kmin, kmax), HKV, mode, agg)
    order_h = M.rows_to_heads(M.selection_order(s), HQ)
    curve = M.mass_curve(pm, order_h)
    err = M.error_curve(pv, out_dense, curve, order_h)
    assert torch.allclose(curve[:, -1], torch.ones(HQ), atol=1e-5) and (curve.diff(dim=1) >= 0).all()
    dense_ref = paged_attention_ref(q[None], kp, vp, table, lens)[0]
    for budget in (16, 48, 100, 160):
        sel = select_pages_ref(q[None], kmin, kmax, table, lens, PAGE, budget, mode, agg)[0]
        K = min(-(-budget // PAGE), curve.shape[1])
        torch.testing.assert_close(curve[:, K - 1], M.selection_recall(p, sel, PAGE), rtol=1e-5, atol=1e-6)
        sparse = paged_attention_ref(q[None], kp, vp, table, lens, sel[None])[0]
        want = (sparse - dense_ref).norm(dim=-1) / dense_ref.norm(dim=-1)
        torch.testing.assert_close(err[:, K - 1], want, rtol=1e-3, atol=1e-5)
    assert (M.oracle_curve(pm) >= curve - 1e-6).all()


@pytest.mark.parametrize("mode,agg", [("shared", "sum"), ("shared", "max"), ("per_head", "sum")])
def test_adaptive_pages_match_reference(step, mode, agg):
    q, k, v, kmin, kmax, table, lens, *_ = step
    s = M.row_scores(M.page_scores(q, kmin, kmax), HKV, mode, agg)
    order = M.selection_order(s)
    thresholds = (0.3, 0.8, 0.95, 0.999)
    div = HQ // HKV if (mode, agg) == ("shared", "sum") else 1
    ks = M.adaptive_pages(s, order, 1 / math.sqrt(D) / div, thresholds, 2, 10)
    seen = set()
    for i, t in enumerate(thresholds):
        _, counts = select_pages_adaptive_ref(
            q[None], kmin, kmax, table, lens, PAGE, AdaptiveBudget(t, 32, 160), mode, agg, return_k=True
        )
        assert torch.equal(ks[i].clamp(max=s.shape[1]), counts[0])
        seen.update(counts[0].tolist())
    assert len(seen) > 2  # the thresholds really change K

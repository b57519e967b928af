"""Adaptive-budget selection: the Triton kernel (interpreter on CPU) against its reference,
and the reference's own rules.

Inputs are integer valued so page scores are exact in float32; the masses (exp) are not,
so each case checks that no prefix mass lies within 1e-4 of the threshold (where float32
and float64 could legitimately disagree) and nudges the threshold when one does.
"""

from __future__ import annotations

import pytest
import torch

from questkern.config import SelectConfig
from questkern.ops.select import select_pages_ref
from questkern.ops.select.adaptive import select_pages_adaptive
from questkern.ops.select.adaptive_naive import AdaptiveBudget, adaptive_margin_ref, select_pages_adaptive_ref

MARGIN = 1e-4


def make_case(lens, hq, hkv, d=64, page=16, seed=0, meta_dtype=torch.float32, q_dtype=torch.bfloat16, spread=3):
    """Integer-valued q and page metadata with a shuffled page table."""
    g = torch.Generator().manual_seed(seed)
    B = len(lens)
    max_pages = max(-(-n // page) for n in lens) + 1
    P = B * max_pages + 3
    a = torch.randint(-spread - 1, spread + 2, (P, hkv, d), generator=g).float()
    b = torch.randint(-spread - 1, spread + 2, (P, hkv, d), generator=g).float()
    kmin, kmax = torch.minimum(a, b).to(meta_dtype), torch.maximum(a, b).to(meta_dtype)
    q = torch.randint(-spread, spread + 1, (B, hq, d), generator=g).float().to(q_dtype)
    perm = torch.randperm(P, generator=g)[: B * max_pages].view(B, max_pages).to(torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return q, kmin, kmax, perm, seq_lens


def safe_threshold(case, page, adaptive, mode, agg):
    """Nudge the threshold until every prefix mass is at least MARGIN away from it."""
    q, kmin, kmax, table, lens = case
    for i in range(50):
        ad = AdaptiveBudget(
            adaptive.threshold * (1 - 0.0137 * i) if i else adaptive.threshold,
            adaptive.min_budget,
            adaptive.max_budget,
            adaptive.temperature,
        )
        if adaptive_margin_ref(q, kmin, kmax, table, lens, page, ad, mode, agg) > MARGIN:
            return ad
    raise AssertionError("no threshold with a safe margin found")  # pragma: no cover


CASES = [
    # lens, hq, hkv, page, threshold, min_budget, max_budget, mode, agg, chunk
    ([300, 17, 200], 4, 2, 16, 0.9, 32, 256, "shared", "sum", 64),
    ([300, 17, 200], 4, 2, 16, 0.5, 16, 160, "shared", "max", 64),
    ([300, 130], 4, 2, 16, 0.8, 32, 256, "per_head", "sum", 64),
    ([250], 1, 1, 16, 0.95, 16, 128, "shared", "sum", 64),
    ([1100, 333], 2, 1, 16, 0.9, 32, 640, "shared", "sum", 16),  # two stages: 69 pages in tiles of 16
    ([1100, 40], 4, 2, 32, 0.7, 32, 512, "per_head", "sum", 16),  # two stages, per head
    ([520], 8, 2, 8, 0.99, 8, 256, "shared", "sum", 16),  # two stages, page 8, K_max 32 > chunk
]


@pytest.mark.parametrize("lens,hq,hkv,page,thr,kmin_b,kmax_b,mode,agg,chunk", CASES)
def test_kernel_matches_reference(lens, hq, hkv, page, thr, kmin_b, kmax_b, mode, agg, chunk):
    case = make_case(lens, hq, hkv, page=page, seed=len(lens) + hq + page)
    ad = safe_threshold(case, page, AdaptiveBudget(thr, kmin_b, kmax_b), mode, agg)
    q, kmin, kmax, table, seq_lens = case
    ref, counts = select_pages_adaptive_ref(q, kmin, kmax, table, seq_lens, page, ad, mode, agg, return_k=True)
    cfg = SelectConfig(chunk_pages=chunk, block_d=32)
    got = select_pages_adaptive(q, kmin, kmax, table, seq_lens, page, ad, mode, agg, config=cfg)
    assert got.dtype == torch.int32 and got.shape == ref.shape
    assert torch.equal(got.cpu(), ref.cpu()), f"first mismatch row {(got.cpu() != ref.cpu()).nonzero()[:3].tolist()}"
    # the case is not degenerate: some row attends fewer pages than it has and more than K_min
    k_min, k_max = ad.page_bounds(page)
    n_pages = torch.tensor([-(-n // page) for n in lens])[:, None].expand_as(counts)
    assert ((counts < n_pages) & (counts > k_min)).any()


def test_kernel_bf16_metadata_and_sm_scale():
    case = make_case([700, 90], 4, 1, page=16, seed=3, meta_dtype=torch.bfloat16)
    ad = safe_threshold(case, 16, AdaptiveBudget(0.85, 32, 512), "shared", "sum")
    q, kmin, kmax, table, lens = case
    for scale in (None, 0.05):
        if (
            scale is not None
            and adaptive_margin_ref(q, kmin, kmax, table, lens, 16, ad, "shared", "sum", scale) <= MARGIN
        ):
            continue  # pragma: no cover - the fixed seed keeps a margin
        ref = select_pages_adaptive_ref(q, kmin, kmax, table, lens, 16, ad, "shared", "sum", scale)
        got = select_pages_adaptive(
            q,
            kmin,
            kmax,
            table,
            lens,
            16,
            ad,
            "shared",
            "sum",
            sm_scale=scale,
            config=SelectConfig(chunk_pages=64, block_d=64),
        )
        assert torch.equal(got, ref)


@pytest.mark.parametrize("temperature,chunk", [(4.0, 64), (2.5, 16)])
def test_kernel_temperature(temperature, chunk):
    """A temperature flattens the estimate: more pages, same kernel/reference agreement."""
    case = make_case([900, 300], 4, 2, page=16, seed=5)
    q, kmin, kmax, table, lens = case
    cold = safe_threshold(case, 16, AdaptiveBudget(0.9, 16, 512), "shared", "sum")
    hot = safe_threshold(case, 16, AdaptiveBudget(0.9, 16, 512, temperature), "shared", "sum")
    ref_cold, n_cold = select_pages_adaptive_ref(q, kmin, kmax, table, lens, 16, cold, return_k=True)
    ref_hot, n_hot = select_pages_adaptive_ref(q, kmin, kmax, table, lens, 16, hot, return_k=True)
    assert (n_hot >= n_cold).all() and (n_hot > n_cold).any()
    got = select_pages_adaptive(q, kmin, kmax, table, lens, 16, hot, config=SelectConfig(chunk_pages=chunk, block_d=64))
    assert torch.equal(got, ref_hot)


def test_min_equals_max_is_fixed_budget():
    """With min_budget == max_budget the adaptive rule is the fixed rule at that budget."""
    case = make_case([400, 250, 33], 4, 2, page=16, seed=7)
    q, kmin, kmax, table, lens = case
    ad = AdaptiveBudget(0.5, 96, 96)
    fixed = select_pages_ref(q, kmin, kmax, table, lens, 16, 96, "shared", "sum")
    assert torch.equal(select_pages_adaptive_ref(q, kmin, kmax, table, lens, 16, ad), fixed)
    got = select_pages_adaptive(q, kmin, kmax, table, lens, 16, ad, config=SelectConfig(chunk_pages=16, block_d=64))
    assert torch.equal(got, fixed)


def test_reference_is_prefix_of_fixed_order_and_monotone_in_threshold():
    """Adaptive rows are the last page plus a prefix of the fixed order; a higher threshold never picks fewer pages."""
    case = make_case([640, 500], 4, 2, page=16, seed=11)
    q, kmin, kmax, table, lens = case
    prev = None
    for thr in (0.3, 0.6, 0.9, 0.99):
        ad = AdaptiveBudget(thr, 16, 640)
        sel, counts = select_pages_adaptive_ref(q, kmin, kmax, table, lens, 16, ad, return_k=True)
        for b in range(2):
            for r in range(2):
                k = int(counts[b, r])
                fixed = select_pages_ref(q, kmin, kmax, table, lens, 16, 16 * k)[b, r]
                assert torch.equal(sel[b, r, :k], fixed[:k]) and (sel[b, r, k:] == -1).all()
        if prev is not None:
            assert (counts >= prev).all()
        prev = counts
    assert (prev > 1).any() and (prev < 40).any()


def test_adaptive_budget_validation():
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveBudget(0.0)
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveBudget(1.5)
    with pytest.raises(ValueError, match="min_budget"):
        AdaptiveBudget(0.9, 0, 64)
    with pytest.raises(ValueError, match="temperature"):
        AdaptiveBudget(0.9, 16, 64, 0.0)
    with pytest.raises(ValueError, match="must be <= max_budget"):
        AdaptiveBudget(0.9, 128, 64)
    with pytest.raises(TypeError, match="AdaptiveBudget"):
        case = make_case([100], 2, 1)
        select_pages_adaptive(*case, 16, 0.9)
    assert AdaptiveBudget(0.9, 40, 100).page_bounds(16) == (3, 7)
    assert AdaptiveBudget(0.9, 40, 100).page_bounds(16, 5) == (3, 5) and AdaptiveBudget(0.9, 40, 100).page_bounds(
        16, 2
    ) == (2, 2)


@pytest.mark.parametrize("mode,agg,chunk", [("shared", "sum", 64), ("shared", "max", 16), ("per_head", "sum", 16)])
def test_kernel_nan_rule_matches_reference(mode, agg, chunk):
    """NaN metadata pages rank as +inf and share the whole estimated mass (so the rule takes
    them, then stops at min_budget); a NaN query head is left out of its group's shared score."""
    lens, hq, hkv, page = [1100, 300], 4, 2, 16
    q, kmin, kmax, table, seq_lens = make_case(lens, hq, hkv, page=page, seed=5)
    for b, p in [(0, 3), (0, 40), (1, 2)]:
        kmin[table[b, p].long(), 0, 9] = float("nan")
        kmax[table[b, p].long(), 0, 9] = float("nan")
    q[1, 1, 4] = float("nan")
    ad = AdaptiveBudget(0.9, 32, 640)
    cfg = SelectConfig(chunk_pages=chunk, block_d=32)
    out = select_pages_adaptive(q, kmin, kmax, table, seq_lens, page, ad, mode, agg, config=cfg)
    ref = select_pages_adaptive_ref(q, kmin, kmax, table, seq_lens, page, ad, mode, agg)
    assert torch.equal(out, ref)
    assert (out[0, 0] == 3).any() and (out[0, 0] == 40).any() and (out[1, 0] == 2).any()

"""The re-rank selection reference: today's rule at rerank=0, the suite's rule otherwise, through a page table."""

from __future__ import annotations

import math

import pytest
import torch

from questkern.ops.select.naive import select_pages_ref
from questkern.ops.select.rerank_naive import select_pages_rerank_ref
from questkern.ops.metadata.minmax import page_minmax
from questkern.quality.selection import Variant, select_mask


def _paged(B=2, Hq=6, Hkv=2, S=(93, 71), D=12, P=8, seed=0):
    """Random keys per sequence, stored in a shuffled physical page pool."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, D, generator=g)
    keys = [torch.randn(Hkv, s, D, generator=g) * 2 for s in S]
    n = [-(-s // P) for s in S]
    perm = torch.randperm(sum(n), generator=g)
    W = max(n)
    table = torch.zeros(B, W, dtype=torch.int32)
    k_cache = torch.zeros(sum(n), Hkv, P, D)
    kmin = torch.zeros(sum(n), Hkv, D)
    kmax = torch.zeros(sum(n), Hkv, D)
    at = 0
    for b, k in enumerate(keys):
        lo, hi = page_minmax(k, P)
        kp = torch.nn.functional.pad(k, (0, 0, 0, n[b] * P - S[b])).view(Hkv, n[b], P, D).transpose(0, 1)
        for i in range(n[b]):
            ph = int(perm[at + i])
            table[b, i] = ph
            k_cache[ph], kmin[ph], kmax[ph] = kp[i], lo[i], hi[i]
        at += n[b]
    return q, keys, kmin, kmax, k_cache, table, torch.tensor(S, dtype=torch.int32)


@pytest.mark.parametrize("mode,agg", [("shared", "sum"), ("shared", "max"), ("per_head", "sum")])
def test_rerank_zero_is_todays_rule(mode, agg):
    q, _, kmin, kmax, kc, table, lens = _paged()
    a = select_pages_rerank_ref(q, kmin, kmax, kc, table, lens, 8, 40, 0, mode, agg)
    assert torch.equal(a, select_pages_ref(q, kmin, kmax, table, lens, 8, 40, mode, agg))


@pytest.mark.parametrize(
    "mode,budget,rerank", [("shared", 40, 2), ("per_head", 40, 3), ("shared", 24, 20), ("per_head", 1000, 2)]
)
def test_rerank_matches_the_suite_rule(mode, budget, rerank):
    q, keys, kmin, kmax, kc, table, lens = _paged()
    scale = 1 / math.sqrt(12)
    got = select_pages_rerank_ref(q, kmin, kmax, kc, table, lens, 8, budget, rerank, mode, "sum", scale)
    K = -(-budget // 8)
    assert got.shape == (2, 6 if mode == "per_head" else 2, K) and got.dtype == torch.int32
    changed = False
    for b in range(2):
        m = select_mask(Variant(budget, page_size=8, gqa_mode=mode, rerank=rerank), q[b], keys[b], scale)
        for r in range(m.shape[0]):
            want = m[r].nonzero().flatten().to(torch.int32)
            row = got[b, r]
            assert torch.equal(row[row >= 0], want)
        plain = select_mask(Variant(budget, page_size=8, gqa_mode=mode), q[b], keys[b], scale)
        changed |= not torch.equal(m, plain)
    assert changed or budget >= 93  # the stage changes the selection (unless all pages fit)


def test_rerank_covering_all_candidates_is_exact_top_mass_per_head():
    q, keys, kmin, kmax, kc, table, lens = _paged(B=1, S=(64,))
    scale = 0.3
    got = select_pages_rerank_ref(q, kmin, kmax, kc, table, lens, 8, 24, 10, "per_head", sm_scale=scale)[0]
    for h in range(6):
        lse = torch.logsumexp((keys[0][h // 3] @ q[0, h]).view(8, 8) * scale, dim=1)
        best = torch.sort(lse[:-1], descending=True, stable=True).indices[:2].sort().values
        assert got[h].tolist() == best.tolist() + [7]


def test_bad_rerank_is_rejected():
    q, _, kmin, kmax, kc, table, lens = _paged(B=1, S=(20,))
    with pytest.raises(ValueError, match="rerank"):
        select_pages_rerank_ref(q, kmin, kmax, kc, table, lens, 8, 16, -1)

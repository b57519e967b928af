"""Selection variants of the suite against questkern's references and brute force (tiny shapes, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from questkern.ops.select.naive import select_pages_ref
from questkern.ops.metadata.minmax import page_minmax
from questkern.quality.selection import Variant, exact_page_mass, page_bounds, select_mask, sparse_attention, token_mask


def _qk(Hq=6, Hkv=2, S=77, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Hq, D, generator=g), torch.randn(Hkv, S, D, generator=g), torch.randn(Hkv, S, D, generator=g)


def _ref_mask(q, k, P, budget, mode, agg):
    kmin, kmax = page_minmax(k, P)
    n = kmin.shape[0]
    sel = select_pages_ref(
        q[None],
        kmin,
        kmax,
        torch.arange(n, dtype=torch.int32)[None],
        torch.tensor([k.shape[1]], dtype=torch.int32),
        P,
        budget,
        mode,
        agg,
    )[0]
    m = torch.zeros(sel.shape[0], n, dtype=torch.bool)
    for r in range(sel.shape[0]):
        ids = sel[r][sel[r] >= 0].long()
        m[r, ids] = True
    return m


@pytest.mark.parametrize(
    "P,budget,mode,agg",
    [(8, 24, "shared", "sum"), (16, 48, "per_head", "sum"), (4, 20, "shared", "max"), (8, 200, "shared", "sum")],
)
def test_default_variant_is_todays_rule(P, budget, mode, agg):
    q, k, _ = _qk(S=77 if P != 4 else 61)
    got = select_mask(Variant(budget, page_size=P, gqa_mode=mode, aggregate=agg), q, k, 1 / math.sqrt(8))
    assert torch.equal(got, _ref_mask(q, k, P, budget, mode, agg))


def test_sub_page_bound_is_max_of_sub_pages_and_tighter():
    q, k, _ = _qk(S=45)
    full = page_bounds(q, k, 16)
    sub = page_bounds(q, k, 16, sub_page=4)
    fine = page_bounds(q, k, 4)  # [Hq, 12]: pages of 4 tokens
    want = torch.nn.functional.pad(fine, (0, 0), value=0).new_full((6, 12), float("-inf"))
    want[:, : fine.shape[1]] = fine
    assert torch.allclose(sub, want.view(6, 3, 4).amax(2))
    exact = torch.einsum("hd,hsd->hs", q, k.repeat_interleave(3, 0))  # [Hq, S]
    best = torch.nn.functional.pad(exact, (0, 48 - 45), value=float("-inf")).view(6, 3, 16).amax(2)
    assert (sub <= full + 1e-5).all() and (best <= sub + 1e-5).all() and (sub < full - 1e-4).any()


def test_sinks_recent_are_forced_and_counted_in_the_budget():
    q, k, _ = _qk(S=100)
    v = Variant(48, page_size=8, sinks=1, recent=20)  # K=6 of 13 pages: sink 0, recent 10-12 (last), 2 by bound
    m = select_mask(v, q, k, 0.35)
    assert m.shape == (2, 13) and (m.sum(1) == 6).all()
    assert m[:, 0].all() and m[:, 10:].all()


def test_softmax_aggregate_sums_per_head_masses():
    q, k, _ = _qk(S=64)
    v = Variant(32, page_size=8, aggregate="softmax")
    u = page_bounds(q, k, 8)
    s = torch.softmax(u.double().view(2, 3, -1) * 0.3, dim=-1).sum(1)
    m = select_mask(v, q, k, 0.3)
    for r in range(2):
        want = set(torch.sort(s[r, :-1], descending=True, stable=True).indices[:3].tolist()) | {7}
        assert set(m[r].nonzero().flatten().tolist()) == want


@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_rerank_keeps_best_exact_candidates(mode):
    q, k, _ = _qk(S=96, seed=3)
    P, scale = 8, 0.4
    m = select_mask(Variant(32, page_size=P, gqa_mode=mode, rerank=2), q, k, scale)  # K=4: last + 3 of 6 candidates
    u = page_bounds(q, k, P)  # [Hq, 12]
    rows = u if mode == "per_head" else u.view(2, 3, -1).sum(1)
    logits = torch.einsum("hd,hsd->hs", q, k.repeat_interleave(3, 0)) * scale
    lse = torch.logsumexp(logits.view(6, 12, P), dim=2)  # [Hq, n] exact page log-mass
    for r in range(m.shape[0]):
        cand = torch.sort(rows[r, :-1], descending=True, stable=True).indices[:6].tolist()
        heads = [r] if mode == "per_head" else [3 * r, 3 * r + 1, 3 * r + 2]
        w = sum(torch.softmax(lse[h, cand], 0) for h in heads)
        best = [cand[i] for i in torch.sort(w, descending=True, stable=True).indices[:3].tolist()]
        assert set(m[r].nonzero().flatten().tolist()) == set(best) | {11}
    assert not torch.equal(m, select_mask(Variant(32, page_size=P, gqa_mode=mode), q, k, scale))  # it changes something


def test_exact_page_mass_masks_the_partial_page():
    q, k, _ = _qk(S=21)
    cand = torch.tensor([[0, 2], [1, 2]])
    e = exact_page_mass(q, k, 8, 1.0, "shared", cand)
    assert torch.isfinite(e).all() and torch.allclose(e.sum(1), torch.full((2,), 3.0))


def test_sparse_attention_matches_brute_force():
    q, k, vv = _qk(S=40)
    v = Variant(16, page_size=8, gqa_mode="per_head")
    sel = select_mask(v, q, k, 0.3)
    tm = token_mask(sel, 6, 8, 40)
    out = sparse_attention(q, k, vv, tm, 0.3)
    for h in range(6):
        idx = tm[h].nonzero().flatten()
        p = torch.softmax((k[h // 3, idx] @ q[h]) * 0.3, 0)
        assert torch.allclose(out[h], p @ vv[h // 3, idx], atol=1e-5)
    dense = sparse_attention(q, k, vv, None, 0.3)
    assert torch.allclose(dense, sparse_attention(q, k, vv, torch.ones(6, 40, dtype=torch.bool), 0.3))


def test_bad_variants_are_rejected_naming_the_argument():
    with pytest.raises(ValueError, match="aggregate"):
        Variant(64, aggregate="mean")
    with pytest.raises(ValueError, match="sub_page"):
        Variant(64, page_size=16, sub_page=3)
    with pytest.raises(ValueError, match="rerank"):
        Variant(64, rerank=-1)
    with pytest.raises(ValueError, match="budget"):
        Variant(0)


def test_labels_and_bytes():
    b = Variant(1024)
    assert b.name == "p16 b1024 shared-sum" and b.with_(rerank=4).name == "p16 b1024 shared-sum rerank4"
    assert b.with_(dense_layers=(21, 23)).name.endswith("dense21-23")
    c = b.bytes_per_step(8192, 32, 8, 128)
    assert c["kv_bytes"] == 8 * 64 * 16 * 128 * 2 * 2 and c["rerank_bytes"] == 0
    assert b.with_(gqa_mode="per_head").bytes_per_step(8192, 32, 8, 128)["kv_bytes"] == 4 * c["kv_bytes"]
    assert b.with_(sub_page=4).bytes_per_step(8192, 32, 8, 128)["meta_bytes"] == 4 * c["meta_bytes"]


def test_labels_parse_back():
    from questkern.quality.selection import parse_variant

    for v in (
        Variant(None),
        Variant(1024),
        Variant(512, page_size=8, gqa_mode="per_head", rerank=2),
        Variant(2048, aggregate="softmax", sub_page=4, sinks=1, recent=64, dense_layers=(21, 23)),
    ):
        assert parse_variant(v.name) == v
    with pytest.raises(ValueError, match="variant label"):
        parse_variant("p16 b1024 shared-sum turbo")

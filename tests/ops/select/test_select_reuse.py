"""Selection reuse across decode steps (QuestDecode(reselect_every=, drift_threshold=)):
the gate kernel and the gated selection against reuse_naive.ReuseStateRef, step by step."""

from __future__ import annotations

import pytest
import torch
from helpers import integer_tensor

import questkern
from questkern.config import SelectConfig
from questkern.ops.decode import paged_attention_ref
from questkern.ops.select import select_pages_ref
from questkern.ops.select.reuse_naive import ReuseStateRef


def _cache(lens, Hkv, D, page, cap=400, dtype=torch.float16, seed=0):
    c = questkern.PagedKVCache(len(lens), cap, Hkv, D, page_size=page, dtype=dtype, device="cpu", shuffle=True)
    T = max(lens)
    k = integer_tensor((len(lens), T, Hkv, D), -3, 4, dtype, seed)
    v = torch.randn(len(lens), T, Hkv, D, generator=torch.Generator().manual_seed(seed)).to(dtype)
    c.append(k, v, lens=list(lens))  # ragged
    return c


def _loop(c, w, ref, steps, Hq, budget, gqa, seed, query_every=3, hook=None):
    """Decode ``steps`` tokens; at each step the kernels' rows equal the reference's exactly and
    the output matches attention over those rows. Returns the per-step gate sums."""
    B, Hkv, D = c.batch_size, c.num_kv_heads, c.head_dim
    gates = []
    q = None
    for t in range(steps):
        if hook is not None:
            hook(t, c, w, ref)
        kv = integer_tensor((B, Hkv, D), -3, 4, c.dtype, seed + 100 + t)
        c.append_decode(kv, kv)
        if q is None or t % query_every == 0:  # a query that stays put for a few steps (drift rule)
            q = integer_tensor((B, Hq, D), -3, 4, c.dtype, seed + 1000 + t)
        out, sel = w.run(q, return_selected=True)
        fresh = select_pages_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, c.page_size, budget, gqa)
        want = ref.step(q, c.page_table, c.seq_lens, fresh)
        assert torch.equal(sel.cpu(), want), f"step {t}"
        expect = paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, want.to(q.device))
        torch.testing.assert_close(out.float(), expect, atol=2e-3, rtol=2e-3)
        gates.append(int(w._reuse.gate.sum()))
    return gates


@pytest.mark.parametrize(
    "Hq,Hkv,D,page,gqa,every,drift,lens",
    [
        (4, 4, 64, 16, "shared", 3, None, [37, 100]),  # MHA, lengths not a multiple of the page
        (8, 2, 128, 16, "shared", 4, 0.5, [150, 16, 61]),  # GQA 4, one full page, drift and age
        (8, 1, 64, 8, "per_head", 2, None, [90, 33]),  # GQA 8, per_head rows share their KV head's gate
        (8, 2, 64, 16, "per_head", None, 0.2, [120, 70]),  # drift alone (no age limit)
        (4, 2, 64, 16, "shared", 16, None, [9, 200]),  # budget >= context for the short one
    ],
)
def test_reuse_matches_reference(Hq, Hkv, D, page, gqa, every, drift, lens):
    budget = 48
    c = _cache(lens, Hkv, D, page)
    w = questkern.QuestDecode(budget, gqa_mode=gqa, reselect_every=every, drift_threshold=drift)
    w.plan(c, num_q_heads=Hq, max_seq_len=400)
    ref = ReuseStateRef(len(lens), Hkv, page, every, drift)
    gates = _loop(c, w, ref, 20, Hq, budget, gqa, seed=1)
    assert gates[0] == len(lens) * Hkv  # every sequence selects at its first step
    assert sum(gates) < 20 * len(lens) * Hkv  # and some steps reuse


@pytest.mark.parametrize(
    "cfg,budget",
    [
        (SelectConfig(chunk_pages=16, tiles_per_program=1), 160),  # score stream + merge
        (SelectConfig(chunk_pages=16), 64),  # tile top-K + merge
        (SelectConfig(chunk_pages=16, fused_merge=True), 64),  # tile top-K, last tile merges
        (SelectConfig(chunk_pages=16, tiles_per_program=2, fused_merge=True), 160),  # stream, last program merges
    ],
    ids=["stream", "tile-merge", "tile-fused-merge", "stream-fused-merge"],
)
def test_reuse_on_the_two_stage_paths(cfg, budget):
    lens, Hq, Hkv, page = [300, 190], 8, 2, 8  # 38 and 24 pages: more than one tile of 16
    c = _cache(lens, Hkv, 64, page)
    w = questkern.QuestDecode(budget, reselect_every=3, configs={"select": cfg})
    w.plan(c, num_q_heads=Hq, max_seq_len=400)
    _loop(c, w, ReuseStateRef(2, Hkv, page, 3, None), 12, Hq, budget, "shared", seed=2)


def test_reselect_every_one_with_the_reuse_machinery_equals_every_step():
    """Age 1 (with a drift threshold that never fires) selects at every step: the rows and outputs
    of the plain every-step plan, exactly."""
    lens, Hq, Hkv, page, budget = [130, 75], 8, 2, 16, 48
    c = _cache(lens, Hkv, 64, page)
    w = questkern.QuestDecode(budget, reselect_every=1, drift_threshold=-1.0)
    plain = questkern.QuestDecode(budget)
    w.plan(c, num_q_heads=Hq, max_seq_len=400)
    plain.plan(c, num_q_heads=Hq, max_seq_len=400)
    assert w.reuse and not plain.reuse
    for t in range(6):
        kv = integer_tensor((2, Hkv, 64), -3, 4, c.dtype, 50 + t)
        c.append_decode(kv, kv)
        q = integer_tensor((2, Hq, 64), -3, 4, c.dtype, 7)  # the same query every step
        o1, s1 = w.run(q, return_selected=True)
        o1, s1 = o1.clone(), s1.clone()
        o2, s2 = plain.run(q, return_selected=True)
        assert torch.equal(s1, s2)
        torch.testing.assert_close(o1, o2, atol=0, rtol=0)
        assert int(w._reuse.gate.sum()) == 2 * Hkv


def test_page_crossing_forces_a_selection():
    """A sequence crossing into a new page between selections selects at that step (its new
    last page is attended), the other keeps its rows."""
    page = 16
    c = _cache([30, 40], 2, 64, page)  # 30 + 2 = 32 fills page 2; step 3 (len 33) crosses
    w = questkern.QuestDecode(16, reselect_every=100)
    w.plan(c, num_q_heads=4, max_seq_len=400)
    gates = []
    for t in range(4):
        kv = integer_tensor((2, 2, 64), -3, 4, c.dtype, t)
        c.append_decode(kv, kv)
        w.run(integer_tensor((2, 4, 64), -3, 4, c.dtype, 3))
        gates.append(w._reuse.gate.tolist())
    assert c.lens == [34, 44]
    assert gates == [[[1, 1], [1, 1]], [[0, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]]


def test_readmitted_sequence_selects_on_its_first_step():
    """A slot whose sequence is replaced (shorter length, new first page) or named by
    reselect() selects at once; the others keep reusing."""
    lens, Hq, Hkv, page, budget = [120, 100], 4, 2, 16, 48
    c = _cache(lens, Hkv, 64, page, cap=400)
    w = questkern.QuestDecode(budget, reselect_every=50)
    w.plan(c, num_q_heads=Hq, max_seq_len=400)
    ref = ReuseStateRef(2, Hkv, page, 50, None)

    def hook(t, c, w, ref):
        if t == 3:  # sequence 1 replaced by a new, shorter one (its pages freed, new ones mapped)
            c.release(1)
            k = integer_tensor((2, 60, Hkv, 64), -3, 4, c.dtype, 77)
            c.append(k, k, lens=[0, 60])
        if t == 6:
            w.reselect([0])
            ref.force[0] = True
        if t == 9:
            w.reselect(torch.tensor([False, True]))
            ref.force[1] = True

    gates = _loop(c, w, ref, 11, Hq, budget, "shared", seed=3, query_every=100, hook=hook)
    # t=3 sequence 1 replaced; t=6 reselect([0]); t=7 sequence 1 crosses into page 5 (65 tokens);
    # t=8 sequence 0 into page 9 (129); t=9 reselect(mask of sequence 1); 2 KV heads each
    assert gates == [4, 0, 0, 2, 0, 0, 2, 2, 2, 2, 0]


def test_new_plan_starts_fresh_and_growth_is_flagged():
    c = _cache([40], 1, 64, 16, cap=64)
    w = questkern.QuestDecode(16, reselect_every=8)
    w.plan(c, num_q_heads=2)
    q = integer_tensor((1, 2, 64), -3, 4, c.dtype, 1)
    kv = integer_tensor((1, 1, 64), -3, 4, c.dtype, 2)
    c.append_decode(kv, kv)
    w.run(q)
    c.append_decode(kv, kv)
    w.run(q)
    assert int(w._reuse.gate.sum()) == 0
    w.plan(c, num_q_heads=2)
    w.run(q)
    assert int(w._reuse.gate.sum()) == 1  # a new plan: every sequence selects at its first step
    assert w.check()


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(reselect_every=0), ValueError, "reselect_every must be an int >= 1 or None"),
        (dict(reselect_every=2.5), ValueError, "reselect_every"),
        (dict(reselect_every=True), ValueError, "reselect_every"),
        (dict(drift_threshold=1.5), ValueError, r"drift_threshold must be a number in \[-1, 1\]"),
        (dict(drift_threshold=float("nan")), ValueError, "drift_threshold"),
        (dict(drift_threshold="0.9"), TypeError, "drift_threshold"),
        (dict(reselect_every=None), ValueError, "needs a drift_threshold"),
        (dict(reselect_every=4, path="fused"), ValueError, "classic path"),
        (dict(reselect_every=4, budget=None), ValueError, "need a budget"),
    ],
)
def test_reuse_options_are_checked(kw, err, match):
    kw = {"budget": 64, **kw}
    with pytest.raises(err, match=match):
        questkern.QuestDecode(kw.pop("budget"), **kw)


def test_reuse_refuses_an_adaptive_budget():
    from questkern.ops.select.adaptive_naive import AdaptiveBudget

    with pytest.raises(ValueError, match="adaptive"):
        questkern.QuestDecode(None, adaptive=AdaptiveBudget(0.9, 16, 64), reselect_every=4)


def test_reselect_checks_its_argument():
    c = _cache([40, 50], 1, 64, 16)
    w = questkern.QuestDecode(16, reselect_every=4)
    with pytest.raises(RuntimeError, match="before plan"):
        w.reselect()
    w.plan(c, num_q_heads=2)
    before = w._reuse.force.clone()
    for bad, err in [
        ([2], ValueError),
        ([-1], ValueError),
        ("0", TypeError),
        ([True], TypeError),
        (torch.tensor([1, 0]), ValueError),
        (torch.ones(3, dtype=torch.bool), ValueError),
    ]:
        with pytest.raises(err, match="sequences"):
            w.reselect(bad)
    assert torch.equal(w._reuse.force, before)  # a rejected call changes nothing
    w.reselect(1)
    assert w._reuse.force.tolist() == [[0], [1]]
    w.reselect()
    assert w._reuse.force.tolist() == [[1], [1]]

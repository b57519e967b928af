"""Hierarchical pages end to end: PagedKVCache(sub_page_size=...) keeps one min/max per
sub-page (kernels and the reference=True torch path agree exactly), QuestDecode selects
whole physical pages by the max of their sub-pages' bounds and attends to them as the
float32 reference does; bad sub-page sizes, metadata shapes and unsupported options fail
with errors naming the argument."""

import pytest
import torch

import questkern
from questkern import validate as V
from questkern.ops.decode import paged_attention_ref
from questkern.ops.metadata import metadata_build_ref
from questkern.ops.select import select_pages_ref


def _filled(page, sub_page, meta=None, reference=False, seed=0, lens=(700, 130, 40), D=64):
    c = questkern.PagedKVCache(
        3,
        900,
        2,
        D,
        page_size=page,
        sub_page_size=sub_page,
        dtype=torch.bfloat16,
        device="cpu",
        shuffle=True,
        meta_dtype=meta,
        reference=reference,
    )
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    # integer keys: exact scores, so the selection compares exactly
    c.append(
        torch.randint(-4, 5, (3, T, 2, D), generator=g).bfloat16(),
        torch.randn(3, T, 2, D, generator=g).bfloat16(),
        list(lens),
    )
    for _ in range(sub_page + 2):  # decode appends across a sub-page boundary
        c.append_decode(
            torch.randint(-4, 5, (3, 2, D), generator=g).bfloat16(), torch.randn(3, 2, D, generator=g).bfloat16()
        )
    return c


@pytest.mark.parametrize("page,sub_page,meta", [(64, 16, None), (32, 8, torch.float8_e5m2), (32, 8, torch.float32)])
def test_cache_metadata_is_per_sub_page_and_reference_mode_agrees(page, sub_page, meta):
    c = _filled(page, sub_page, meta)
    r = _filled(page, sub_page, meta, reference=True)
    assert c.sub_page_size == sub_page and c.kmin.shape == (c.num_pages, 2, page // sub_page, 64)
    assert torch.equal(c.page_table, r.page_table) and torch.equal(c.k_cache, r.k_cache)
    used = {
        int(c.page_table[b, p]): -(-min(page, n - p * page) // sub_page)
        for b, n in enumerate(c.lens)
        for p in range(-(-n // page))
    }
    ref_min, ref_max = metadata_build_ref(
        c.k_cache, c.page_table, c.seq_lens, torch.zeros_like(c.kmin), torch.zeros_like(c.kmax)
    )
    for p, n in used.items():  # sub-pages holding tokens: kernels == torch path == reference
        for got in (c, r):
            assert torch.equal(got.kmin[p, :, :n].float(), ref_min[p, :, :n].float())
            assert torch.equal(got.kmax[p, :, :n].float(), ref_max[p, :, :n].float())
    assert questkern.PagedKVCache(1, 64, 1, 64, device="cpu").sub_page_size is None


@pytest.mark.parametrize("page,sub_page", [(64, 16), (32, 8)])
@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_quest_decode_on_a_hierarchical_cache_matches_reference(page, sub_page, mode):
    c = _filled(page, sub_page, seed=1)
    q = torch.randint(-3, 4, (3, 8, 64), generator=torch.Generator().manual_seed(2)).bfloat16()
    budget = 4 * page
    w = questkern.QuestDecode(budget, gqa_mode=mode)
    plan = w.plan(c, num_q_heads=8)
    assert plan.page_size == page and plan.k_pages == 4
    out, sel = w.run(q, return_selected=True)
    ref_sel = select_pages_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, page, budget, mode)
    assert torch.equal(sel, ref_sel)
    ref = paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, ref_sel)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    # the sub-pages matter: scoring with each page's whole-page min/max selects differently somewhere
    flat = (c.kmin.float().amin(2).bfloat16(), c.kmax.float().amax(2).bfloat16())
    assert not torch.equal(ref_sel, select_pages_ref(q, *flat, c.page_table, c.seq_lens, page, budget, mode))


def test_selection_reuse_runs_on_a_hierarchical_cache():
    c = _filled(64, 16, seed=3)
    q = torch.randint(-3, 4, (3, 8, 64), generator=torch.Generator().manual_seed(4)).bfloat16()
    w = questkern.QuestDecode(256, reselect_every=2)
    w.plan(c, num_q_heads=8)
    out, sel = w.run(q, return_selected=True)  # first step: every KV head selects
    ref_sel = select_pages_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, 64, 256)
    assert torch.equal(sel, ref_sel)
    torch.testing.assert_close(
        out.float(),
        paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, ref_sel),
        atol=3e-2,
        rtol=3e-2,
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(page_size=16, sub_page_size=16), "sub_page_size"),  # equal to the page
        (dict(page_size=32, sub_page_size=12), "sub_page_size"),  # does not divide it
        (dict(page_size=64, sub_page_size=128), "sub_page_size"),
        (dict(page_size=16, sub_page_size=2), "sub_page_size"),  # too small
        (dict(page_size=16, sub_page_size=0), "sub_page_size"),
    ],
)
def test_cache_rejects_bad_sub_page_size(kw, match):
    with pytest.raises(ValueError, match=match):
        questkern.PagedKVCache(1, 64, 1, 64, device="cpu", **kw)
    with pytest.raises(TypeError, match="sub_page_size"):
        questkern.PagedKVCache(1, 64, 1, 64, device="cpu", page_size=64, sub_page_size=16.0)


def test_plan_rejects_adaptive_and_fused_with_hierarchical_metadata():
    c = _filled(64, 16, lens=(300, 100, 40))
    with pytest.raises(ValueError, match="adaptive"):
        questkern.QuestDecode(None, adaptive=questkern.AdaptiveBudget(0.9, 64, 256)).plan(c, num_q_heads=4)
    w = questkern.QuestDecode(128, path="fused")
    with pytest.raises(ValueError, match="path='fused'"):
        w.plan(c, num_q_heads=4)
    assert w._plan is None


def test_check_kv_cache_names_bad_metadata_shapes():
    k = torch.zeros(5, 2, 32, 64, dtype=torch.bfloat16)
    ok = torch.zeros(5, 2, 4, 64, dtype=torch.bfloat16)
    V.check_kv_cache(k, k, ok, ok)  # sub-pages of 8 tokens
    for bad in (torch.zeros(5, 2, 3, 64), torch.zeros(5, 2, 16, 64)):  # 3 does not divide 32; 2-token sub-pages
        with pytest.raises(ValueError, match=r"kmin must have shape \[num_pages, num_kv_heads, sub_pages"):
            V.check_kv_cache(k, k, bad.bfloat16(), bad.bfloat16())
    with pytest.raises(ValueError, match=r"kmin must have shape \[5, 2, \*, 64\]"):
        V.check_kv_cache(k, k, torch.zeros(5, 2, 4, 32).bfloat16(), ok)
    with pytest.raises(ValueError, match=r"kmax must have shape \[5, 2, 4, 64\]"):
        V.check_kv_cache(k, k, ok, torch.zeros(5, 2, 2, 64).bfloat16())
    with pytest.raises(ValueError, match="kmax must be 4-D"):
        V.check_kv_cache(k, k, ok, torch.zeros(5, 2, 64).bfloat16())
    with pytest.raises(ValueError, match="kmin must be 3-D"):
        V.check_kv_cache(k, k, torch.zeros(5, 2, 64, 1, 1).bfloat16(), ok)


def test_metadata_order_checks_only_sub_pages_in_use():
    """A swapped sub-page in use is found (named with its sub-page); garbage in a sub-page
    past a sequence's end is never read."""
    c = _filled(64, 16, lens=(300, 100, 20))
    last = int(c.page_table[2, 0])  # sequence 2: 38 tokens, sub-page 3 empty: garbage there is never read
    assert c.lens[2] == 38
    c.kmin[last, :, 3] = 5.0
    c.kmax[last, :, 3] = -5.0
    questkern.QuestDecode(128).plan(c, num_q_heads=4)
    p = int(c.page_table[0, 1])
    c.kmin[p, 1, 2, 7], c.kmax[p, 1, 2, 7] = 3.0, -3.0
    with pytest.raises(ValueError, match=f"kmin > kmax at page {p}, kv head 1, sub-page 2, channel 7"):
        questkern.QuestDecode(128).plan(c, num_q_heads=4)

"""Public decode API: end-to-end correctness and input validation before any launch."""

import pytest
import torch
from helpers import integer_tensor

import questkern
from questkern.ops.decode import paged_attention_ref
from questkern.ops.select import select_pages_ref


@pytest.fixture(scope="module")
def cache():
    torch.manual_seed(0)
    c = questkern.PagedKVCache(3, 300, 2, 64, page_size=16, dtype=torch.bfloat16, device="cpu", shuffle=True)
    # integer keys: exact scores, so the selection can be compared exactly
    k = torch.randint(-4, 5, (3, 200, 2, 64)).bfloat16()
    c.append(k, torch.randn(3, 200, 2, 64).bfloat16(), [200, 17, 1])
    return c


@pytest.mark.parametrize("path", ["classic", "fused"])
@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_quest_step_matches_reference(cache, mode, path):
    q = torch.randint(-3, 4, (3, 8, 64)).bfloat16()
    w = questkern.QuestDecode(64, gqa_mode=mode, path=path)
    plan = w.plan(cache, num_q_heads=8)
    ops = {"classic": {"select", "sparse_decode"}, "fused": {"quest_step"}}[path]
    assert plan.k_pages == 4 and set(plan.sources) == ops and plan.path == path
    out, sel = w.run(q, return_selected=True)
    ref_sel = select_pages_ref(q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, 16, 64, mode)
    assert torch.equal(sel, ref_sel)
    ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens, ref_sel)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quest_step_with_fp8_metadata(dtype):
    """meta_dtype=float8_e5m2: built on prefill, kept on decode appends, read by select;
    integer keys (exact in e5m2) so the selection is compared exactly."""
    c = questkern.PagedKVCache(
        2, 400, 2, 128, page_size=16, dtype=dtype, device="cpu", shuffle=True, meta_dtype=torch.float8_e5m2
    )
    g = torch.Generator().manual_seed(7)
    c.append(
        torch.randint(-4, 5, (2, 300, 2, 128), generator=g).to(dtype),
        torch.randn(2, 300, 2, 128, generator=g).to(dtype),
        [300, 45],
    )
    for _ in range(3):
        c.append_decode(
            torch.randint(-4, 5, (2, 2, 128), generator=g).to(dtype), torch.randn(2, 2, 128, generator=g).to(dtype)
        )
    assert c.kmin.dtype == torch.float8_e5m2 and c.lens == [303, 48]
    q = torch.randint(-3, 4, (2, 8, 128), generator=g).to(dtype)
    w = questkern.QuestDecode(64)
    w.plan(c, num_q_heads=8)
    out, sel = w.run(q, return_selected=True)
    ref_sel = select_pages_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, 16, 64, "shared")
    assert torch.equal(sel, ref_sel)
    ref = paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, ref_sel)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_budget_covering_context_equals_dense(cache):
    q = torch.randn(3, 4, 64).bfloat16()
    quest = questkern.quest_decode(q, cache, budget=10_000).clone()
    dense = questkern.dense_decode(q, cache)
    ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens, None)
    torch.testing.assert_close(quest.float(), ref, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(dense.float(), ref, atol=3e-2, rtol=3e-2)


def _plan(cache, **kw):
    w = questkern.QuestDecode(kw.pop("budget", 64))
    heads = kw.pop("num_q_heads", 4)
    tensors = dict(
        k_cache=cache.k_cache,
        v_cache=cache.v_cache,
        kmin=cache.kmin,
        kmax=cache.kmax,
        page_table=cache.page_table,
        seq_lens=cache.seq_lens,
    )
    tensors.update(kw)
    return w.plan(num_q_heads=heads, **tensors)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(k_cache=torch.zeros(4, 2, 16, 64)), "k_cache must have dtype"),
        (dict(k_cache=torch.zeros(4, 2, 16, 64, dtype=torch.bfloat16)), "v_cache must have shape"),
        (dict(kmin=torch.zeros(1, 2, 64, dtype=torch.float16)), "kmin must have dtype"),
        (dict(page_table=torch.zeros(3, 19, dtype=torch.int64)), "page_table must have dtype"),
        (dict(seq_lens=torch.tensor([5, 0, 1], dtype=torch.int32)), r"seq_lens must be >= 1.*seq_lens\[1\] = 0"),
        (dict(seq_lens=torch.tensor([5, 10_000, 1], dtype=torch.int32)), "exceeds the page table capacity"),
        (dict(seq_lens=torch.tensor([5, 1], dtype=torch.int32)), r"seq_lens must have shape \[3\]"),
        (dict(page_size=32), "page_size = 32 does not match"),
        (dict(num_q_heads=3), "must be a multiple of num_kv_heads"),
    ],
)
def test_plan_rejects_bad_input(cache, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _plan(cache, **kw)


def test_plan_rejects_page_ids_out_of_range(cache):
    bad = cache.page_table.clone()
    bad[0, 0] = cache.num_pages + 5
    with pytest.raises(ValueError, match="outside"):
        _plan(cache, page_table=bad)


def test_plan_rejects_non_contiguous(cache):
    t = torch.zeros(3, 40, dtype=torch.int32)[:, ::2]
    with pytest.raises(ValueError, match="page_table must be contiguous"):
        _plan(cache, page_table=t)


@pytest.mark.parametrize("budget,err", [(0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError)])
def test_budget_must_be_positive_int(budget, err):
    with pytest.raises(err, match="budget"):
        questkern.QuestDecode(budget)


@pytest.mark.parametrize(
    "kw,match",
    [(dict(gqa_mode="both"), "gqa_mode"), (dict(aggregate="mean"), "aggregate"), (dict(sm_scale=-1.0), "sm_scale")],
)
def test_constructor_rejects_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        questkern.QuestDecode(64, **kw)


def test_run_validates_query(cache):
    w = questkern.QuestDecode(64)
    with pytest.raises(RuntimeError, match="before plan"):
        w.run(torch.zeros(3, 4, 64, dtype=torch.bfloat16))
    w.plan(cache, num_q_heads=4)
    with pytest.raises(TypeError, match="q must have dtype"):
        w.run(torch.zeros(3, 4, 64))
    with pytest.raises(ValueError, match=r"q must have shape \[3, 4, 64\]"):
        w.run(torch.zeros(3, 8, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="q must be contiguous"):
        w.run(torch.zeros(3, 64, 4, dtype=torch.bfloat16).transpose(1, 2))
    with pytest.raises(ValueError, match="q must be on"):
        w.run(torch.zeros(3, 4, 64, dtype=torch.bfloat16, device="meta"))
    with pytest.raises(TypeError, match="return_selected must be a bool"):
        w.run(torch.zeros(3, 4, 64, dtype=torch.bfloat16), return_selected="yes")


def test_plan_max_seq_len_hint(cache):
    w = questkern.QuestDecode(64)
    assert w.plan(cache, num_q_heads=4, max_seq_len=299).max_seq_len == 299
    with pytest.raises(ValueError, match="shorter than the longest sequence"):
        w.plan(cache, num_q_heads=4, max_seq_len=10)


def test_adaptive_budget_matches_its_reference(cache):
    from questkern.ops.select.adaptive_naive import select_pages_adaptive_ref

    q = integer_tensor((3, 4, 64), -3, 4, torch.bfloat16, seed=11)  # fixed: masses clear of the threshold
    budget = questkern.AdaptiveBudget(threshold=0.9, min_budget=16, max_budget=96)
    w = questkern.QuestDecode(None, adaptive=budget)
    assert w.plan(cache, num_q_heads=4).k_pages == 6
    out, sel = w.run(q, return_selected=True)
    ref_sel = select_pages_adaptive_ref(
        q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, 16, budget, "shared"
    )
    assert torch.equal(sel, ref_sel.to(sel.dtype))
    ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens, ref_sel)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_adaptive_and_budget_are_exclusive():
    with pytest.raises(ValueError, match="either budget or adaptive"):
        questkern.QuestDecode(64, adaptive=questkern.AdaptiveBudget(0.9, 16, 64))
    with pytest.raises(TypeError, match="adaptive must be an AdaptiveBudget"):
        questkern.QuestDecode(None, adaptive=0.9)


def test_one_shot_call_names_a_bad_query(cache):
    with pytest.raises(ValueError, match=r"q must be 3-D \[batch, num_q_heads, head_dim\]"):
        questkern.quest_decode(torch.zeros(4, 64, dtype=torch.bfloat16), cache, budget=64)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        questkern.dense_decode([[0.0]], cache)


# ---------------------------------------------------------------- every argument checked before any launch


@pytest.mark.parametrize(
    "sm_scale,err",
    [(float("inf"), ValueError), (float("nan"), ValueError), (0.0, ValueError), (True, TypeError), ("0.1", TypeError)],
)
def test_sm_scale_must_be_finite_positive(sm_scale, err):
    with pytest.raises(err, match="sm_scale must be a positive finite number"):
        questkern.QuestDecode(64, sm_scale=sm_scale)


@pytest.mark.parametrize(
    "configs,err,match",
    [
        ([1, 2], TypeError, "configs must be a dict"),
        ({"select": "fast"}, TypeError, r"configs\['select'\] must be a SelectConfig"),
        (
            {"sparse_decode": questkern.config.SelectConfig()},
            TypeError,
            r"configs\['sparse_decode'\] must be a DecodeConfig",
        ),
        ({"decode": questkern.config.DecodeConfig()}, ValueError, "unknown op 'decode'"),
        ({"select": {"chunk_pages": 12}}, ValueError, r"configs\['select'\]: SelectConfig.chunk_pages"),
        ({"select": {"tile": 64}}, ValueError, r"configs\['select'\]: SelectConfig: unknown field"),
    ],
)
def test_configs_overrides_are_checked_up_front(configs, err, match):
    with pytest.raises(err, match=match):
        questkern.QuestDecode(64, configs=configs)


def test_configs_override_as_dict_is_accepted(cache):
    w = questkern.QuestDecode(64, path="classic", configs={"select": {"chunk_pages": 16}})
    assert w.plan(cache, num_q_heads=4).select_config.chunk_pages == 16


@pytest.mark.parametrize("path,op", [("classic", "sparse_decode"), ("fused", "quest_step")])
def test_configs_override_violating_a_kernel_constraint_fails_in_plan(cache, path, op):
    cfg = (questkern.config.DecodeConfig if op == "sparse_decode" else questkern.config.StepConfig)(
        pages_per_block=0 + 1
    )
    w = questkern.QuestDecode(64, path=path, configs={op: cfg})  # 1 page x 16 tokens: fine
    w.plan(cache, num_q_heads=4)
    small = questkern.PagedKVCache(1, 64, 2, 64, page_size=8, dtype=torch.bfloat16, device="cpu")
    small.append(torch.zeros(1, 40, 2, 64).bfloat16(), torch.zeros(1, 40, 2, 64).bfloat16())
    with pytest.raises(
        ValueError, match=rf"configs\['{op}'\] cannot run on this cache: pages_per_block \* page_size = 1 x 8"
    ):
        w.plan(small, num_q_heads=4)


def test_plan_refuses_cache_and_raw_tensors_together(cache):
    w = questkern.QuestDecode(64)
    with pytest.raises(ValueError, match="either a cache or the raw tensors.*page_table"):
        w.plan(cache, num_q_heads=4, page_table=cache.page_table)
    with pytest.raises(TypeError, match="missing v_cache"):
        w.plan(num_q_heads=4, k_cache=cache.k_cache)
    with pytest.raises(TypeError, match="cache must be a questkern.PagedKVCache"):
        w.plan(object(), num_q_heads=4)
    with pytest.raises(TypeError, match="page_size must be an int"):
        w.plan(cache, num_q_heads=4, page_size=16.0)


def test_plan_rejects_swapped_metadata(cache):
    with pytest.raises(ValueError, match="kmin > kmax at page .*swapped"):
        _plan(cache, kmin=cache.kmax, kmax=cache.kmin)
    # a page no sequence uses is not looked at
    kmin = cache.kmin.clone()
    free = sorted(set(range(cache.num_pages)) - set(cache.page_table[:, :13].flatten().tolist()))
    kmin[free[-1]] = 100
    _plan(cache, kmin=kmin)


# ---------------------------------------------------------------- NaN and infinity end to end (README)


@pytest.mark.parametrize("path", ["classic", "fused"])
@pytest.mark.parametrize("how", ["prefill", "decode"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_key_gives_the_rows_dense_attention_gives(path, how, bad):
    """A non-finite key written by prefill or by a decode append: its page is always
    selected, so exactly the query heads whose dense output is NaN are NaN in the sparse
    output too, whichever way the token was written."""
    torch.manual_seed(3)
    c = questkern.PagedKVCache(2, 400, 2, 64, page_size=16, dtype=torch.bfloat16, device="cpu")
    k = torch.randint(-4, 5, (2, 300, 2, 64)).bfloat16()
    v = torch.randn(2, 300, 2, 64).bfloat16()
    k[0, 150, 1, 9] = bad  # sequence 0, page 9, KV head 1
    if how == "prefill":
        c.append(k, v)
    else:
        c.append(k[:, :140].contiguous(), v[:, :140].contiguous())
        for t in range(140, 300):
            c.append_decode(k[:, t].contiguous(), v[:, t].contiguous())
    q = torch.randint(-3, 4, (2, 8, 64)).bfloat16()
    w = questkern.QuestDecode(64, path=path)
    w.plan(c, num_q_heads=8)
    out, sel = w.run(q, return_selected=True)
    ref_sel = select_pages_ref(q, c.kmin, c.kmax, c.page_table, c.seq_lens, 16, 64, "shared")
    assert torch.equal(sel, ref_sel) and (sel[0, 1] == 9).any()
    dense = questkern.dense_decode(q, c)
    ref = paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, sel)
    want = torch.isnan(paged_attention_ref(q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, None)).any(-1)
    assert want[0, 4:].any() and not want[0, :4].any() and not want[1].any()
    if bad != bad:  # NaN: every query head of KV head 1 (an infinite key spares those with q . k = -inf)
        assert want[0, 4:].all()
    for o in (out, dense, ref):
        assert torch.equal(torch.isnan(o).any(-1), want)
    torch.testing.assert_close(out[~want].float(), ref[~want], atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("path", ["classic", "fused"])
def test_nan_query_head_changes_only_its_own_output(path, cache):
    q = torch.randint(-3, 4, (3, 8, 64)).bfloat16()
    w = questkern.QuestDecode(64, path=path)
    w.plan(cache, num_q_heads=8)
    clean, sel = (t.clone() for t in w.run(q, return_selected=True))
    q2 = q.clone()
    q2[0, 1, 5] = float("nan")
    q2[0, 1, 6] = 0  # no effect on the group with the head left out: compare with q where head 1 is dropped
    out, sel2 = w.run(q2, return_selected=True)
    from questkern.ops.select.naive import page_scores_ref, selection_rows_ref, topk_pages_ref

    heads = torch.ones(8, dtype=torch.bool)
    heads[1] = False
    s = page_scores_ref(q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, 16)[0]
    assert torch.equal(sel2[0], topk_pages_ref(selection_rows_ref(s, 2, "shared", "sum", heads), 4))
    assert torch.equal(sel2[1:], sel[1:])
    nan = torch.isnan(out).any(-1)
    assert nan[0, 1] and nan.sum() == 1


# ---------------------------------------------------------------- growth past the plan (README)


def _narrow(cache, width):
    """Raw tensors of ``cache`` with a page table only ``width`` pages wide."""
    return dict(
        k_cache=cache.k_cache,
        v_cache=cache.v_cache,
        kmin=cache.kmin,
        kmax=cache.kmax,
        page_table=cache.page_table[:, :width].contiguous(),
        seq_lens=cache.seq_lens.clone(),
    )


@pytest.mark.parametrize("budget,path", [(64, "classic"), (64, "fused"), (None, "classic"), ("adaptive", "classic")])
def test_growth_past_the_planned_width_is_clamped_and_reported(cache, budget, path):
    """A sequence grown past the page-table width after plan(): run() reads up to the width
    (never out of bounds: before, a crash or garbage), check() reports it, the next plan()
    raises naming it once."""
    from questkern.ops.select.adaptive_naive import AdaptiveBudget, select_pages_adaptive_ref

    adaptive = AdaptiveBudget(0.9, 32, 96) if budget == "adaptive" else None
    w = questkern.QuestDecode(None if adaptive else budget, path=path, adaptive=adaptive)
    raw = _narrow(cache, 8)  # sequence 0 holds 200 tokens = 13 pages; planned: 7 of them
    raw["seq_lens"][0] = 100
    w.plan(num_q_heads=4, **raw)
    assert w.check()
    q = torch.randint(-3, 4, (3, 4, 64)).bfloat16()
    raw["seq_lens"][0] = 200  # grows past 8 x 16 = 128 tokens
    out, sel = w.run(q, return_selected=True)
    clamped = raw["seq_lens"].clone()
    clamped[0] = 128
    if budget is None:
        sel_ref = None
    elif adaptive is not None:
        sel_ref = select_pages_adaptive_ref(q, cache.kmin, cache.kmax, raw["page_table"], clamped, 16, adaptive)
    else:
        sel_ref = select_pages_ref(q, cache.kmin, cache.kmax, raw["page_table"], clamped, 16, budget)
    if sel_ref is not None:
        assert torch.equal(sel, sel_ref)
    ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, raw["page_table"], clamped, sel_ref)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert w.check(raise_error=False) is False
    with pytest.raises(RuntimeError, match=r"longer than the page-table width planned \(8 pages"):
        w.check()
    raw["seq_lens"][0] = 100
    with pytest.raises(RuntimeError, match="longer than the page-table width planned.*flag cleared"):
        w.plan(num_q_heads=4, **raw)
    w.plan(num_q_heads=4, **raw)  # reported once: planning again works
    w.run(q)
    assert w.check()


def test_check_before_plan():
    with pytest.raises(RuntimeError, match="before plan"):
        questkern.QuestDecode(64).check()


def test_rejected_plan_keeps_the_previous_plan(cache):
    w = questkern.QuestDecode(64)
    plan = w.plan(cache, num_q_heads=4)
    q = torch.randint(-3, 4, (3, 4, 64)).bfloat16()
    before = w.run(q).clone()
    with pytest.raises(ValueError):
        w.plan(cache, num_q_heads=3)
    with pytest.raises(ValueError, match="kmin > kmax"):
        w.plan(
            num_q_heads=4,
            k_cache=cache.k_cache,
            v_cache=cache.v_cache,
            kmin=cache.kmax,
            kmax=cache.kmin,
            page_table=cache.page_table,
            seq_lens=cache.seq_lens,
        )
    assert w._plan is plan and torch.equal(w.run(q), before)

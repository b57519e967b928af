"""The fused Quest step against its float32 reference: selected pages compared exactly
(integer keys and queries: every score is exact, ties are real and break toward the lower
page index), outputs with assert_close."""

import pytest
import torch
from helpers import integer_tensor, random_page_table

from questkern.config import StepConfig
from questkern.ops.step import quest_step, quest_step_ref, step_plan, step_workspace

TOL = {torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=4e-3, rtol=4e-3)}

CASES = [
    # B, Hq, Hkv, D, page, lens, budget, mode, agg, dtype, cfg
    (1, 4, 1, 64, 16, [300], 64, "per_head", "sum", torch.bfloat16, {}),  # not a page multiple, GQA 4 per head
    (1, 1, 1, 64, 16, [9], 64, "shared", "sum", torch.float16, {}),  # one page
    (2, 8, 2, 64, 16, [200, 33], 4096, "shared", "sum", torch.float16, {}),  # budget > context: every page
    (3, 8, 1, 64, 8, [700, 1, 333], 200, "shared", "max", torch.bfloat16, dict(splits=3)),  # mixed, GQA 8, max
    (2, 8, 2, 128, 16, [1000, 100], 64, "per_head", "sum", torch.float16, dict(topk="radix", splits=2)),
    (2, 2, 2, 128, 32, [2000, 47], 256, "shared", "sum", torch.bfloat16, dict(fuse_combine=True, splits=4)),
    (1, 4, 4, 64, 64, [1500], 128, "per_head", "sum", torch.float16, dict(pages_per_block=1)),  # page 64, K = 2
    (
        2,
        8,
        8,
        128,
        16,
        [48, 600],
        96,
        "shared",
        "sum",
        torch.bfloat16,
        dict(chunk_pages=16, tiles_per_program=2, score_stages=2, splits=1),
    ),  # 3-page row
    (1, 16, 2, 64, 16, [3000], 512, "shared", "sum", torch.bfloat16, dict(fuse_combine=True, num_warps=2)),  # GQA 8
]


@pytest.mark.parametrize("B,Hq,Hkv,D,PS,lens,budget,mode,agg,dtype,cfg", CASES)
def test_step_matches_reference(B, Hq, Hkv, D, PS, lens, budget, mode, agg, dtype, cfg):
    table, P, seq_lens = random_page_table(B, lens, PS)
    kmin = integer_tensor((P, Hkv, D), -4, 4, dtype, seed=1)
    kmax = kmin + integer_tensor((P, Hkv, D), 0, 4, dtype, seed=2)
    k_cache = torch.randn(P, Hkv, PS, D, generator=torch.Generator().manual_seed(4)).to(dtype)
    v_cache = torch.randn(P, Hkv, PS, D, generator=torch.Generator().manual_seed(5)).to(dtype)
    q = integer_tensor((B, Hq, D), -3, 4, dtype, seed=3)
    k_pages = min(-(-budget // PS), table.shape[1])
    config = StepConfig(**{"chunk_pages": 32, "block_d": min(64, D), **cfg})
    rows = Hq if mode == "per_head" and Hq != Hkv else Hkv
    geo = step_plan(B, rows, table.shape[1], k_pages, config, num_sms=4)
    ws = step_workspace(B, Hq, rows, D, geo, q.device)
    sel = torch.full((B, rows, k_pages), -7, dtype=torch.int32)
    phys = torch.full_like(sel, -7)
    out = torch.full_like(q, float("nan"))
    for _ in range(2):  # twice on one workspace: the fused combine's counters rearm
        quest_step(
            q,
            kmin,
            kmax,
            k_cache,
            v_cache,
            table,
            seq_lens,
            k_pages,
            gqa_mode=mode,
            aggregate=agg,
            config=config,
            out=out,
            selected=sel,
            selected_phys=phys,
            workspace=ws,
            num_sms=4,
        )
    assert torch.count_nonzero(ws["counters"]) == 0
    ref_out, ref_sel = quest_step_ref(q, kmin, kmax, k_cache, v_cache, table, seq_lens, budget, mode, agg)
    assert torch.equal(sel, ref_sel[:, :, :k_pages])
    want_phys = torch.where(
        sel >= 0, torch.gather(table[:, None, :].expand(-1, rows, -1).long(), 2, sel.clamp(min=0).long()).int(), -1
    )
    assert torch.equal(phys, want_phys)
    torch.testing.assert_close(out.float(), ref_out, **TOL[dtype])


# ---------------------------------------------------------------- NaN and infinity (README: one rule)


@pytest.mark.parametrize("mode,agg", [("shared", "sum"), ("shared", "max"), ("per_head", "sum")])
@pytest.mark.parametrize("cfg", [dict(splits=3), dict(splits=2, fuse_combine=True, topk="radix"), dict(splits=1)])
def test_step_nan_rule_matches_reference(mode, agg, cfg):
    """NaN metadata pages (from a NaN key in them) are selected and make their rows NaN; a
    NaN query head leaves its group's selection alone and only its own output is NaN."""
    B, Hq, Hkv, D, PS, lens, budget = 2, 8, 2, 64, 16, [700, 200], 96
    table, P, seq_lens = random_page_table(B, lens, PS, seed=7)
    kmin = integer_tensor((P, Hkv, D), -4, 4, torch.bfloat16, seed=1)
    kmax = kmin + integer_tensor((P, Hkv, D), 0, 4, torch.bfloat16, seed=2)
    k_cache = torch.randn(P, Hkv, PS, D, generator=torch.Generator().manual_seed(4)).bfloat16()
    v_cache = torch.randn(P, Hkv, PS, D, generator=torch.Generator().manual_seed(5)).bfloat16()
    phys = table[0, 9].long()
    k_cache[phys, 1, 4, 5] = float("nan")  # the key of sequence 0, page 9, KV head 1 ...
    kmin[phys, 1, 5] = kmax[phys, 1, 5] = float("nan")  # ... and the metadata the rule gives it
    q = integer_tensor((B, Hq, D), -3, 4, torch.bfloat16, seed=3)
    q[1, 1, 7] = float("nan")
    k_pages = -(-budget // PS)
    config = StepConfig(chunk_pages=16, block_d=32, **cfg)
    rows = Hq if mode == "per_head" else Hkv
    geo = step_plan(B, rows, table.shape[1], k_pages, config, num_sms=4)
    ws = step_workspace(B, Hq, rows, D, geo, q.device)
    out, sel = quest_step(
        q,
        kmin,
        kmax,
        k_cache,
        v_cache,
        table,
        seq_lens,
        k_pages,
        gqa_mode=mode,
        aggregate=agg,
        config=config,
        workspace=ws,
        num_sms=4,
    )
    ref_out, ref_sel = quest_step_ref(q, kmin, kmax, k_cache, v_cache, table, seq_lens, budget, mode, agg)
    assert torch.equal(sel, ref_sel)
    assert torch.equal(torch.isnan(out), torch.isnan(ref_out))
    nan_rows = torch.isnan(ref_out).any(-1)
    want = torch.zeros(B, Hq, dtype=torch.bool)
    want[0, 4:] = True  # KV head 1's query heads attend to the NaN key (page 9 always selected)
    want[1, 1] = True  # the NaN query head alone
    assert torch.equal(nan_rows, want)
    torch.testing.assert_close(out[~nan_rows].float(), ref_out[~nan_rows], **TOL[torch.bfloat16])

"""Split-K paged decode (sparse and dense) + combine against the float32 reference."""

import pytest
import torch
import torch.nn.functional as F
from helpers import random_page_table

from questkern.config import DecodeConfig
from questkern.ops.decode import paged_attention_ref, paged_decode
from questkern.ops.select import select_pages_ref

TOL = {torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _inputs(B, Hq, Hkv, D, PS, lens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    table, P, seq_lens = random_page_table(B, lens, PS, seed=seed)
    k = torch.randn(P, Hkv, PS, D, generator=g).to(dtype)
    v = torch.randn(P, Hkv, PS, D, generator=g).to(dtype)
    q = torch.randn(B, Hq, D, generator=g).to(dtype)
    return q, k, v, table, seq_lens


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize(
    "B,Hq,Hkv,D,PS,lens,budget,mode,dtype,ppb,splits",
    [
        (1, 2, 1, 64, 16, [100], None, None, torch.float16, 2, 1),  # dense, one split (no combine)
        (3, 4, 1, 64, 16, [100, 37, 1], None, None, torch.bfloat16, 2, 3),  # dense, mixed, a 1-token sequence
        (2, 8, 1, 128, 8, [150, 9], None, None, torch.float16, 4, None),  # dense, GQA 8, page 8, heuristic splits
        (2, 4, 1, 64, 16, [300, 37], 64, "shared", torch.bfloat16, 2, 2),  # sparse shared GQA 4
        (2, 4, 2, 64, 16, [300, 37], 64, "per_head", torch.bfloat16, 2, 2),  # sparse per_head GQA 2
        (2, 2, 2, 128, 8, [300, 1], 64, "per_head", torch.float16, 4, 4),  # MHA, more splits than work
        (1, 8, 1, 64, 32, [333], 96, "shared", torch.float16, 1, 2),  # page 32, one page per block
    ],
)
def test_decode_matches_reference(B, Hq, Hkv, D, PS, lens, budget, mode, dtype, ppb, splits, fuse):
    q, k, v, table, seq_lens = _inputs(B, Hq, Hkv, D, PS, lens, dtype)
    sel = None
    if budget:
        kmin = torch.randn(table.max() + 1, Hkv, D)
        sel = select_pages_ref(q, kmin, kmin + 1, table, seq_lens, PS, budget, mode)
    out = torch.full_like(q, float("nan"))  # every element must be written
    paged_decode(
        q,
        k,
        v,
        table,
        seq_lens,
        sel,
        config=DecodeConfig(pages_per_block=ppb, fuse_combine=fuse),
        num_splits=splits,
        out=out,
    )
    ref = paged_attention_ref(q, k, v, table, seq_lens, sel)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])


def test_fused_combine_rearms_its_counters():
    """Repeated calls on one workspace (as in CUDA-graph replays) stay correct."""
    from questkern.ops.decode import decode_workspace

    q, k, v, table, seq_lens = _inputs(2, 4, 2, 64, 16, [90, 40], torch.float16, seed=7)
    ws = decode_workspace(2, 4, 3, 64, q.device)
    ref = paged_attention_ref(q, k, v, table, seq_lens, None)
    for _ in range(3):
        out = torch.full_like(q, float("nan"))
        paged_decode(q, k, v, table, seq_lens, None, num_splits=3, out=out, workspace=ws)
        torch.testing.assert_close(out.float(), ref, **TOL[torch.float16])
        assert torch.count_nonzero(ws[2]) == 0


def test_dense_decode_equals_sdpa():
    q, k, v, table, seq_lens = _inputs(1, 4, 2, 64, 16, [77], torch.float16, seed=3)
    out = paged_decode(q, k, v, table, seq_lens, None, num_splits=3)
    kc = k[table[0].long()].permute(1, 0, 2, 3).reshape(2, -1, 64)[:, :77]  # [Hkv, L, D]
    vc = v[table[0].long()].permute(1, 0, 2, 3).reshape(2, -1, 64)[:, :77]
    ref = F.scaled_dot_product_attention(
        q.float()[0, :, None], kc.float().repeat_interleave(2, 0), vc.float().repeat_interleave(2, 0)
    )[:, 0]
    torch.testing.assert_close(out[0].float(), ref, **TOL[torch.float16])


def test_physical_ids_path_matches_lookup():
    q, k, v, table, seq_lens = _inputs(2, 4, 1, 64, 16, [200, 50], torch.float16, seed=5)
    kmin = torch.randn(table.max() + 1, 1, 64)
    sel = select_pages_ref(q, kmin, kmin + 1, table, seq_lens, 16, 64, "shared")
    phys = torch.where(sel >= 0, torch.gather(table[:, None, :].long(), 2, sel.clamp(min=0).long()).int(), -1)
    a = paged_decode(q, k, v, table, seq_lens, sel, num_splits=2)
    b = paged_decode(q, k, v, table, seq_lens, sel, num_splits=2, selected_phys=phys)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rejects_blocks_too_small_for_tensor_cores():
    q, k, v, table, seq_lens = _inputs(1, 2, 1, 64, 8, [40], torch.float16)
    with pytest.raises(ValueError, match="pages_per_block"):
        paged_decode(q, k, v, table, seq_lens, None, config=DecodeConfig(pages_per_block=1))


# ---------------------------------------------------------------- NaN: the combine keeps it (README)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("where", ["k", "v", "q"])
@pytest.mark.parametrize("sparse", [False, True])
def test_split_with_nan_makes_its_rows_nan_like_dense(where, fuse, sparse):
    """A NaN in one split's keys, values or one query head: exactly the rows dense attention
    makes NaN are NaN, the others match the reference (before: a split whose partial was NaN
    got weight 0 in the combine and the row came out finite)."""
    B, Hq, Hkv, D, PS, lens = 2, 4, 2, 64, 16, [300, 100]
    q, k, v, table, seq_lens = _inputs(B, Hq, Hkv, D, PS, lens, torch.float16, seed=3)
    if where == "k":
        k[table[0, 14].long(), 1, 3, 7] = float("nan")  # sequence 0, KV head 1, token 227
    elif where == "v":
        v[table[0, 14].long(), 1, 3, 7] = float("nan")
    else:
        q[1, 2, 9] = float("nan")  # sequence 1, query head 2
    sel = None
    if sparse:  # page 14 selected: it holds the largest bound
        kmin = torch.zeros(int(table.max()) + 1, Hkv, D)
        kmax = kmin.clone()
        kmax[table[0, 14].long()] = 1.0
        sel = select_pages_ref(q.nan_to_num(0.5), kmin, kmax, table, seq_lens, PS, 64, "shared")
        assert (sel[0, 1] == 14).any()
    out = torch.full_like(q, 7.0)
    paged_decode(
        q, k, v, table, seq_lens, sel, config=DecodeConfig(pages_per_block=2, fuse_combine=fuse), num_splits=4, out=out
    )
    ref = paged_attention_ref(q, k, v, table, seq_lens, sel)
    nan_rows = torch.isnan(ref).any(-1)
    assert nan_rows.sum() in (1, 2) and torch.equal(torch.isnan(out), torch.isnan(ref))
    torch.testing.assert_close(out[~nan_rows].float(), ref[~nan_rows], **TOL[torch.float16])

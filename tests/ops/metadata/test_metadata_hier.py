"""Hierarchical (LServe-style) page metadata [P, Hkv, SUB, D]: build and append against
the float32 reference, per sub-page, exactly (float32, the key dtype, float8_e5m2 safe
rounding, the NaN rule); sub-pages with no valid token are never written."""

import pytest
import torch
from helpers import random_page_table

from questkern.ops.metadata import append_decode, metadata_build, metadata_build_ref


def _sub_valid(table, lens, page, sub):
    """{physical page: number of sub-pages holding a valid token} of the pages in use."""
    out = {}
    for b, n in enumerate(lens):
        for p in range(-(-n // page)):
            out[int(table[b, p])] = -(-min(page, n - p * page) // (page // sub))
    return out


@pytest.mark.parametrize(
    "page,sub_page,lens,D,dtype,meta",
    [
        (64, 16, [150, 5], 64, torch.bfloat16, torch.bfloat16),  # partial last pages, one short sequence
        (32, 8, [64, 1, 45], 128, torch.float16, torch.float32),  # exact multiple, one token, fp32 metadata
        (64, 16, [130, 17], 128, torch.bfloat16, torch.float8_e5m2),  # safe-rounded fp8 metadata
        (32, 8, [70, 9], 64, torch.float16, torch.float8_e5m2),
        (16, 4, [23], 64, torch.float16, torch.float16),  # the smallest sub-page
    ],
)
def test_hier_build_matches_reference(page, sub_page, lens, D, dtype, meta):
    B, H, SUB = len(lens), 2, page // sub_page
    table, P, seq_lens = random_page_table(B, lens, page)
    k = torch.randn(P, H, page, D).to(dtype)
    k[int(table[0, 0]), 1, 3, 5] = float("nan")  # a NaN key: that channel of sub-page 0 only is NaN
    kmin = torch.full((P, H, SUB, D), 7.0, dtype=meta)  # [P, Hkv, SUB, D]
    kmax = torch.full((P, H, SUB, D), 7.0, dtype=meta)
    metadata_build(k, kmin, kmax, table, seq_lens)
    ref_min, ref_max = metadata_build_ref(k, table, seq_lens, torch.full_like(kmin, 7.0), torch.full_like(kmax, 7.0))
    assert torch.equal(kmin.float().nan_to_num(99.0), ref_min.float().nan_to_num(99.0))
    assert torch.equal(kmax.float().nan_to_num(99.0), ref_max.float().nan_to_num(99.0))
    p0 = int(table[0, 0])
    assert torch.isnan(kmin[p0, 1, 0, 5].float()) and not torch.isnan(kmin[p0, 1, 1:, 5].float()).any()
    valid = _sub_valid(table, lens, page, SUB)
    for p in range(P):  # unused pages and empty sub-pages untouched; the others are a real min <= max
        n = valid.get(p, 0)
        assert torch.all(kmin[p, :, n:].float() == 7.0) and torch.all(kmax[p, :, n:].float() == 7.0)
        ok = (kmin[p, :, :n].float() <= kmax[p, :, :n].float()) | torch.isnan(kmin[p, :, :n].float())
        assert ok.all()
    # an ordinary (one min/max per page) build of the same keys is the min/max over the sub-pages in use
    if meta != torch.float8_e5m2:
        flat_min, flat_max = metadata_build_ref(k, table, seq_lens)
        for p, n in valid.items():
            assert torch.equal(ref_min[p, :, :n].float().amin(1).nan_to_num(99.0), flat_min[p].nan_to_num(99.0))
            assert torch.equal(ref_max[p, :, :n].float().amax(1).nan_to_num(99.0), flat_max[p].nan_to_num(99.0))


@pytest.mark.parametrize(
    "page,sub_page,dtype,meta",
    [
        (64, 16, torch.bfloat16, torch.bfloat16),
        (32, 8, torch.float16, torch.float32),
        (64, 16, torch.bfloat16, torch.float8_e5m2),
        (32, 8, torch.float16, torch.float8_e5m2),
    ],
)
def test_hier_append_equals_rebuild(page, sub_page, dtype, meta):
    """Token-by-token appends (each sub-page's first token starting afresh, over stale
    values) give exactly the rebuild; a NaN key poisons its sub-page's channel only."""
    B, H, D, SUB = 2, 2, 64, page // sub_page
    lens = [0, 5]
    steps = 2 * page + 3
    table, P, _ = random_page_table(B, [steps + 5, steps + 5], page, seed=4)
    k = torch.zeros(P, H, page, D, dtype=dtype)
    v = torch.zeros_like(k)
    g = torch.Generator().manual_seed(5)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    kmin = torch.full((P, H, SUB, D), 3.0, dtype=meta)  # stale values: an append must not read them
    kmax = torch.full((P, H, SUB, D), -3.0, dtype=meta)
    metadata_build(k, kmin, kmax, table, seq_lens)  # sequence 1's first 5 tokens (zeros)
    for t in range(steps):
        k_new = torch.randn(B, H, D, generator=g).to(dtype)
        if t == page + sub_page + 2:
            k_new[0, 1, 7] = float("inf")  # sequence 0, page 1, sub-page 1
        append_decode(k_new, torch.randn(B, H, D, generator=g).to(dtype), k, v, kmin, kmax, table, seq_lens)
    final = [steps, steps + 5]
    assert seq_lens.tolist() == final
    ref_min, ref_max = metadata_build_ref(k, table, seq_lens, kmin.clone(), kmax.clone())
    assert torch.equal(kmin.float().nan_to_num(99.0), ref_min.float().nan_to_num(99.0))
    assert torch.equal(kmax.float().nan_to_num(99.0), ref_max.float().nan_to_num(99.0))
    p1 = int(table[0, 1])
    assert torch.isnan(kmax[p1, 1, 1, 7].float())
    assert not torch.isnan(kmax[p1, 1, 0, 7].float()) and not torch.isnan(kmax[p1, 1, 2:, 7].float()).any()
    # the last page's sub-pages past the sequence end were never written (stale values kept)
    last = int(table[0, steps // page])
    n_sub = -(-(steps % page) // sub_page)
    assert torch.all(kmin[last, :, n_sub:].float() == 3.0) and torch.all(kmax[last, :, n_sub:].float() == -3.0)

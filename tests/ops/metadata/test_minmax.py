"""Page min/max and safe rounding of narrow metadata."""

from __future__ import annotations

import pytest
import torch

from questkern.ops.metadata.naive import metadata_build_ref
from questkern.ops.metadata.minmax import page_minmax, round_meta


def test_page_minmax_matches_metadata_reference():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 37, 32, generator=g)  # [H, S, D]: 3 pages of 16, the last partial
    kmin, kmax = page_minmax(keys, 16)
    n = 3
    k_cache = torch.zeros(n, 3, 16, 32)
    for p in range(n):
        t = keys[:, p * 16 : (p + 1) * 16]
        k_cache[p, :, : t.shape[1]] = t
    ref_min, ref_max = metadata_build_ref(
        k_cache, torch.arange(n, dtype=torch.int32)[None], torch.tensor([37], dtype=torch.int32)
    )
    assert torch.equal(kmin, ref_min) and torch.equal(kmax, ref_max)


def test_bf16_metadata_of_bf16_keys_is_exact():
    keys = torch.randn(2, 64, 64).to(torch.bfloat16)
    kmin, kmax = page_minmax(keys, 16)
    lo, hi = round_meta(kmin, kmax, "bf16")
    assert torch.equal(lo, kmin) and torch.equal(hi, kmax)
    lo8, hi8 = round_meta(kmin, kmax, "fp8_e5m2")
    assert (lo8 <= kmin).all() and (hi8 >= kmax).all() and not torch.equal(lo8, kmin)


def test_bad_arguments():
    with pytest.raises(ValueError, match="meta must be one of"):
        round_meta(torch.zeros(1), torch.zeros(1), "int4")

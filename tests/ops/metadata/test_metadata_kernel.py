"""metadata.build / metadata.append against the float32 reference: exact in float32 and
the key dtype; in float8_e5m2 equal to the reference's safe rounding (kmin down, kmax up)."""

import pytest
import torch
from helpers import random_page_table

from questkern.cache import PagedKVCache
from questkern.ops.metadata import append_decode, metadata_build, metadata_build_ref


@pytest.mark.parametrize(
    "page_size,lens,D,dtype,meta",
    [
        (16, [37, 5], 64, torch.bfloat16, torch.bfloat16),  # partial last pages, one single-page sequence
        (8, [8, 1, 23], 128, torch.float16, torch.float32),  # exact multiple, one token, fp32 metadata
        (32, [100], 64, torch.float16, torch.float16),
        (16, [37, 5], 128, torch.bfloat16, torch.float8_e5m2),  # safe-rounded fp8 metadata
        (8, [8, 1, 23], 64, torch.float16, torch.float8_e5m2),
    ],
)
def test_build_matches_reference(page_size, lens, D, dtype, meta):
    B, H = len(lens), 2
    table, P, seq_lens = random_page_table(B, lens, page_size)
    k = torch.randn(P, H, page_size, D).to(dtype)
    kmin = torch.full((P, H, D), 7.0, dtype=meta)
    kmax = torch.full((P, H, D), 7.0, dtype=meta)
    metadata_build(k, kmin, kmax, table, seq_lens)
    ref_min, ref_max = metadata_build_ref(k, table, seq_lens, torch.zeros_like(kmin), torch.zeros_like(kmax))
    used = torch.cat([table[b, : -(-n // page_size)] for b, n in enumerate(lens)]).long()
    torch.testing.assert_close(kmin[used].float(), ref_min[used].float(), rtol=0, atol=0)
    torch.testing.assert_close(kmax[used].float(), ref_max[used].float(), rtol=0, atol=0)
    unused = torch.ones(P, dtype=torch.bool)
    unused[used] = False
    assert torch.all(kmin[unused] == 7.0), "pages no sequence uses must be left alone"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_build_fp8_rounds_outward_at_the_edges(dtype):
    """Keys spanning e5m2's whole range and beyond: subnormals, +-0, values that round
    the wrong way to nearest, values past 57344 (kmax -> +inf, kmin stays finite)."""
    PS, D = 16, 64
    g = torch.Generator().manual_seed(3)
    mag = 10 ** torch.randint(-7, 6, (4, 1, PS, D), generator=g).float()
    k = (torch.randn(4, 1, PS, D, generator=g) * mag).clamp(-6e4, 6e4)
    k[0, 0, :, :4] = torch.tensor([0.0, -0.0, 1e-7, -1e-7])  # around zero
    k[1, 0, :, :2] = torch.tensor([60000.0, -60000.0])  # past e5m2's largest finite value
    if dtype == torch.float16:
        k = k.clamp(-6e4, 6e4)
    k = k.to(dtype)
    table = torch.arange(4, dtype=torch.int32)[None]  # [1, 4]
    seq_lens = torch.tensor([4 * PS - 3], dtype=torch.int32)  # last page partial
    kmin = torch.zeros(4, 1, D, dtype=torch.float8_e5m2)
    kmax = torch.zeros_like(kmin)
    metadata_build(k, kmin, kmax, table, seq_lens)
    ref_min, ref_max = metadata_build_ref(k, table, seq_lens, torch.zeros_like(kmin), torch.zeros_like(kmax))
    assert torch.equal(kmin.float(), ref_min.float()) and torch.equal(kmax.float(), ref_max.float())
    exact_min, exact_max = metadata_build_ref(k, table, seq_lens)  # float32
    assert (kmin.float() <= exact_min).all() and (kmax.float() >= exact_max).all(), "the bound must never tighten"
    assert torch.isinf(kmax.float()).any() and not torch.isinf(kmin.float()[kmin.float() > 0]).any()


def test_build_from_first_page_leaves_earlier_pages():
    table, P, seq_lens = random_page_table(1, [40], 16)
    k = torch.randn(P, 1, 16, 64).bfloat16()
    kmin = torch.full((P, 1, 64), 9.0).bfloat16()
    kmax = kmin.clone()
    metadata_build(k, kmin, kmax, table, seq_lens, first_page=torch.tensor([1], dtype=torch.int32), max_new_pages=2)
    assert torch.all(kmin[table[0, 0].long()] == 9.0)
    ref_min, _ = metadata_build_ref(k, table, seq_lens)
    for p in (1, 2):
        phys = table[0, p].long()
        assert torch.equal(kmin[phys].float(), ref_min[phys])


@pytest.mark.parametrize(
    "dtype,meta",
    [
        (torch.bfloat16, None),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float8_e5m2),
        (torch.float16, torch.float8_e5m2),
    ],
)
def test_append_equals_rebuild(dtype, meta):
    """Running min/max over decode appends equals a rebuild from the keys, across page boundaries."""
    torch.manual_seed(0)
    B, H, D, PS = 3, 2, 64, 8
    cache = PagedKVCache(B, 64, H, D, page_size=PS, dtype=dtype, device="cpu", meta_dtype=meta, shuffle=True)
    cache.append(torch.randn(B, 13, H, D).to(dtype), torch.randn(B, 13, H, D).to(dtype), [13, 8, 1])
    for _ in range(9):  # crosses a page boundary for every sequence
        cache.append_decode(torch.randn(B, H, D).to(dtype), torch.randn(B, H, D).to(dtype))
    assert cache.lens == [22, 17, 10]
    assert cache.seq_lens.tolist() == [22, 17, 10]
    ref_min, ref_max = metadata_build_ref(
        cache.k_cache, cache.page_table, cache.seq_lens, torch.zeros_like(cache.kmin), torch.zeros_like(cache.kmax)
    )
    for b, n in enumerate(cache.lens):
        pages = cache.page_table[b, : -(-n // PS)].long()
        assert torch.equal(cache.kmin[pages].float(), ref_min[pages].float())
        assert torch.equal(cache.kmax[pages].float(), ref_max[pages].float())


def test_append_writes_slot_and_skips_inactive():
    B, H, D, PS = 2, 1, 64, 16
    table, P, _ = random_page_table(B, [32, 32], PS)
    k_cache = torch.zeros(P, H, PS, D).half()
    v_cache = torch.zeros_like(k_cache)
    kmin = torch.zeros(P, H, D).half()
    kmax = torch.zeros_like(kmin)
    seq_lens = torch.tensor([16, 5], dtype=torch.int32)
    k_new = torch.randn(B, H, D).half()
    v_new = torch.randn(B, H, D).half()
    append_decode(k_new, v_new, k_cache, v_cache, kmin, kmax, table, seq_lens, torch.tensor([1, 0], dtype=torch.int32))
    assert seq_lens.tolist() == [17, 5]
    phys = table[0, 1].long()  # position 16 opens the second page
    assert torch.equal(k_cache[phys, 0, 0], k_new[0, 0]) and torch.equal(v_cache[phys, 0, 0], v_new[0, 0])
    assert torch.equal(kmin[phys, 0], k_new[0, 0]) and torch.equal(kmax[phys, 0], k_new[0, 0])
    assert torch.count_nonzero(k_cache[table[1].long()]) == 0, "inactive sequence must not be written"


# ---------------------------------------------------------------- NaN and infinity (README: one rule)

_META = [
    (torch.bfloat16, None),
    (torch.float16, torch.float32),
    (torch.float16, None),
    (torch.bfloat16, torch.float8_e5m2),
    (torch.float16, torch.float8_e5m2),
]


def _poison(k, where):
    """k [B, T, H, D]: channel 3 of head 0 gets NaN at token where[0], channel 5 +inf at where[1],
    channel 9 -inf at where[2]."""
    k = k.clone()
    k[:, where[0], 0, 3] = float("nan")
    k[:, where[1], 0, 5] = float("inf")
    k[:, where[2], 0, 9] = float("-inf")
    return k


def _check_nan_rule(cache, bad_pages):
    """Every channel of a page holding a non-finite key is NaN in kmin and kmax; the rest
    equal the reference, and the reference says the same."""
    ref_min, ref_max = metadata_build_ref(
        cache.k_cache, cache.page_table, cache.seq_lens, torch.zeros_like(cache.kmin), torch.zeros_like(cache.kmax)
    )
    for b, n in enumerate(cache.lens):
        pages = cache.page_table[b, : -(-n // cache.page_size)].long()
        got_min, got_max = cache.kmin[pages].float(), cache.kmax[pages].float()
        torch.testing.assert_close(got_min, ref_min[pages].float(), rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(got_max, ref_max[pages].float(), rtol=0, atol=0, equal_nan=True)
        for p in range(len(pages)):
            want = p in bad_pages
            for c in (3, 5, 9):
                assert bool(torch.isnan(got_min[p, 0, c])) == want and bool(torch.isnan(got_max[p, 0, c])) == want
            assert not torch.isnan(got_min[p, 1]).any() and not torch.isnan(got_min[p, 0, :3]).any()


@pytest.mark.parametrize("dtype,meta", _META)
def test_non_finite_key_makes_channel_nan_on_rebuild(dtype, meta):
    torch.manual_seed(1)
    B, H, D, PS = 2, 2, 64, 8
    cache = PagedKVCache(B, 64, H, D, page_size=PS, dtype=dtype, device="cpu", meta_dtype=meta, shuffle=True)
    k = _poison(torch.randn(B, 20, H, D).to(dtype), (9, 10, 15))  # all in page 1
    cache.append(k, torch.randn(B, 20, H, D).to(dtype), [20, 17])
    _check_nan_rule(cache, bad_pages={1})


@pytest.mark.parametrize("dtype,meta", _META)
def test_append_decode_follows_the_same_rule_as_the_rebuild(dtype, meta):
    """The same tokens written by prefill or one by one give the same metadata (before: the
    rebuild dropped a NaN key, the running min/max kept it)."""
    torch.manual_seed(2)
    B, H, D, PS, T = 2, 2, 64, 8, 20
    k = _poison(torch.randn(B, T, H, D).to(dtype), (9, 10, 15))
    v = torch.randn(B, T, H, D).to(dtype)
    one = PagedKVCache(B, 64, H, D, page_size=PS, dtype=dtype, device="cpu", meta_dtype=meta)
    one.append(k, v)
    step = PagedKVCache(B, 64, H, D, page_size=PS, dtype=dtype, device="cpu", meta_dtype=meta)
    step.append(k[:, :2].contiguous(), v[:, :2].contiguous())
    for t in range(2, T):
        step.append_decode(k[:, t].contiguous(), v[:, t].contiguous())
    for c in (one, step):
        _check_nan_rule(c, bad_pages={1})
    # a page that starts after the non-finite keys is clean again
    assert not torch.isnan(step.kmin[step.page_table[0, 2].long()].float()).any()

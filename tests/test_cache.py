"""PagedKVCache: page allocation, prefill in chunks, decode appends, limits."""

import pytest
import torch

import questkern
from questkern.ops.metadata import metadata_build_ref


def _logical(cache, b, pages=None):
    n = cache.lens[b]
    tab = cache.page_table[b, : -(-n // cache.page_size)].long()
    return cache.k_cache[tab].permute(1, 0, 2, 3).reshape(cache.num_kv_heads, -1, cache.head_dim)[:, :n]


def test_chunked_prefill_equals_one_shot():
    torch.manual_seed(0)
    k = torch.randn(2, 50, 2, 64).half()
    v = torch.randn(2, 50, 2, 64).half()
    one = questkern.PagedKVCache(2, 64, 2, 64, page_size=8, dtype=torch.float16, device="cpu")
    one.append(k, v, [50, 21])
    many = questkern.PagedKVCache(2, 64, 2, 64, page_size=8, dtype=torch.float16, device="cpu", shuffle=True)
    many.append(k[:, :13], v[:, :13], [13, 13])
    many.append(k[:, 13:], v[:, 13:], [37, 8])
    assert one.lens == many.lens == [50, 21]
    for b in range(2):
        assert torch.equal(_logical(one, b), _logical(many, b))
        assert torch.equal(_logical(one, b), k[b, : one.lens[b]].transpose(0, 1))
    ref_min, ref_max = metadata_build_ref(many.k_cache, many.page_table, many.seq_lens)
    for b in range(2):
        pages = many.page_table[b, : -(-many.lens[b] // 8)].long()
        assert torch.equal(many.kmin[pages].float(), ref_min[pages])
        assert torch.equal(many.kmax[pages].float(), ref_max[pages])


def test_out_of_pages_and_capacity_errors():
    c = questkern.PagedKVCache(2, 32, 1, 64, page_size=16, dtype=torch.float16, device="cpu", num_pages=3)
    c.append(torch.zeros(2, 16, 1, 64).half(), torch.zeros(2, 16, 1, 64).half())
    with pytest.raises(RuntimeError, match="out of pages"):
        c.append(torch.zeros(2, 16, 1, 64).half(), torch.zeros(2, 16, 1, 64).half())
    with pytest.raises(ValueError, match="max_seq_len capacity"):
        c.append(torch.zeros(2, 40, 1, 64).half(), torch.zeros(2, 40, 1, 64).half(), [40, 0])


def test_release_returns_pages():
    c = questkern.PagedKVCache(1, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu", num_pages=2)
    c.append(torch.zeros(1, 32, 1, 64).half(), torch.zeros(1, 32, 1, 64).half())
    c.release(0)
    assert c.lens == [0] and c.seq_lens.tolist() == [0]
    c.append(torch.zeros(1, 32, 1, 64).half(), torch.zeros(1, 32, 1, 64).half())  # pages were freed
    assert c.lens == [32]


@pytest.mark.parametrize("kw,match", [
    (dict(head_dim=96), "head_dim"), (dict(page_size=12), "page_size"), (dict(dtype=torch.float32), "dtype"),
    (dict(meta_dtype=torch.float16), "meta_dtype"), (dict(meta_dtype=torch.float8_e4m3fn), "meta_dtype"),
    (dict(num_kv_heads=0), "num_kv_heads"),
])
def test_constructor_validation(kw, match):
    args = dict(batch_size=1, max_seq_len=64, num_kv_heads=1, head_dim=64, page_size=16, dtype=torch.bfloat16, device="cpu")
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        questkern.PagedKVCache(**args)


def test_append_validation():
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.bfloat16, device="cpu")
    with pytest.raises(ValueError, match=r"k must have shape \[2, \*, 1, 64\]"):
        c.append(torch.zeros(3, 4, 1, 64).bfloat16(), torch.zeros(3, 4, 1, 64).bfloat16())
    with pytest.raises(TypeError, match="k must have dtype"):
        c.append_decode(torch.zeros(2, 1, 64), torch.zeros(2, 1, 64))
    with pytest.raises(ValueError, match="lens must hold 2 values"):
        c.append(torch.zeros(2, 4, 1, 64).bfloat16(), torch.zeros(2, 4, 1, 64).bfloat16(), [5, 1])


def test_reference_mode_matches_kernels():
    """reference=True (torch writes and metadata) keeps the same pages, lengths and metadata
    as the kernels, for a chunked prefill and decode appends; float32 pages only there."""
    torch.manual_seed(3)
    k = torch.randn(2, 30, 2, 32).bfloat16()
    v = torch.randn(2, 30, 2, 32).bfloat16()
    caches = [questkern.PagedKVCache(2, 48, 2, 32, page_size=8, device="cpu", reference=r) for r in (False, True)]
    for c in caches:
        c.append(k[:, :11], v[:, :11], [11, 5])
        c.append(k[:, 11:20], v[:, 11:20], [9, 2])
        for t in range(20, 24):
            c.append_decode(k[:, t].contiguous(), v[:, t].contiguous(), torch.tensor([1, t % 2], dtype=torch.int32))
    a, b = caches
    assert a.lens == b.lens == [24, 9]
    for name in ("k_cache", "v_cache", "kmin", "kmax", "page_table", "seq_lens"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c32 = questkern.PagedKVCache(1, 16, 2, 32, page_size=8, dtype=torch.float32, device="cpu", reference=True)
    c32.append(k[:1, :9].float(), v[:1, :9].float())
    ref_min, ref_max = metadata_build_ref(c32.k_cache, c32.page_table, c32.seq_lens)
    assert torch.equal(c32.kmin[:2], ref_min[:2]) and torch.equal(c32.kmax[:2], ref_max[:2])
    with pytest.raises(ValueError, match="dtype"):
        questkern.PagedKVCache(1, 16, 2, 32, dtype=torch.float32, device="cpu")


def test_reserve_then_appends_outside_the_cache():
    """reserve() maps the pages ahead; appends by the kernel alone (as a CUDA graph does)
    then land in them, sync_lens() brings the host lengths back, and later appends and
    release() keep using the same pages (none mapped twice)."""
    from questkern.ops.metadata import append_decode

    torch.manual_seed(4)
    c = questkern.PagedKVCache(2, 40, 2, 32, page_size=8, dtype=torch.float16, device="cpu", shuffle=True)
    c.append(torch.randn(2, 5, 2, 32).half(), torch.randn(2, 5, 2, 32).half(), [5, 3])
    c.reserve(20)
    table = c.page_table.clone()
    assert c.lens == [5, 3] and len(c._free) == 10 - 6
    act = torch.ones(2, dtype=torch.int32)
    for _ in range(12):
        k = torch.randn(2, 2, 32).half()
        append_decode(k, k, c.k_cache, c.v_cache, c.kmin, c.kmax, c.page_table, c.seq_lens, act)
    assert c.sync_lens() == [17, 15] and torch.equal(c.page_table, table)
    c.append_decode(torch.zeros(2, 2, 32).half(), torch.zeros(2, 2, 32).half())
    assert torch.equal(c.page_table[:, :3], table[:, :3]) and c.lens == [18, 16]
    c.release(0)
    assert len(c._free) == 4 + 3
    c.seq_lens[1] = 33
    with pytest.raises(RuntimeError, match="never mapped"):
        c.sync_lens()

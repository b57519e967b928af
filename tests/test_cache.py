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


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(head_dim=96), "head_dim"),
        (dict(page_size=12), "page_size"),
        (dict(dtype=torch.float32), "dtype"),
        (dict(meta_dtype=torch.float16), "meta_dtype"),
        (dict(meta_dtype=torch.float8_e4m3fn), "meta_dtype"),
        (dict(num_kv_heads=0), "num_kv_heads"),
        (dict(shuffle="yes"), "shuffle must be a bool"),
        (dict(seed=1.5), "seed must be an int"),
        (dict(num_pages=0), "num_pages"),
        (dict(max_seq_len=2.5), "max_seq_len"),
    ],
)
def test_constructor_validation(kw, match):
    args = dict(
        batch_size=1, max_seq_len=64, num_kv_heads=1, head_dim=64, page_size=16, dtype=torch.bfloat16, device="cpu"
    )
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


# ---------------------------------------------------------------- rejected calls change nothing


def _state(c):
    return (
        list(c.lens),
        list(c._free),
        c.page_table.clone(),
        c.seq_lens.clone(),
        c.kmin.clone(),
        c.kmax.clone(),
        c.k_cache.clone(),
    )


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    for x, y in zip(a[2:], b[2:]):
        assert torch.equal(x, y)


def _kv(B, T, H=1, D=64):
    torch.manual_seed(T)
    return torch.randn(B, T, H, D).half(), torch.randn(B, T, H, D).half()


def test_append_out_of_pages_takes_no_page():
    # sequence 0 fits, sequence 1 does not: before, sequence 0's pages stayed taken for good
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu", num_pages=3)
    k, v = _kv(2, 16)
    c.append(k, v, [16, 0])
    before = _state(c)
    k, v = _kv(2, 32)
    with pytest.raises(RuntimeError, match="out of pages"):
        c.append(k, v, [16, 32])
    _same(before, _state(c))
    c.append(k, v, [16, 16])  # the two free pages are still free
    assert c.lens == [32, 16]


def test_append_capacity_error_takes_no_page():
    c = questkern.PagedKVCache(2, 32, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    before = _state(c)
    k, v = _kv(2, 40)
    with pytest.raises(ValueError, match="max_seq_len capacity"):
        c.append(k, v, [16, 40])
    _same(before, _state(c))


def test_append_decode_out_of_pages_takes_no_page():
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu", num_pages=3)
    k, v = _kv(2, 16)
    c.append(k, v, [16, 16])  # two pages used, one free; both sequences need a new page
    before = _state(c)
    with pytest.raises(RuntimeError, match="out of pages"):
        c.append_decode(k[:, 0].contiguous(), v[:, 0].contiguous())
    _same(before, _state(c))
    c.append_decode(k[:, 0].contiguous(), v[:, 0].contiguous(), torch.tensor([True, False]))
    assert c.lens == [17, 16] and c.seq_lens.tolist() == [17, 16]


def test_append_that_fails_in_the_launch_rolls_back(monkeypatch):
    import questkern.cache as cache_mod

    c = questkern.PagedKVCache(1, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    k, v = _kv(1, 8)
    c.append(k, v)
    before = _state(c)

    def boom(*a, **kw):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(cache_mod, "metadata_build", boom)
    k, v = _kv(1, 30)
    with pytest.raises(RuntimeError, match="launch failed"):
        c.append(k, v)
    after = _state(c)
    assert after[0] == before[0] and after[1] == before[1]
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])


# ---------------------------------------------------------------- arguments checked before any work


@pytest.mark.parametrize(
    "lens,err,match",
    [
        ([2.5, 1], TypeError, "lens must be a list of 2 ints"),
        (torch.tensor([2.0, 1.0]), TypeError, "integer tensor"),
        ([True, 1], TypeError, "lens must be a list"),
        ([1], ValueError, "lens must hold 2 values"),
        ([1, -1], ValueError, "lens must hold 2 values"),
        ("ab", TypeError, "lens must be a list"),
    ],
)
def test_append_rejects_bad_lens(lens, err, match):
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    before = _state(c)
    k, v = _kv(2, 4)
    with pytest.raises(err, match=match):
        c.append(k, v, lens)
    _same(before, _state(c))


def test_append_accepts_integer_tensor_lens():
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    k, v = _kv(2, 4)
    c.append(k, v, torch.tensor([3, 1]))
    assert c.lens == [3, 1]


@pytest.mark.parametrize(
    "active,err,match",
    [
        (torch.tensor([True]), ValueError, "active must hold 2 flags"),
        (torch.tensor([True, False, True]), ValueError, "active must hold 2 flags"),
        (torch.tensor([0.5, 1.0]), TypeError, "active must be a 1-D bool"),
        (torch.tensor([2, 0]), ValueError, "active must hold 2 flags"),
        (torch.ones(2, 1, dtype=torch.bool), TypeError, "active must be a 1-D bool"),
    ],
)
def test_append_decode_rejects_bad_active(active, err, match):
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    k, v = _kv(2, 4)
    c.append(k, v)
    before = _state(c)
    with pytest.raises(err, match=match):
        c.append_decode(k[:, 0].contiguous(), v[:, 0].contiguous(), active)
    _same(before, _state(c))


@pytest.mark.parametrize("b,err", [(2, ValueError), (-1, ValueError), (0.0, TypeError), (True, TypeError)])
def test_release_rejects_bad_index(b, err):
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    k, v = _kv(2, 4)
    c.append(k, v)
    before = _state(c)
    with pytest.raises(err, match="b must"):
        c.release(b)
    _same(before, _state(c))


# ---------------------------------------------------------------- device mistakes, empty writes


@pytest.mark.parametrize(
    "device,err,match",
    [
        ("cuda", ValueError, "CUDA is not available"),
        ("cuda:3", ValueError, "CUDA is not available"),
        ("gpu", ValueError, "device must name a torch device"),
        ("meta", ValueError, "must be a CUDA device"),
        (7.5, TypeError, "device must be a torch.device"),
    ],
)
def test_device_mistakes_are_clear_errors(device, err, match, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(err, match=match):
        questkern.PagedKVCache(1, 64, 1, 64, page_size=16, dtype=torch.float16, device=device)


def test_empty_prefill_is_a_no_op():
    c = questkern.PagedKVCache(2, 64, 1, 64, page_size=16, dtype=torch.float16, device="cpu")
    before = _state(c)
    c.append(torch.zeros(2, 0, 1, 64).half(), torch.zeros(2, 0, 1, 64).half())
    c.append(torch.zeros(2, 5, 1, 64).half(), torch.zeros(2, 5, 1, 64).half(), [0, 0])
    _same(before, _state(c))
    k, v = _kv(2, 5)
    c.append(k, v, [5, 0])  # one empty sequence beside a full one
    assert c.lens == [5, 0]


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

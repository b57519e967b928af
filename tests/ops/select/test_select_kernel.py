"""Fused estimate + top-K against the float32 reference: selected page ids compared exactly.

Inputs are small integers so every score is exact in float32 whatever the summation
order; ties are real and must break toward the lower page index.
"""

import pytest
import torch
import triton
import triton.language as tl
from helpers import integer_tensor, random_page_table

from questkern.config import SelectConfig
from questkern.ops.select import select_pages, select_pages_ref, select_workspace
from questkern.ops.select.kernel import _topk_mask, _topk_mask_radix, stream_scores

CASES = [
    # B, Hq, Hkv, D, page, lens, budget, mode, agg, dtype, chunk, topk
    (1, 4, 1, 64, 16, [300], 64, "per_head", "sum", torch.bfloat16, 32, "bisect"),  # not a page multiple; one stage
    (1, 1, 1, 64, 16, [9], 64, "shared", "sum", torch.float16, 16, "bisect"),  # a single page
    (2, 8, 2, 64, 16, [200, 33], 4096, "shared", "sum", torch.float16, 16, "bisect"),  # budget > context: all pages
    (3, 8, 1, 64, 8, [700, 1, 333], 200, "shared", "max", torch.bfloat16, 16, "bisect"),  # mixed, two stages, GQA 8
    (2, 8, 2, 128, 16, [1000, 100], 64, "per_head", "sum", torch.float16, 16, "radix"),  # GQA 4, two stages, radix
    (2, 2, 2, 128, 32, [2000, 47], 256, "shared", "sum", torch.bfloat16, 16, "radix"),  # MHA, page 32
    (1, 4, 4, 64, 64, [1500], 128, "per_head", "sum", torch.float16, 16, "bisect"),  # page 64, one-page budget + last
]
FUSED = {3, 4, 5}  # two-stage cases also run with the merge fused into the tile kernel


def _physical_ids(table, out):
    """[B, rows, K] logical selection -> the physical page ids the kernel writes (-1 kept)."""
    return torch.where(
        out >= 0,
        torch.gather(table[:, None, :].expand(-1, out.shape[1], -1).long(), 2, out.clamp(min=0).long()).int(),
        -1,
    )


@pytest.mark.parametrize(
    "B,Hq,Hkv,D,PS,lens,budget,mode,agg,dtype,chunk,topk,fused",
    [c + (False,) for c in CASES] + [CASES[i] + (True,) for i in sorted(FUSED)],
)
def test_select_matches_reference(B, Hq, Hkv, D, PS, lens, budget, mode, agg, dtype, chunk, topk, fused):
    table, P, seq_lens = random_page_table(B, lens, PS)
    kmin = integer_tensor((P, Hkv, D), -4, 4, dtype, seed=1)
    kmax = kmin + integer_tensor((P, Hkv, D), 0, 4, dtype, seed=2)
    q = integer_tensor((B, Hq, D), -3, 4, dtype, seed=3)
    k_pages = -(-budget // PS)
    phys = torch.full((B, Hkv if mode == "shared" else Hq, k_pages), -7, dtype=torch.int32)
    cfg = SelectConfig(chunk_pages=chunk, block_d=min(64, D), topk=topk, fused_merge=fused)
    ws = select_workspace(B, phys.shape[1], table.shape[1], k_pages, cfg, q.device)
    for _ in range(2 if fused else 1):  # a second call on the same workspace: counters were rearmed
        out = select_pages(q, kmin, kmax, table, seq_lens, PS, k_pages, mode, agg, cfg, out_phys=phys, workspace=ws)
    assert torch.count_nonzero(ws[3]) == 0
    ref = select_pages_ref(q, kmin, kmax, table, seq_lens, PS, budget, mode, agg)
    assert torch.equal(out, ref)
    assert torch.equal(phys, _physical_ids(table, out))
    for b, n in enumerate(lens):  # the last page is always attended
        assert torch.all((out[b] == -(-n // PS) - 1).any(dim=-1))


@pytest.mark.parametrize(
    "mode,agg,tiles,stages,fused,topk",
    [
        ("shared", "sum", 1, 1, False, "bisect"),
        ("shared", "max", 2, 2, False, "bisect"),
        ("per_head", "sum", 4, 3, False, "bisect"),
        ("shared", "sum", 32, 2, False, "bisect"),
        ("shared", "sum", 2, 1, True, "bisect"),
        ("per_head", "max", 1, 2, True, "radix"),
    ],
)
def test_select_score_stream_matches_reference(mode, agg, tiles, stages, fused, topk):
    """Tiles smaller than K: stage 1 only scores (``_select_score_kernel``), each program
    streaming ``tiles_per_program`` tiles (more than there are, too), mixed lengths, GQA 4;
    with the fused merge, the last program of each row merges it (twice: counters rearm)."""
    lens, PS, budget = [1100, 140, 17], 16, 400  # K = 25 pages > chunk 16; 69 pages: 5 tiles
    table, P, seq_lens = random_page_table(3, lens, PS)
    kmin = integer_tensor((P, 2, 64), -4, 4, torch.bfloat16, seed=11)
    kmax = kmin + integer_tensor((P, 2, 64), 0, 4, torch.bfloat16, seed=12)
    q = integer_tensor((3, 8, 64), -3, 4, torch.bfloat16, seed=13)
    k_pages = budget // PS
    cfg = SelectConfig(
        chunk_pages=16, block_d=32, tiles_per_program=tiles, num_stages=stages, fused_merge=fused, topk=topk
    )
    assert stream_scores(cfg, k_pages)
    phys = torch.full((3, 2 if mode == "shared" else 8, k_pages), -7, dtype=torch.int32)
    ws = select_workspace(3, phys.shape[1], table.shape[1], k_pages, cfg, q.device)
    for _ in range(2 if fused else 1):
        out = select_pages(q, kmin, kmax, table, seq_lens, PS, k_pages, mode, agg, cfg, out_phys=phys, workspace=ws)
    assert torch.count_nonzero(ws[3]) == 0
    assert torch.equal(out, select_pages_ref(q, kmin, kmax, table, seq_lens, PS, budget, mode, agg))
    assert torch.equal(phys, _physical_ids(table, out))


def test_select_fp32_metadata():
    table, P, seq_lens = random_page_table(2, [500, 70], 16)
    kmin = integer_tensor((P, 2, 64), -4, 4, torch.float32, seed=4)
    kmax = kmin + 1
    q = integer_tensor((2, 4, 64), -3, 4, torch.bfloat16, seed=5)
    out = select_pages(q, kmin, kmax, table, seq_lens, 16, 5, "shared", "sum", SelectConfig(chunk_pages=16))
    assert torch.equal(out, select_pages_ref(q, kmin, kmax, table, seq_lens, 16, 80, "shared", "sum"))


@pytest.mark.parametrize(
    "Hq,Hkv,mode,dtype,chunk",
    [
        (4, 4, "per_head", torch.bfloat16, 16),  # MHA: float32 products; two stages
        (8, 2, "shared", torch.float16, 16),  # GQA 4: tensor-core dots on metadata upcast to fp16
        (8, 1, "per_head", torch.bfloat16, 64),  # GQA 8, one stage
    ],
)
def test_select_fp8_metadata(Hq, Hkv, mode, dtype, chunk):
    """float8_e5m2 metadata (small integers: exact in e5m2, scores exact), some of it +-inf
    as a key past +-57344 leaves it: read as +-the largest query-dtype value on both sides
    (bf16: 3.4e38, so such a page outranks the four pages of finite score 688128; fp16:
    65504, a bound of any fp16 key, which they outrank)."""
    lens, PS = [500, 70], 16
    table, P, seq_lens = random_page_table(2, lens, PS)
    kmin = integer_tensor((P, Hkv, 64), -4, 4, torch.float32, seed=4)
    kmax = kmin + integer_tensor((P, Hkv, 64), 0, 3, torch.float32, seed=5)
    kmax[table[0, 3].long(), :, 5] = float("inf")  # these pages must then be picked by every row,
    kmin[table[1, 1].long(), :, 7] = float("-inf")  # as q_5 > 0 / q_7 < 0 (set below)
    kmax[table[0, 6].long(), :, 9] = float("inf")  # facing q_9 <= 0: adds q_9 * kmin_9, never NaN
    kmax[table[0, 8:12].long(), :, 10:14] = 57344.0  # 4 pages above any finite reading of inf (K-1 = 4)
    kmin, kmax = kmin.to(torch.float8_e5m2), kmax.to(torch.float8_e5m2)
    q = integer_tensor((2, Hq, 64), -3, 4, dtype, seed=6)
    q[0, :, 5] = 1
    q[1, :, 7] = -1
    q[0, :, 9] = -2
    q[0, 0, 9] = 0
    q[0, :, 10:14] = 3
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, 5, mode, "sum", SelectConfig(chunk_pages=chunk, block_d=32))
    ref = select_pages_ref(q, kmin, kmax, table, seq_lens, PS, 80, mode, "sum")
    assert torch.equal(out, ref)
    picked = (out[0] == 3).any(-1).all() and (out[1] == 1).any(-1).all()
    assert picked == (dtype == torch.bfloat16)


def test_ties_break_toward_lower_page_index():
    table, P, seq_lens = random_page_table(1, [160], 16)  # 10 pages, all with equal bounds
    kmin = torch.zeros(P, 1, 64, dtype=torch.float16)
    kmax = torch.ones(P, 1, 64, dtype=torch.float16)
    q = torch.ones(1, 1, 64, dtype=torch.float16)
    for chunk in (16, 64):
        out = select_pages(q, kmin, kmax, table, seq_lens, 16, 4, config=SelectConfig(chunk_pages=chunk))
        assert out.tolist() == [[[0, 1, 2, 9]]]


@triton.jit
def _topk_probe(s_ptr, v_ptr, o_ptr, k, N: tl.constexpr, RADIX: tl.constexpr):
    o = tl.arange(0, N)
    s = tl.load(s_ptr + o)
    v = tl.load(v_ptr + o) != 0
    if RADIX:
        m = _topk_mask_radix(s, v, k)
    else:
        m = _topk_mask(s, v, k)
    tl.store(o_ptr + o, m.to(tl.int32))


def _topk_ref(s, v, k):
    s = torch.where(v, s, torch.tensor(float("-inf")))
    m = torch.zeros_like(v)
    m[torch.sort(s, descending=True, stable=True).indices[:k]] = True
    return m & v


@pytest.mark.parametrize("radix", [False, True])
def test_topk_mask_on_awkward_floats(radix):
    """Negative, -0.0, +-inf, subnormal, duplicate, all-equal and sign-split scores; k from 0 to past N."""
    g = torch.Generator().manual_seed(0)
    pools = [
        torch.randn(64, generator=g) * 1e3,
        torch.randint(-3, 3, (64,), generator=g).float(),
        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -1e-40, 3.0, -3.0] * 8),
        -torch.rand(64, generator=g),
        torch.full((64,), 5.0),  # all equal: the search has no bit to find
        torch.cat([torch.full((32,), -3e38), torch.full((32,), 3e38)]),  # keys differ in the sign bit
        1.0 + torch.randint(0, 4, (64,), generator=g).float() * 2.0**-20,  # differ only in low bits
        torch.randn(64, generator=g) * 1e-42,
    ]  # subnormal
    for i, s in enumerate(pools):
        for k in (0, 1, 7, 63, 64, 80):
            v = torch.rand(64, generator=g) > 0.2
            o = torch.empty(64, dtype=torch.int32)
            _topk_probe[(1,)](s, v.int(), o, k, N=64, RADIX=radix)
            assert torch.equal(o.bool(), _topk_ref(s, v, k)), (i, k)


@pytest.mark.parametrize("radix", [False, True])
def test_topk_mask_on_page_like_scores(radix):
    """512 positive scores of similar size (the search starts low and stops early) and
    the same rounded to a few values (ties at the boundary); k around a quarter of N."""
    g = torch.Generator().manual_seed(1)
    base = 20.0 + 3.0 * torch.randn(512, generator=g)
    for s in (base, base.round() / 4):
        for k in (1, 127, 128, 300, 511):
            v = torch.rand(512, generator=g) > 0.05
            o = torch.empty(512, dtype=torch.int32)
            _topk_probe[(1,)](s, v.int(), o, k, N=512, RADIX=radix)
            assert torch.equal(o.bool(), _topk_ref(s, v, k)), k


# ---------------------------------------------------------------- NaN and infinity (README: one rule)


def _nan_inputs(meta_dtype, Hq, Hkv, lens, PS, seed=20):
    """Integer metadata with NaN channels on a few pages (a non-finite key was written there),
    a NaN and an infinite query head in the first group of sequence 0."""
    table, P, seq_lens = random_page_table(len(lens), lens, PS, seed=seed)
    kmin = integer_tensor((P, Hkv, 64), -4, 4, torch.float32, seed=seed + 1)
    kmax = kmin + integer_tensor((P, Hkv, 64), 0, 4, torch.float32, seed=seed + 2)
    nan_pages = [(0, 2), (0, 9), (1, 1)]  # (sequence, logical page), none the last page
    for b, p in nan_pages:
        kmin[table[b, p].long(), 0, 5] = float("nan")
        kmax[table[b, p].long(), 0, 5] = float("nan")
    q = integer_tensor((len(lens), Hq, 64), -3, 4, torch.bfloat16, seed=seed + 3)
    q[0, 1, 7] = float("nan")
    q[0, 2, 3] = float("inf")
    return q, kmin.to(meta_dtype), kmax.to(meta_dtype), table, seq_lens, nan_pages


@pytest.mark.parametrize("mode,agg", [("shared", "sum"), ("shared", "max"), ("per_head", "sum")])
@pytest.mark.parametrize("meta", [torch.bfloat16, torch.float8_e5m2])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(chunk_pages=64),
        dict(chunk_pages=16),
        dict(chunk_pages=16, topk="radix"),
        dict(chunk_pages=16, fused_merge=True),
    ],
    ids=["one-stage", "tile-topk", "radix", "fused"],
)
def test_nan_metadata_pages_always_selected_and_nan_query_heads_left_out(mode, agg, meta, cfg):
    """The rule on every select path: a page with NaN metadata ranks as +inf (taken by every
    row of its KV head); a query head holding NaN/inf does not change its group's shared
    selection (before: NaN scores ranked by their sign bit, a NaN head poisoned the group)."""
    Hq, Hkv, PS, lens, k_pages = 8, 2, 16, [700, 200], 6
    q, kmin, kmax, table, seq_lens, nan_pages = _nan_inputs(meta, Hq, Hkv, lens, PS)
    config = SelectConfig(block_d=32, **cfg)
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, k_pages, mode, agg, config)
    ref = select_pages_ref(q, kmin, kmax, table, seq_lens, PS, k_pages * PS, mode, agg)
    assert torch.equal(out, ref)
    rows = range(1) if mode == "shared" else [0, 3]  # KV head 0's selection rows with finite query heads
    for b, p in nan_pages:
        for r in rows:
            assert (out[b, r] == p).any(), f"page {p} of sequence {b} (NaN metadata) not selected by row {r}"
    if mode == "shared":  # the NaN / inf query heads are left out: same pages as without them
        q2 = q.clone()
        q2[0, 1:3] = 0
        keep = torch.tensor([True, False, False, True] + [True] * 4)
        from questkern.ops.select.naive import page_scores_ref, selection_rows_ref, topk_pages_ref

        s = page_scores_ref(q2, kmin, kmax, table, seq_lens, PS)[0]
        want = topk_pages_ref(selection_rows_ref(s, Hkv, mode, agg, keep), k_pages)
        assert torch.equal(out[0], want)


@pytest.mark.parametrize(
    "cfg",
    [dict(chunk_pages=16), dict(chunk_pages=16, fused_merge=True), dict(chunk_pages=64)],
    ids=["two-stage", "fused-merge", "one-stage"],
)
@pytest.mark.parametrize("k_pages", [4, 25])  # tile top-K / score stream
def test_sequence_longer_than_the_page_table_is_clamped_and_flagged(cfg, k_pages):
    """seq_lens past the page-table width (grown after plan): the selection is that of the
    sequence cut at the width (never a page id past it), and bit 0 of ``status`` is set."""
    PS, width = 16, 40
    table, P, seq_lens = random_page_table(2, [width * PS, 300], PS)
    kmin = integer_tensor((P, 2, 64), -4, 4, torch.bfloat16, seed=31)
    kmax = kmin + integer_tensor((P, 2, 64), 0, 4, torch.bfloat16, seed=32)
    q = integer_tensor((2, 4, 64), -3, 4, torch.bfloat16, seed=33)
    config = SelectConfig(block_d=32, **cfg)
    status = torch.zeros(1, dtype=torch.int32)
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, k_pages, "shared", "sum", config, status=status)
    assert int(status) == 0
    grown = seq_lens.clone()
    grown[0] = 5000
    out2 = select_pages(q, kmin, kmax, table, grown, PS, k_pages, "shared", "sum", config, status=status)
    assert int(status) == 1
    assert torch.equal(out2, out) and int(out2.max()) == width - 1

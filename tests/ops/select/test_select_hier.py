"""Selection over hierarchical pages (metadata [P, Hkv, SUB, D]: a page scores the max of
its sub-pages' bounds, top-K over physical pages) against the float32 reference, page ids
compared exactly. Small-integer inputs: every score is exact whatever the summation order."""

import pytest
import torch
from helpers import integer_tensor, random_page_table

from questkern.config import SelectConfig
from questkern.ops.select import select_pages, select_pages_ref, select_workspace
from questkern.ops.select.kernel import stream_scores
from questkern.ops.select.naive import page_scores_ref

CASES = [
    # B, Hq, Hkv, D, page, sub_page, lens, budget, mode, agg, dtype, chunk
    (1, 4, 1, 64, 64, 16, [1300], 256, "per_head", "sum", torch.bfloat16, 32),  # not a page multiple; one stage
    (1, 1, 1, 64, 64, 16, [40], 256, "shared", "sum", torch.float16, 16),  # a single page
    (2, 8, 2, 64, 32, 8, [200, 33], 4096, "shared", "sum", torch.float16, 16),  # budget > context: all pages
    (3, 8, 1, 64, 32, 8, [1400, 1, 333], 200, "shared", "max", torch.bfloat16, 16),  # mixed, two stages, GQA 8
    (2, 8, 2, 128, 64, 16, [2000, 100], 256, "per_head", "sum", torch.float16, 16),  # GQA 4, two stages, d 128
    (2, 2, 2, 128, 32, 8, [1500, 47], 128, "shared", "sum", torch.bfloat16, 16),  # MHA, two stages (tile top-K)
    (2, 8, 2, 64, 64, 16, [3000, 700], 1152, "shared", "sum", torch.bfloat16, 16),  # K = 18 > chunk: score stream
    (1, 8, 1, 64, 32, 8, [2000], 640, "per_head", "max", torch.float16, 16),  # per_head GQA 8, score stream
]


def _meta(P, Hkv, SUB, D, dtype, seed):
    kmin = integer_tensor((P, Hkv, SUB, D), -4, 4, dtype, seed=seed)  # [P, Hkv, SUB, D]
    kmax = kmin + integer_tensor((P, Hkv, SUB, D), 0, 4, dtype, seed=seed + 1)
    return kmin, kmax


@pytest.mark.parametrize("B,Hq,Hkv,D,PS,SP,lens,budget,mode,agg,dtype,chunk", CASES)
def test_hier_select_matches_reference(B, Hq, Hkv, D, PS, SP, lens, budget, mode, agg, dtype, chunk):
    table, P, seq_lens = random_page_table(B, lens, PS)
    kmin, kmax = _meta(P, Hkv, PS // SP, D, dtype, seed=1)
    q = integer_tensor((B, Hq, D), -3, 4, dtype, seed=3)
    k_pages = -(-budget // PS)
    rows = Hkv if mode == "shared" else Hq
    phys = torch.full((B, rows, k_pages), -7, dtype=torch.int32)
    cfg = SelectConfig(chunk_pages=chunk, block_d=min(64, D))
    ws = select_workspace(B, rows, table.shape[1], k_pages, cfg, q.device)
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, k_pages, mode, agg, cfg, out_phys=phys, workspace=ws)
    ref = select_pages_ref(q, kmin, kmax, table, seq_lens, PS, budget, mode, agg)
    assert torch.equal(out, ref)
    want_phys = torch.where(
        out >= 0, torch.gather(table[:, None, :].expand(-1, rows, -1).long(), 2, out.clamp(min=0).long()).int(), -1
    )
    assert torch.equal(phys, want_phys)
    for b, n in enumerate(lens):  # the last page is always attended
        assert torch.all((out[b] == -(-n // PS) - 1).any(dim=-1))


def test_hier_paths_cover_one_stage_tile_and_stream():
    """The cases above run every path: one tile, tiles with a per-tile top-K, the score stream."""
    paths = set()
    for case in CASES:
        PS, lens, budget, chunk = case[4], case[6], case[7], case[-1]
        n_pages = max(-(-n // PS) for n in lens)
        k_pages = -(-budget // PS)
        cfg = SelectConfig(chunk_pages=chunk)
        paths.add("one" if max(1, n_pages - 1) <= chunk else "stream" if stream_scores(cfg, k_pages) else "tile")
    assert paths == {"one", "tile", "stream"}


def test_hier_score_is_max_over_sub_pages():
    """The reference's page score is the max of the sub-page bounds; a page whose best
    sub-page is the only good one outranks pages that are uniformly middling."""
    PS, D = 64, 64  # sub-pages of 16 tokens: SUB = 4
    table = torch.arange(6, dtype=torch.int32)[None]  # [1, 6]
    seq_lens = torch.tensor([6 * PS], dtype=torch.int32)
    q = torch.ones(1, 1, D, dtype=torch.bfloat16)
    kmin = torch.zeros(6, 1, 4, D, dtype=torch.bfloat16)
    kmax = torch.ones(6, 1, 4, D, dtype=torch.bfloat16)  # every sub-page: bound D
    kmax[3, 0, 2] = 3.0  # page 3: one sub-page with bound 3 D
    kmax[1, 0, :] = 2.0  # page 1: every sub-page 2 D
    s = page_scores_ref(q, kmin, kmax, table, seq_lens, PS)[0][0]
    assert s.tolist() == [D, 2 * D, D, 3 * D, D, D]
    cfg = SelectConfig(chunk_pages=16)
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, 3, "shared", "sum", cfg)
    assert out.tolist() == [[[1, 3, 5]]]  # the two best, then the last page
    assert torch.equal(out, select_pages_ref(q, kmin, kmax, table, seq_lens, PS, 3 * PS))


@pytest.mark.parametrize("chunk", [64, 16])  # one stage / two stages
@pytest.mark.parametrize("mode", ["shared", "per_head"])
def test_hier_ties_break_toward_lower_page_index(chunk, mode):
    """Identical metadata on every page: the lowest pages win, then the last one."""
    PS, SP, D, n = 32, 8, 64, 40
    table, P, seq_lens = random_page_table(1, [n * PS - 5], PS, seed=7)
    one = integer_tensor((1, 2, PS // SP, 64), -4, 4, torch.float16, seed=8)
    kmin = one.expand(P, -1, -1, -1).contiguous()
    kmax = (one + 2).expand(P, -1, -1, -1).contiguous()
    q = integer_tensor((1, 4, D), -3, 4, torch.float16, seed=9)
    out = select_pages(q, kmin, kmax, table, seq_lens, PS, 6, mode, "sum", SelectConfig(chunk_pages=chunk))
    assert torch.equal(out, select_pages_ref(q, kmin, kmax, table, seq_lens, PS, 6 * PS, mode))
    assert torch.all(out == torch.tensor([0, 1, 2, 3, 4, n - 1], dtype=torch.int32))


@pytest.mark.parametrize("meta", [torch.bfloat16, torch.float8_e5m2])
def test_hier_nan_sub_page_selects_its_page(meta):
    """A NaN in one sub-page (a non-finite key) makes its page rank first, as for whole pages;
    fp8 metadata is read like the ordinary path's."""
    PS, SP, D = 64, 16, 64
    table, P, seq_lens = random_page_table(2, [1500, 700], PS, seed=3)
    kmin, kmax = _meta(P, 2, PS // SP, D, torch.bfloat16, seed=4)
    kmin, kmax = kmin.to(meta), kmax.to(meta)
    for p in (int(table[0, 9]), int(table[1, 2])):
        kmin[p, 1, 3, 5] = float("nan")
        kmax[p, 1, 3, 5] = float("nan")
    q = integer_tensor((2, 8, D), -3, 4, torch.bfloat16, seed=5)
    for mode in ("shared", "per_head"):
        for chunk in (64, 16):
            out = select_pages(q, kmin, kmax, table, seq_lens, PS, 4, mode, "sum", SelectConfig(chunk_pages=chunk))
            assert torch.equal(out, select_pages_ref(q, kmin, kmax, table, seq_lens, PS, 4 * PS, mode))
            rows = out[0, 1] if mode == "shared" else out[0, 4:]
            assert torch.all((rows == 9).any(dim=-1))

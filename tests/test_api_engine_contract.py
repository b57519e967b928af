"""The engine contract of QuestDecode (README "Serving engines that own their page tables"):
an engine keeps its own pages, page table and lengths; plan() once; between steps it
changes their *contents* in place; a new tensor object, batch or table width needs a re-plan."""

import pytest
import torch
from helpers import integer_tensor

import questkern
from questkern.ops.decode import paged_attention_ref
from questkern.ops.metadata import append_decode, metadata_build
from questkern.ops.select import select_pages_ref

B, HKV, HQ, PAGE, D, MAX_PAGES, NUM_PAGES = 2, 2, 8, 16, 64, 8, 20


class Engine:
    """What a serving engine owns: a page pool, a page table, lengths, a free list."""

    def __init__(self, lens, seed=0):
        dt = torch.bfloat16
        self.k = torch.zeros(NUM_PAGES, HKV, PAGE, D, dtype=dt)  # [pages, Hkv, page, D]
        self.v = torch.zeros_like(self.k)
        self.kmin = torch.zeros(NUM_PAGES, HKV, D, dtype=dt)  # [pages, Hkv, D], the key dtype: exact
        self.kmax = torch.zeros_like(self.kmin)
        self.page_table = torch.zeros(B, MAX_PAGES, dtype=torch.int32)  # [B, max_pages]
        self.seq_lens = torch.tensor(lens, dtype=torch.int32)  # [B]
        self.free = torch.randperm(NUM_PAGES, generator=torch.Generator().manual_seed(seed)).tolist()
        self.seed = seed
        for b, n in enumerate(lens):  # prefill: map pages, write K/V, then build their metadata
            for p in range(-(-n // PAGE)):
                self.page_table[b, p] = self.free.pop()
            for t in range(n):
                phys, slot = int(self.page_table[b, t // PAGE]), t % PAGE
                self.k[phys, :, slot] = self.rand((HKV, D), -4, 5)
                self.v[phys, :, slot] = torch.randn(HKV, D).to(dt)
        metadata_build(self.k, self.kmin, self.kmax, self.page_table, self.seq_lens)

    def rand(self, shape, lo, hi):
        self.seed += 1
        return integer_tensor(shape, lo, hi, torch.bfloat16, self.seed)  # integers: exact scores

    def decode_token(self):
        """Map a page where a sequence crosses into a new one (in place), then append."""
        for b in range(B):
            n = int(self.seq_lens[b])
            if n % PAGE == 0:
                self.page_table[b, n // PAGE] = self.free.pop()
        k = self.rand((B, HKV, D), -4, 5)
        append_decode(
            k, torch.randn(B, HKV, D).bfloat16(), self.k, self.v, self.kmin, self.kmax, self.page_table, self.seq_lens
        )  # writes at seq_lens[b], updates that page's min/max, seq_lens += 1

    def check(self, w, q):
        out, sel = w.run(q, return_selected=True)
        want = select_pages_ref(q, self.kmin, self.kmax, self.page_table, self.seq_lens, PAGE, 48)
        assert torch.equal(sel, want)
        ref = paged_attention_ref(q, self.k, self.v, self.page_table, self.seq_lens, want)
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
        return out.clone()


def test_in_place_changes_need_no_replan():
    e = Engine([47, 16])
    w = questkern.QuestDecode(48)  # 3 pages per step
    w.plan(
        k_cache=e.k,
        v_cache=e.v,
        kmin=e.kmin,
        kmax=e.kmax,
        page_table=e.page_table,
        seq_lens=e.seq_lens,
        num_q_heads=HQ,
        max_seq_len=MAX_PAGES * PAGE,
    )  # max_seq_len: the tuning bucket for the whole loop
    q = e.rand((B, HQ, D), -3, 4)
    for _ in range(2):  # new tokens (sequence 1 crosses into its second page: mapped in place)
        e.decode_token()
        e.check(w, q)
    # move a page (defragmenting): copy it, point the table at the copy, in place
    src = int(e.page_table[0, 1])
    dst = e.free.pop()
    for t in (e.k, e.v, e.kmin, e.kmax):
        t[dst] = t[src]
    before = e.check(w, q)
    e.page_table[0, 1] = dst
    for t in (e.k, e.v, e.kmin, e.kmax):  # the old page is reused for something else: run must not read it
        t[src] = 0
    e.free.append(src)
    assert torch.equal(e.check(w, q), before)
    # a sequence finishes and a shorter one takes its slot: new contents, shorter length, in place
    e.seq_lens[1] = 5
    e.k[int(e.page_table[1, 0]), :, :5] = e.rand((HKV, 5, D), -4, 5)
    metadata_build(e.k, e.kmin, e.kmax, e.page_table, e.seq_lens)
    e.check(w, q)


def test_what_needs_a_replan():
    e = Engine([40, 33], seed=3)
    w = questkern.QuestDecode(48)
    w.plan(
        k_cache=e.k, v_cache=e.v, kmin=e.kmin, kmax=e.kmax, page_table=e.page_table, seq_lens=e.seq_lens, num_q_heads=HQ
    )
    q = e.rand((B, HQ, D), -3, 4)
    old = e.check(w, q)
    # a new tensor object (not an in-place write) is invisible to the plan: run reads the old one
    e.seq_lens = e.seq_lens.clone()
    e.seq_lens[0] = 20
    assert torch.equal(w.run(q), old)
    w.plan(
        k_cache=e.k, v_cache=e.v, kmin=e.kmin, kmax=e.kmax, page_table=e.page_table, seq_lens=e.seq_lens, num_q_heads=HQ
    )
    e.check(w, q)  # re-planned: the new lengths count
    # another batch size: run refuses the query before any launch (q is checked, the cache is not)
    with pytest.raises(ValueError, match="q must have shape"):
        w.run(e.rand((B + 1, HQ, D), -3, 4))
    # plan checks what run cannot afford to (a host read): lengths and page ids
    bad = e.seq_lens.clone()
    bad[1] = MAX_PAGES * PAGE + 1
    with pytest.raises(ValueError, match="exceeds the page table capacity"):
        w.plan(
            k_cache=e.k, v_cache=e.v, kmin=e.kmin, kmax=e.kmax, page_table=e.page_table, seq_lens=bad, num_q_heads=HQ
        )

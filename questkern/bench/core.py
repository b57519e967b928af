"""One benchmark case: every op of a decode step and its baselines, timed in one run.

Ops (CSV column ``op``):
    select          fused estimate + top-K (questkern.ops.select)
    topk_torch      torch.topk over the same page scores (from the float32 reference; what
                    select replaces, without computing them)
    sparse_decode   split-K decode over the selected pages + combine
    quest_step      select + sparse_decode + combine, the whole Quest step (CUDA graph)
    dense_decode    in-house dense paged decode (same kernel, all pages)
    sdpa            torch.nn.functional.scaled_dot_product_attention over the whole context
    flex_quest      torch.compile'd FlexAttention over the same selected pages (a block mask of
                    them at page granularity, or 128-token blocks if the page size is refused),
                    the peer a user would otherwise reach for; GPU only
Bytes are the fewest a kernel must move (each input read once); ``gbps`` is bytes over
the median time and ``pct_copy_bw`` compares it with the copy bandwidth of the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from questkern._dtypes import meta_name, short_name
from questkern.api import QuestDecode
from questkern._timing import time_fn
from questkern.cache import PagedKVCache, prefill_chunked
from questkern.ops.decode import paged_attention_ref, paged_decode
from questkern.ops.select import select_pages, select_pages_ref
from questkern.ops.select.naive import page_scores_ref, selection_rows_ref


@dataclass(frozen=True)
class Case:
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    seq_len: int
    page_size: int
    budget: int
    gqa_mode: str = "shared"
    lens: tuple[int, ...] | None = None  # per-sequence lengths (mixed batch); default all seq_len
    meta_dtype: torch.dtype | None = None  # page metadata dtype; None = the key dtype (exact)
    sub_page_size: int | None = None  # hierarchical pages: one min/max per sub-page of this many tokens

    def seq_lens(self) -> list[int]:
        return list(self.lens) if self.lens else [self.seq_len] * self.batch

    def describe(self) -> dict:
        d = asdict(self)
        d["dtype"] = short_name(self.dtype)
        d["lens"] = "mixed" if self.lens else ""
        d["meta_dtype"] = meta_name(self.meta_dtype)
        d["sub_page_size"] = self.sub_page_size or ""
        return d


def build_cache(case: Case, device, *, integer_keys: bool = False, seed: int = 0) -> PagedKVCache:
    """A cache filled with random keys/values (shuffled pages), prefilled chunk by chunk."""
    lens = case.seq_lens()
    cache = PagedKVCache(
        case.batch,
        max(lens),
        case.kv_heads,
        case.head_dim,
        page_size=case.page_size,
        dtype=case.dtype,
        device=device,
        shuffle=True,
        seed=seed,
        meta_dtype=case.meta_dtype,
        sub_page_size=case.sub_page_size,
    )
    gen = torch.Generator(device=device).manual_seed(seed)

    def make_kv(shape):
        if integer_keys:  # exact scores (in fp8 metadata too): selection can be compared bit for bit
            k = torch.randint(-8, 8, shape, generator=gen, device=device).to(case.dtype)
        else:
            k = torch.randn(shape, generator=gen, device=device).to(case.dtype)
        return k, torch.randn(shape, generator=gen, device=device).to(case.dtype)

    prefill_chunked(cache, lens, make_kv)
    return cache


def _contiguous_kv(cache: PagedKVCache, L: int):
    """K, V as [B, Hkv, L, D] in logical order (for SDPA), from the paged cache, one sequence
    at a time (a whole-batch gather would hold two more copies: 30 GB at batch 32, MHA, 57K)."""
    B, Hkv, D, PS = cache.batch_size, cache.num_kv_heads, cache.head_dim, cache.page_size
    n_pages = -(-L // PS)
    tab = cache.page_table[:, :n_pages].long()  # [B, n]

    def gather(pages):  # [P, Hkv, PAGE, D] -> [B, Hkv, L, D]
        out = torch.empty(B, Hkv, L, D, dtype=pages.dtype, device=pages.device)
        for b in range(B):
            x = pages[tab[b]]  # [n, Hkv, PAGE, D]
            out[b] = x.permute(1, 0, 2, 3).reshape(Hkv, n_pages * PS, D)[:, :L]
        return out

    return gather(cache.k_cache), gather(cache.v_cache)


def case_bytes(case: Case, meta_elt: int) -> dict[str, int]:
    """Fewest bytes each op must move."""
    elt = case.dtype.itemsize
    B, Hq, Hkv, D, PS = case.batch, case.q_heads, case.kv_heads, case.head_dim, case.page_size
    lens = case.seq_lens()
    pages = [-(-L // PS) for L in lens]
    k_pages = -(-case.budget // PS)
    rows_kv = Hkv if (case.gqa_mode == "shared" or Hq == Hkv) else Hq
    q_out = 2 * B * Hq * D * elt
    sub = PS // case.sub_page_size if case.sub_page_size else 1  # min/max pairs a page
    meta = sum(pages) * sub * Hkv * D * 2 * meta_elt
    sel_tokens = sum(min(p, k_pages) * PS for p in pages)  # attended tokens, padded to pages
    sparse = sel_tokens * rows_kv * D * 2 * elt
    dense = sum(lens) * Hkv * D * 2 * elt
    padded = B * max(lens) * Hkv * D * 2 * elt
    return {
        "select": meta + B * Hq * D * elt,
        "topk_torch": sum(pages) * (Hkv if case.gqa_mode == "shared" else Hq) * 4,
        "sparse_decode": sparse + q_out,
        "quest_step": meta + sparse + q_out,
        "dense_decode": dense + q_out,
        "sdpa": padded + q_out,
    }


def _selection_scores(q, cache: PagedKVCache, case: Case, rows: int, width: int) -> torch.Tensor:
    """[B, rows, width] float32: the page scores select ranks (float32 reference; -inf past
    a sequence's pages), so torch.topk is timed on the same scores."""
    out = torch.full((case.batch, rows, width), float("-inf"), device=q.device)
    for b, s in enumerate(page_scores_ref(q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, case.page_size)):
        r = selection_rows_ref(s, case.kv_heads, case.gqa_mode, "sum")  # [rows, n]
        out[b, :, : r.shape[1]] = r
    return out


def heuristic_decoders(case: Case, path: str = "auto") -> tuple[QuestDecode, QuestDecode]:
    """The Quest step and the dense decode of ``case`` with the documented heuristic
    configs forced (``configs=`` overrides), whatever the tuning table holds."""
    from questkern.configs.runtime import heuristic_config

    shape = dict(head_dim=case.head_dim, page_size=case.page_size, seq_len=case.seq_len)
    quest = QuestDecode(
        case.budget,
        gqa_mode=case.gqa_mode,
        path=path,
        configs={op: heuristic_config(op, **shape) for op in ("select", "sparse_decode", "quest_step")},
    )
    dense = QuestDecode(None, configs={"dense_decode": heuristic_config("dense_decode", **shape)})
    return quest, dense


def run_case(
    case: Case,
    device,
    *,
    check: bool = False,
    rep_ms: int = 200,
    flex: bool = False,
    vs_heuristic: bool = False,
    path: str = "auto",
    compare_paths: bool = False,
) -> tuple[list[dict], dict]:
    """Time every op of ``case``. Returns (rows, check results). ``vs_heuristic`` also
    times the Quest step and the dense decode with the heuristic configs
    (``quest_step_heuristic``, ``dense_decode_heuristic``), right after the tuned ones.
    ``path`` is the Quest step's (``QuestDecode(path=...)``); the ``select`` and
    ``sparse_decode`` rows always time the classic path's two stages (its breakdown).
    ``compare_paths`` also times the classic step (``quest_step_classic``) and, where
    ``path`` is classic, the fused one (``quest_step_fused``)."""
    if case.sub_page_size and (path == "fused" or compare_paths):
        raise ValueError(
            "a hierarchical-page case (sub_page_size) runs the classic path only: no path='fused', no compare_paths"
        )
    cache = build_cache(case, device, integer_keys=check)
    lens = case.seq_lens()
    B, Hq, D = case.batch, case.q_heads, case.head_dim
    gen = torch.Generator(device=device).manual_seed(1)
    if check:
        q = torch.randint(-4, 5, (B, Hq, D), generator=gen, device=device).to(case.dtype)
    else:
        q = torch.randn(B, Hq, D, generator=gen, device=device).to(case.dtype)
    graph = device.type == "cuda"
    quest = QuestDecode(case.budget, gqa_mode=case.gqa_mode, path="classic")  # its stages time the breakdown
    plan = quest.plan(cache, num_q_heads=Hq)
    step = QuestDecode(case.budget, gqa_mode=case.gqa_mode, path=path)
    step_plan = step.plan(cache, num_q_heads=Hq)
    other = None
    if compare_paths:
        other_path = "fused" if step_plan.path == "classic" else "classic"
        other = QuestDecode(case.budget, gqa_mode=case.gqa_mode, path=other_path)
        other_plan = other.plan(cache, num_q_heads=Hq)
    dense = QuestDecode(None)
    dense_plan = dense.plan(cache, num_q_heads=Hq)
    _, selected = quest.run(q, return_selected=True)
    selected = selected.clone()
    selected_phys = quest._selected_phys.clone()
    sel_buf = torch.empty_like(selected)
    times = {}
    times["select"] = time_fn(
        lambda: select_pages(
            q,
            cache.kmin,
            cache.kmax,
            cache.page_table,
            cache.seq_lens,
            case.page_size,
            plan.k_pages,
            case.gqa_mode,
            "sum",
            plan.select_config,
            out=sel_buf,
            workspace=quest._sel_ws,
        ),
        graph=graph,
        rep_ms=rep_ms,
    )
    n_pages_max = cache.page_table.shape[1]
    scores = _selection_scores(q, cache, case, selected.shape[1], n_pages_max)  # the scores select ranks
    times["topk_torch"] = time_fn(
        lambda: torch.topk(scores, min(plan.k_pages, n_pages_max), dim=-1), graph=graph, rep_ms=rep_ms
    )
    out_buf = torch.empty_like(q)
    times["sparse_decode"] = time_fn(
        lambda: paged_decode(
            q,
            cache.k_cache,
            cache.v_cache,
            cache.page_table,
            cache.seq_lens,
            selected,
            None,
            plan.decode_config,
            num_splits=plan.num_splits,
            out=out_buf,
            workspace=quest._dec_ws,
            selected_phys=selected_phys,
        ),
        graph=graph,
        rep_ms=rep_ms,
    )
    times["quest_step"] = time_fn(lambda: step.run(q), graph=graph, rep_ms=rep_ms)
    if other is not None:
        times[f"quest_step_{other_plan.path}"] = time_fn(lambda: other.run(q), graph=graph, rep_ms=rep_ms)
    times["dense_decode"] = time_fn(lambda: dense.run(q), graph=graph, rep_ms=rep_ms)
    checks = {}
    if vs_heuristic:
        quest_h, dense_h = heuristic_decoders(case, path)
        heur_splits = {
            "quest_step_heuristic": quest_h.plan(cache, num_q_heads=Hq).num_splits,
            "dense_decode_heuristic": dense_h.plan(cache, num_q_heads=Hq).num_splits,
        }
        times["quest_step_heuristic"] = time_fn(lambda: quest_h.run(q), graph=graph, rep_ms=rep_ms)
        times["dense_decode_heuristic"] = time_fn(lambda: dense_h.run(q), graph=graph, rep_ms=rep_ms)
        if check:  # the same pages, whichever config selected them
            checks["heuristic_select_exact"] = bool(torch.equal(quest_h.run(q, return_selected=True)[1], selected))
    # SDPA over the whole context in logical order; a mixed-length batch is padded to its
    # longest sequence with a boolean mask (what a user without a paged kernel would run)
    L = max(lens)
    k_c, v_c = _contiguous_kv(cache, L)
    q4 = q[:, :, None, :]  # [B, Hq, 1, D]
    gqa = Hq != case.kv_heads
    mask = None
    if case.lens is not None:
        mask = (torch.arange(L, device=device)[None, :] < torch.tensor(lens, device=device)[:, None])[:, None, None, :]
    times["sdpa"] = time_fn(
        lambda: F.scaled_dot_product_attention(q4, k_c, v_c, attn_mask=mask, enable_gqa=gqa), graph=graph, rep_ms=rep_ms
    )
    if check:
        sdpa_out = F.scaled_dot_product_attention(q4, k_c, v_c, attn_mask=mask, enable_gqa=gqa)[:, :, 0].float()
        checks["dense_vs_sdpa_maxerr"] = (dense.run(q).float() - sdpa_out).abs().max().item()
    if flex and device.type == "cuda":
        peer = _flex_peer(q4, k_c, v_c, selected, cache.seq_lens, case.page_size, gqa)
        if peer is not None:
            fn, block = peer
            try:
                times["flex_quest"] = time_fn(fn, graph=graph, rep_ms=rep_ms)
            except Exception as e:  # the peer is left out of this case, the run goes on
                print(f"    flex_quest timing failed: {str(e).splitlines()[0][:200]}")
            else:
                if check:
                    checks["flex_vs_quest_maxerr"] = (fn()[:, :, 0].float() - quest.run(q).float()).abs().max().item()
                checks["flex_block"] = block
    if check:
        ref_sel = select_pages_ref(
            q, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens, case.page_size, case.budget, case.gqa_mode
        )[:, :, : plan.k_pages]
        ref = paged_attention_ref(q, cache.k_cache, cache.v_cache, cache.page_table, cache.seq_lens, selected)
        checks["select_exact"] = bool(torch.equal(selected, ref_sel))
        out, step_sel = step.run(q, return_selected=True)
        checks["step_select_exact"] = bool(torch.equal(step_sel, ref_sel))
        checks["quest_maxerr"] = (out.float() - ref).abs().max().item()
        if other is not None:
            out, other_sel = other.run(q, return_selected=True)
            checks[f"{other_plan.path}_select_exact"] = bool(torch.equal(other_sel, ref_sel))
            checks[f"{other_plan.path}_maxerr"] = (out.float() - ref).abs().max().item()
    nbytes = case_bytes(case, cache.kmin.element_size())
    nbytes["flex_quest"] = nbytes["sparse_decode"]
    nbytes["quest_step_heuristic"], nbytes["dense_decode_heuristic"] = nbytes["quest_step"], nbytes["dense_decode"]
    nbytes["quest_step_classic"] = nbytes["quest_step_fused"] = nbytes["quest_step"]
    rows = []
    sources = ",".join(f"{k}={v}" for k, v in {**plan.sources, **step_plan.sources, **dense_plan.sources}.items())
    for op, us in times.items():
        if op.endswith("_heuristic"):
            splits, source = heur_splits[op], "heuristic (forced: --vs-heuristic)"
        else:
            splits = {
                "sparse_decode": plan.num_splits,
                "quest_step": step_plan.num_splits,
                "dense_decode": dense_plan.num_splits,
            }.get(op, "")
            if other is not None and op == f"quest_step_{other_plan.path}":
                splits = other_plan.num_splits
            source = sources
        if op.startswith("quest_step") and not op.endswith("_heuristic"):
            source += f",path={(step_plan if op == 'quest_step' else other_plan).path}"
        rows.append(
            {
                **case.describe(),
                "op": op,
                "median_us": us,
                "bytes": nbytes[op],
                "splits": splits,
                "config_source": source,
            }
        )
    return rows, checks


_FLEX = None


def _flex_peer(q4, k_c, v_c, selected, seq_lens, page_size: int, gqa: bool):
    """FlexAttention restricted to the selected pages: (callable, kv block size) or None.

    The mask is exact at token level (selected page and position < seq_len); the block
    mask lets FlexAttention skip unselected blocks. A refusal or compile failure is
    printed and the peer is left out rather than failing the run.
    """
    global _FLEX
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except Exception as e:  # pragma: no cover - old torch
        print(f"    flex_quest skipped: {e!r}")
        return None
    if _FLEX is None:
        # one compile per shape (dynamic=False): a bench of many shapes would pass dynamo's
        # default limit of 8 and fall back to an eager flex_attention that CUDA graphs refuse
        import torch._dynamo.config as dynamo_config  # (not `import torch._dynamo`: it would make torch local)

        for name in ("recompile_limit", "accumulated_recompile_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 1024))
        _FLEX = torch.compile(flex_attention, dynamic=False)
    B, Hq, _, D = q4.shape
    L = k_c.shape[2]
    n_pages = -(-L // page_size)
    rows = selected.shape[1]
    allowed = torch.zeros(B, rows, n_pages + 1, dtype=torch.bool, device=q4.device)
    allowed.scatter_(2, torch.where(selected >= 0, selected, n_pages).long(), True)
    allowed = allowed[:, :, :n_pages]
    if rows != Hq:  # shared selection: one row per KV head serves its query heads
        allowed = allowed.repeat_interleave(Hq // rows, dim=1)
    lens = seq_lens.to(q4.device)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, h, kv_idx // page_size] & (kv_idx < lens[b])

    for block in (page_size, 128):
        try:
            bm = create_block_mask(
                mask_mod, B, Hq, 1, L, device=q4.device, BLOCK_SIZE=(128, block) if block != 128 else 128
            )
            fn = lambda: _FLEX(q4, k_c, v_c, block_mask=bm, enable_gqa=gqa)  # noqa: E731, B023 (called in this iteration)
            fn()
            torch.cuda.synchronize()
            return fn, block
        except Exception as e:
            print(f"    flex_quest with {block}-token KV blocks failed: {str(e).splitlines()[0][:200]}")
    return None

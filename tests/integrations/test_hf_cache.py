"""QuestCache: transformers generate() with K/V only in questkern's pages (tiny random Llama, CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import tiny_llama

from questkern.integrations.hf import QuestAttention, QuestCache, disable_quest, enable_quest
from questkern.integrations.hf_generate import cache_kwarg, left_pad

pytestmark = pytest.mark.filterwarnings("ignore:questkern attention on cpu", "ignore:.*past_key_values.*deprecated")


def prompts_of(lens, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=g).tolist() for n in lens]


@torch.no_grad()
def hf_generate(model, prompts, new, cache=None, **kw):
    ids, mask, _ = left_pad(prompts, 0, "cpu")
    extra = {cache_kwarg(model): cache} if cache is not None else {}
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0, **extra, **kw
    )
    return out[:, ids.shape[1] :]


@pytest.mark.parametrize("lens", [[16], [11], [16, 37, 5]], ids=["one_page", "partial_page", "ragged_batch"])
def test_budget_covering_the_context_gives_the_dense_tokens(lens):
    """Greedy tokens with QuestCache (budget >= context, Quest past the first layer) equal
    transformers' own (DynamicCache + SDPA) exactly; the pages hold each prompt unpadded,
    the same keys DynamicCache holds, and nothing else holds a copy."""
    from transformers import DynamicCache

    model = tiny_llama()
    P = prompts_of(lens)
    new = 5
    dyn = DynamicCache(config=model.config)
    dense = hf_generate(model, P, new, dyn)
    enable_quest(model, QuestAttention(budget=4096, page_size=16, dense_layers=1))
    cache = QuestCache(model, max_cache_len=max(lens) + new, batch_size=len(lens))
    quest = hf_generate(model, P, new, cache)
    assert torch.equal(quest, dense)
    assert cache.lens == [n + new - 1 for n in lens]
    T = max(lens)
    for layer, pc in enumerate(cache.pages):
        assert pc.dtype == torch.float32 and pc.reference  # CPU default: the references, exact pages
        for b, n in enumerate(cache.lens):
            phys = pc.page_table[b, : -(-n // 16)].long()
            stored = pc.k_cache[phys].transpose(0, 1).reshape(2, -1, 32)[:, :n]  # [Hkv, n, D]
            want = dyn.layers[layer].keys[b, :, T - lens[b] :]  # drop the left padding
            torch.testing.assert_close(stored, want[:, :n], rtol=1e-5, atol=1e-5)
    assert all(layer.keys is None for layer in cache.layers)  # no contiguous copy kept
    pages = sum(-(-(max(lens) + new) // 16) for _ in lens)
    assert cache.kv_bytes() == 3 * (
        2 * pages * 2 * 16 * 32 * 4 + 2 * pages * 2 * 32 * 4 + len(lens) * (pages // len(lens) + 1) * 4
    )


def test_small_budget_selects_what_the_reference_selects():
    """At 2 pages of ~7, every Quest layer of the ragged batched run picks, per sequence,
    the pages the independent path picks (the hook on DynamicCache: metadata recomputed
    from the contiguous keys, select_pages_ref), and the tokens agree."""
    model = tiny_llama()
    lens, new = [100, 70], 3
    P = prompts_of(lens, seed=2)
    picks = {}
    enable_quest(
        model,
        QuestAttention(
            budget=32,
            page_size=16,
            dense_layers=1,
            backend="reference",
            on_select=lambda l, s: picks.setdefault("batched", []).append((l, s.clone())),
        ),
    )
    batched = hf_generate(model, P, new, QuestCache(model, max_cache_len=110))
    for b in range(2):
        key = f"row{b}"
        enable_quest(
            model,
            QuestAttention(
                budget=32,
                page_size=16,
                dense_layers=1,
                backend="reference",
                on_select=lambda l, s, key=key: picks.setdefault(key, []).append((l, s.clone())),
            ),
        )
        single = hf_generate(model, [P[b]], new)  # DynamicCache: the hook's own path
        assert torch.equal(single[0], batched[b])
        got = [(l, s[b]) for l, s in picks["batched"]]
        want = [(l, s[0]) for l, s in picks[key]]
        assert [l for l, _ in got] == [l for l, _ in want] == [1, 2] * (new - 1)
        for (_, a), (_, w) in zip(got, want):
            assert torch.equal(a, w)
            assert (a >= 0).sum() == a.numel() == 2 * 2  # 2 KV heads x 2 pages: really sparse
    disable_quest(model)


def test_kernels_backend_matches_the_reference_backend():
    """The Triton path (interpreter here; the default on CUDA) picks the same pages as the
    references on the same bf16 pages, and gives close logits; no second copy either."""
    model = tiny_llama(layers=2, dtype=torch.bfloat16)
    P = prompts_of([40, 23], seed=3)
    runs = {}
    for backend in ("reference", "kernels"):
        picked = []
        enable_quest(
            model,
            QuestAttention(
                budget=16,
                page_size=8,
                dense_layers=1,
                backend=backend,
                on_select=lambda l, s, picked=picked: picked.append(s.clone()),
            ),
        )
        cache = QuestCache(model, max_cache_len=44)
        ids, mask, _ = left_pad(P, 0, "cpu")
        kw = {cache_kwarg(model): cache}
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **kw)
            logits = model(
                input_ids=torch.tensor([[5], [7]]),
                position_ids=torch.tensor([[40], [23]]),
                attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
                **kw,
            ).logits
        runs[backend] = (logits.float(), picked, cache)
    (ref, p_ref, c_ref), (ker, p_ker, c_ker) = runs["reference"], runs["kernels"]
    assert len(p_ref) == len(p_ker) == 1
    assert torch.equal(p_ref[0], p_ker[0])
    torch.testing.assert_close(ker, ref, rtol=0.05, atol=0.05)
    assert c_ker.pages[0].dtype == torch.bfloat16 and not c_ker.pages[0].reference
    a, b = c_ref.pages[0], c_ker.pages[0]  # layer 0 saw the same keys in both runs (later ones: after attention)
    for name in ("k_cache", "kmin", "kmax", "page_table", "seq_lens"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_chunked_prefill_and_sampling():
    """A prompt arriving in two chunks (the second attends over the pages) gives the
    logits of a one-shot prefill; generate() samples with QuestCache."""
    from transformers import DynamicCache

    model = tiny_llama()
    ids = torch.tensor(prompts_of([45], seed=4))
    kw_name = cache_kwarg(model)
    with torch.no_grad():
        dense = model(input_ids=ids, **{kw_name: DynamicCache(config=model.config)}).logits[0, -1]
        enable_quest(model, QuestAttention(budget=4096, dense_layers=1))
        cache = QuestCache(model, max_cache_len=64)
        model(input_ids=ids[:, :20], **{kw_name: cache})
        chunked = model(input_ids=ids[:, 20:], **{kw_name: cache}).logits[0, -1]
    torch.testing.assert_close(chunked, dense, rtol=1e-5, atol=1e-5)
    assert cache.lens == [45] and cache.get_seq_length() == 45
    torch.manual_seed(0)
    P = prompts_of([9, 14], seed=5)
    ids, mask, _ = left_pad(P, 0, "cpu")
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=True,
        top_k=20,
        pad_token_id=0,
        **{kw_name: QuestCache(model, max_cache_len=18)},
    )
    assert out.shape == (2, 14 + 4) and int(out.max()) < 96


def test_refusals_are_clear():
    model = tiny_llama(layers=2)
    with pytest.raises(ValueError, match="enable_quest"):
        QuestCache(model, max_cache_len=32)
    enable_quest(model, QuestAttention(budget=32))
    with pytest.raises(TypeError, match="max_cache_len"):
        QuestCache(model, max_cache_len=3.5)
    P = prompts_of([9, 14], seed=6)
    ids, mask, _ = left_pad(P, 0, "cpu")
    kw = cache_kwarg(model)
    with pytest.raises(NotImplementedError, match="beam search"):
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=3,
            num_beams=2,
            do_sample=False,
            pad_token_id=0,
            **{kw: QuestCache(model, max_cache_len=32)},
        )
    cache = QuestCache(model, max_cache_len=32, batch_size=2)
    with pytest.raises(ValueError, match="beam search"):  # refused before anything is written
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=3,
            num_beams=2,
            do_sample=False,
            pad_token_id=0,
            **{kw: cache},
        )
    assert cache.pages == [None, None]
    small = QuestCache(model, max_cache_len=15)
    with pytest.raises(ValueError, match="max_cache_len = 15"):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, pad_token_id=0, **{kw: small})
    cache = QuestCache(model, max_cache_len=32)
    model.set_attn_implementation("sdpa")  # switched away after the cache was made: the chunk is never written
    with pytest.raises(RuntimeError, match="enable_quest"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **{kw: cache})
        model(input_ids=ids[:, :1], **{kw: cache})


def test_backend_defaults_to_the_device():
    """auto: the kernels on CUDA, the references elsewhere, said once per process."""
    from questkern.integrations import hf_cache

    hf_cache._warned.discard("cpu")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert hf_cache.resolve_backend("auto", torch.device("cpu")) == "reference"
        assert hf_cache.resolve_backend("auto", torch.device("cpu")) == "reference"
    assert len([w for w in seen if "questkern attention on cpu" in str(w.message)]) == 1
    assert hf_cache.resolve_backend("auto", torch.device("cuda", 1)) == "kernels"  # no device touched
    assert hf_cache.resolve_backend("kernels", torch.device("cpu")) == "kernels"
    assert QuestAttention().backend == "auto"
    assert QuestAttention(meta="bf16").resolved_backend(torch.device("cuda", 0)) == "reference"


def test_selection_reuse_same_on_both_backends_and_reused_between_selections():
    """QuestAttention(reselect_every=3): the kernels and the reference keep the same rows at
    every step, and a row only changes at a selection step (page crossings select too)."""
    model = tiny_llama(layers=2, dtype=torch.bfloat16)
    P = prompts_of([40, 23], seed=4)
    runs = {}
    for backend in ("reference", "kernels"):
        picked: list = []
        enable_quest(
            model,
            QuestAttention(
                budget=16,
                page_size=8,
                dense_layers=1,
                backend=backend,
                reselect_every=3,
                on_select=lambda l, s, picked=picked: picked.append(s.clone().cpu()),
            ),
        )
        cache = QuestCache(model, max_cache_len=52)
        ids, mask, _ = left_pad(P, 0, "cpu")
        kw = {cache_kwarg(model): cache}
        pos = torch.tensor([[40], [23]])
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **kw)
            for t in range(5):
                mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
                model(input_ids=torch.tensor([[5 + t], [7 + t]]), position_ids=pos + t, attention_mask=mask, **kw)
        runs[backend] = picked
    assert len(runs["reference"]) == len(runs["kernels"]) == 5
    for a, b in zip(runs["reference"], runs["kernels"]):
        assert torch.equal(a, b)
    # sequence 0 (41.. tokens, 6 pages): selects at steps 0 and 3; sequence 1 (24.. tokens): at 0, at 1
    # (crosses into page 4) and 4 (age 3)
    sel = runs["kernels"]
    assert torch.equal(sel[1][0], sel[0][0]) and torch.equal(sel[2][0], sel[0][0]) and torch.equal(sel[4][0], sel[3][0])
    assert torch.equal(sel[2][1], sel[1][1]) and torch.equal(sel[3][1], sel[1][1])
    assert not torch.equal(sel[1][1], sel[0][1])  # the crossing's new last page is in the rows


def test_reuse_settings_are_checked():
    with pytest.raises(ValueError, match="reselect_every"):
        QuestAttention(reselect_every=0)
    with pytest.raises(ValueError, match="drift_threshold"):
        QuestAttention(drift_threshold=2.0)
    with pytest.raises(ValueError, match="need a budget"):
        QuestAttention(budget=None, reselect_every=4)

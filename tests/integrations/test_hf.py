"""questkern as a transformers attention function, on a tiny random Llama (fast on CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama

from questkern.integrations.hf import QuestAttention, disable_quest, enable_quest, questkern_attention
from questkern.ops.decode.naive import paged_attention_ref
from questkern.ops.select import select_pages_ref
from questkern.ops.select.adaptive_naive import AdaptiveBudget
from questkern.ops.metadata.minmax import page_minmax


@torch.no_grad()
def run_decode(model, ids, steps):
    """Prefill ids[:-steps], then feed the last ``steps`` tokens one at a time; logits [steps, V]."""
    from transformers import DynamicCache

    from questkern.integrations.hf_generate import cache_kwarg

    kw = {cache_kwarg(model): DynamicCache(config=model.config)}  # "cache" (5.2x) or "past_key_values" (5.17)
    S0 = len(ids) - steps
    model(input_ids=torch.tensor([ids[:S0]]), use_cache=True, **kw)
    out = []
    for i in range(steps):
        o = model(input_ids=torch.tensor([[ids[S0 + i]]]), position_ids=torch.tensor([[S0 + i]]), use_cache=True, **kw)
        out.append(o.logits[0, -1])
    return torch.stack(out)


IDS = torch.randint(0, 96, (300,), generator=torch.Generator().manual_seed(1)).tolist()


def test_dense_settings_match_sdpa_and_disable_restores():
    model = tiny_llama()
    ref = run_decode(model, IDS, 3)
    enable_quest(model, QuestAttention(budget=None))
    assert model.config._attn_implementation == "questkern"
    assert torch.equal(run_decode(model, IDS, 3), ref)
    enable_quest(model, QuestAttention(budget=4096, page_size=16, dense_layers=0))  # budget covers everything
    torch.testing.assert_close(run_decode(model, IDS, 3), ref, rtol=1e-4, atol=1e-4)
    disable_quest(model)
    assert torch.equal(run_decode(model, IDS, 3), ref)


def test_sparse_step_is_quest_on_layers_past_dense_layers():
    """Each sparse layer's output equals select_pages_ref + paged_attention_ref on the
    query and cached keys the hook was given; the first dense_layers layers see no selection."""
    model = tiny_llama()
    dense = run_decode(model, IDS, 2)
    seen, checked = [], []
    settings = QuestAttention(
        budget=48, page_size=16, dense_layers=1, on_select=lambda l, s: seen.append((l, s.clone()))
    )
    enable_quest(model, settings)

    def check(module, query, key, value, attention_mask, **kw):
        out, _ = questkern_attention(module, query, key, value, attention_mask, **kw)
        if query.shape[2] == 1 and module.layer_idx >= 1:
            S = key.shape[2]
            n = -(-S // 16)
            kmin, kmax = page_minmax(key[0], 16)
            table = torch.arange(n, dtype=torch.int32)[None]
            lens = torch.tensor([S], dtype=torch.int32)
            q = query[:, :, 0].float()
            sel = select_pages_ref(q, kmin, kmax, table, lens, 16, 48)
            kp = torch.nn.functional.pad(key[0], (0, 0, 0, n * 16 - S)).view(2, n, 16, 32).transpose(0, 1)
            vp = torch.nn.functional.pad(value[0], (0, 0, 0, n * 16 - S)).view(2, n, 16, 32).transpose(0, 1)
            want = paged_attention_ref(q, kp, vp, table, lens, sel, kw.get("scaling"))
            torch.testing.assert_close(out[0, 0].float(), want[0], rtol=1e-5, atol=1e-5)
            assert sel.shape[-1] == 3 and (sel >= 0).all()  # 48 tokens = 3 pages of ~19
            checked.append(module.layer_idx)
        return out, None

    from transformers import AttentionInterface

    AttentionInterface.register("questkern", check)
    try:
        sparse = run_decode(model, IDS, 2)
    finally:
        AttentionInterface.register("questkern", questkern_attention)
    assert sorted(set(checked)) == [1, 2] and len(checked) == 4
    assert sorted({l for l, _ in seen}) == [1, 2]
    assert not torch.allclose(sparse, dense, atol=1e-4)  # 3 of 19 pages: the logits moved


def test_adaptive_and_narrow_metadata_run():
    model = tiny_llama()
    sizes = []
    ad = AdaptiveBudget(0.6, 16, 160)
    enable_quest(
        model,
        QuestAttention(
            page_size=16,
            dense_layers=1,
            adaptive=ad,
            meta="fp8_e5m2",
            on_select=lambda l, s: sizes.append(int((s >= 0).sum(-1).max())),
        ),
    )
    logits = run_decode(model, IDS, 2)
    assert torch.isfinite(logits).all()
    assert sizes and all(1 <= k <= 10 for k in sizes)


@pytest.mark.parametrize("adaptive", [None, AdaptiveBudget(0.5, 16, 160)])
def test_kernels_backend_matches_reference_backend(adaptive):
    """The Triton path (interpreter here) picks the same pages and gives the same output
    as the float32 reference path, on a bf16 model; fixed and adaptive budgets."""
    model = tiny_llama(layers=2, dtype=torch.bfloat16)
    outs = {}
    for backend in ("reference", "kernels"):
        picked = []
        enable_quest(
            model,
            QuestAttention(
                budget=64,
                page_size=16,
                dense_layers=1,
                backend=backend,
                adaptive=adaptive,
                on_select=lambda l, s: picked.append(s.cpu().clone()),  # noqa: B023
            ),
        )
        outs[backend] = (run_decode(model, IDS[:200], 2).float(), picked)
    (ref, p_ref), (ker, p_ker) = outs["reference"], outs["kernels"]
    assert len(p_ref) == len(p_ker) == 2
    for a, b in zip(p_ref, p_ker):
        assert torch.equal(a, b)
    if adaptive is not None:  # rows stop at different sizes, -1 holes included
        counts = torch.cat([(s >= 0).sum(-1).flatten() for s in p_ref])
        assert counts.min() < counts.max() or counts.max() < p_ref[0].shape[-1]
    torch.testing.assert_close(ker, ref, rtol=0.05, atol=0.05)


def test_settings_validation_and_padded_decode():
    with pytest.raises(ValueError, match="page_size"):
        QuestAttention(page_size=12)
    with pytest.raises(ValueError, match="backend"):
        QuestAttention(backend="cuda")
    with pytest.raises(ValueError, match="meta"):
        QuestAttention(backend="kernels", meta="fp16")
    with pytest.raises(TypeError, match="AdaptiveBudget"):
        QuestAttention(adaptive=0.9)
    model = tiny_llama(layers=1)
    mod = next(m for m in model.modules() if hasattr(m, "layer_idx"))
    mod.questkern = QuestAttention(budget=32, dense_layers=0)
    q = torch.randn(2, 4, 1, 32)
    k = torch.randn(2, 2, 40, 32)
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    mask[1, :, :, :5] = False
    with pytest.raises(NotImplementedError, match="unpadded"):
        questkern_attention(mod, q, k, k, mask)
    additive = torch.zeros(2, 1, 1, 40).masked_fill(~mask, torch.finfo(torch.float32).min)
    with pytest.raises(NotImplementedError, match="unpadded"):
        questkern_attention(mod, q, k, k, additive)
    out, _ = questkern_attention(mod, q, k, k, torch.zeros(2, 1, 1, 40))  # a mask that hides nothing is fine
    assert out.shape == (2, 1, 4, 32)

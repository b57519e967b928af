"""QuestCache and the CUDA-graph loop on a GPU (deselected on CPU with -m 'not gpu')."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore:.*past_key_values.*deprecated")]


def small_llama(layers=4):
    from questkern.bench.models import ModelShape
    from questkern.integrations.hf_bench import random_llama

    torch.manual_seed(0)
    shape = ModelShape("small", layers, 1024, 8, 2, 128, 2816, 4096)  # llama3-8b's group of 4 and d 128
    return random_llama(shape, torch.bfloat16, "cuda", 32768)


def _prompts(lens, vocab=4096, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lens]


def test_graph_replays_give_the_eager_tokens():
    """The captured step gives the tokens of the same step run eagerly, for QuestCache with
    the kernels (default on CUDA; ragged batch, sparse at 256 tokens) and for SDPA on
    StaticCache; QuestCache's eager generate() agrees too."""
    from questkern.integrations.hf import QuestAttention, disable_quest, enable_quest
    from questkern.integrations.hf_generate import generate

    model = small_llama()
    P = _prompts([300, 1500, 64])
    r_sdpa = {m: generate(model, P, 12, cache="sdpa", mode=m) for m in ("static", "graph")}
    assert torch.equal(r_sdpa["static"].tokens, r_sdpa["graph"].tokens)
    picked = []
    enable_quest(model, QuestAttention(budget=256, page_size=16, dense_layers=1))
    r = {m: generate(model, P, 12, cache="quest", mode=m) for m in ("eager", "static", "graph")}
    assert torch.equal(r["static"].tokens, r["graph"].tokens)
    assert torch.equal(r["eager"].tokens, r["static"].tokens)
    settings = QuestAttention(
        budget=256, page_size=16, dense_layers=1, on_select=lambda l, s: picked.append(int((s >= 0).sum(-1).max()))
    )
    enable_quest(model, settings)
    generate(model, P, 3, cache="quest", mode="eager")
    assert picked and max(picked) == 16  # 256 tokens = 16 pages: sparse on the long prompts
    disable_quest(model)


def test_generate_peak_memory_within_the_dynamic_cache_plus_metadata():
    """model.generate() with QuestCache peaks at most DynamicCache x (1 + 1/16 + 5%) above
    the weights (one copy of K/V, plus 1/16 for kmin/kmax)."""
    from questkern.integrations.hf_bench import Settings, memory_check

    model = small_llama()
    m = memory_check(model, _prompts([8192, 8192], seed=2), 16, Settings(budget=512), log=lambda *_: None)
    assert m["ok"], m
    assert m["quest_cache_gib"] > 0

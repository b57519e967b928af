"""Model-level benchmark (bench/model.py) on the CPU interpreter: the step runs for every
attention variant, Quest with a budget covering the context attends like dense, the
bytes and the summary follow their definitions, and a case too large is refused."""

import pytest
import torch

from questkern.bench.model import ModelCase, ModelStep, _Weights, case_memory, check_fits, paged_caches, summarize
from questkern.bench.models import PRESETS, parse_model


def _case(**kw):
    return ModelCase(
        PRESETS["tiny"],
        kw.pop("batch", 2),
        kw.pop("seq_len", 70),
        page_size=16,
        budget=kw.pop("budget", 32),
        dense_layers=kw.pop("dense_layers", 1),
        **kw,
    )


def test_quest_covering_the_context_attends_like_dense():
    case = _case(budget=4096)
    dev = torch.device("cpu")
    w = _Weights(case.shape, case.dtype, dev)
    caches = paged_caches(case, dev)
    steps = {a: ModelStep(case, a, w, dev, caches) for a in ("dense", "quest", "quest_classic")}
    s = case.shape
    g = torch.Generator().manual_seed(3)
    q = torch.randn(case.batch, s.q_heads, s.head_dim, generator=g).to(case.dtype)
    k = torch.randn(case.batch, s.kv_heads, s.head_dim, generator=g).to(case.dtype)
    outs = {a: m._attend(1, q, k, k).float().clone() for a, m in steps.items()}
    assert int(caches[1].seq_lens[0]) == case.seq_len  # the step appended the T-th token
    torch.testing.assert_close(outs["quest"], outs["dense"], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs["quest_classic"], outs["dense"], atol=2e-2, rtol=2e-2)
    for a in ("sdpa", "none"):
        tok = ModelStep(case, a, w, dev).step()
        assert tok.shape == (case.batch,) and int(tok.min()) >= 0 and int(tok.max()) < s.vocab


def test_attention_bytes_and_summary():
    case = _case(seq_len=100, budget=32)
    dev = torch.device("cpu")
    w = _Weights(case.shape, case.dtype, dev)
    s = case.shape
    kv_layer = 2 * 2 * 100 * s.kv_heads * s.head_dim * 2
    assert ModelStep(case, "sdpa", w, dev).attention_bytes() == s.layers * kv_layer
    assert ModelStep(case, "none", w, dev).attention_bytes() == 0
    quest = ModelStep(case, "quest", w, dev, paged_caches(case, dev)).attention_bytes()
    meta = 2 * 2 * 7 * s.kv_heads * s.head_dim * 2  # 7 pages of 16 hold 100 tokens
    sel = 2 * 2 * 2 * 16 * s.kv_heads * s.head_dim * 2  # budget 32 = 2 pages
    assert quest == kv_layer + meta + sel
    times = {"sdpa": (100.0, 1000), "none": (50.0, 0), "quest": (80.0, 500)}
    rows = {r["attention"]: r for r in summarize(case, times, copy_gbps=1.0)}  # 1 GB/s: 1000 B = 1 us
    q = rows["quest"]
    assert q["speedup_vs_sdpa"] == pytest.approx(1.25) and q["ceiling_speedup"] == pytest.approx(2.0)
    assert q["bound_us"] == pytest.approx(50.5) and q["bound_speedup"] == pytest.approx(100 / 50.5)
    assert q["gain_captured"] == pytest.approx((1 - 1 / 1.25) / (1 - 50.5 / 100))
    assert q["tokens_per_s"] == pytest.approx(2 / 80e-6)
    assert rows["none"]["gain_captured"] == pytest.approx(1.0)  # the ceiling is its own bound


def test_memory_and_refusal(monkeypatch):
    case = ModelCase(PRESETS["llama3-8b"], 8, 131072)
    need = case_memory(case)
    assert need["kv"] == 2 * 2 * 32 * 8 * 131072 * 8 * 128
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 << 30, 140 << 30))
    with pytest.raises(
        MemoryError, match=r"llama3-8b at batch 8, 131072 tokens needs .* GiB \(weights .* K/V 128.0 GiB"
    ):
        check_fits(case, torch.device("cuda"))


@pytest.mark.parametrize(
    "text,match",
    [
        ("llama-9b", "must be one of"),
        ("custom:layers=2", "missing"),
        ("custom:layers=x,hidden=1,heads=2/1,head_dim=64,mlp=1,vocab=1", "layers must be an integer"),
        ("custom:layers=2,hidden=8,heads=3/2,head_dim=64,mlp=8,vocab=8", "multiple of"),
        ("custom:foo=1", "unknown key"),
    ],
)
def test_bad_model_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_model(text)


def test_reuse_attentions_reuse_between_replays():
    """quest_every<N> / quest_drift<t>: the layers' QuestDecode get the options; replays at the same
    position (the bench's timing loop) select once every N steps; bad names are refused."""
    from questkern.bench.model import check_attention, quest_options

    assert quest_options("quest_every4") == {"reselect_every": 4}
    assert quest_options("quest_drift0.9") == {"drift_threshold": 0.9, "reselect_every": None}
    assert quest_options("dense") is None
    for bad in ("quest_everyx", "quest_drift", "flash"):
        with pytest.raises(ValueError, match="attention must be one of"):
            check_attention(bad)
    case = _case()
    dev = torch.device("cpu")
    m = ModelStep(case, "quest_every3", _Weights(case.shape, case.dtype, dev), dev, paged_caches(case, dev))
    dec = m.decoders[1]
    assert dec.reselect_every == 3 and m.decoders[0].dense
    gates = []
    for _ in range(4):
        m.step()
        gates.append(int(dec._reuse.gate.sum()))
    n = case.batch * case.shape.kv_heads
    assert gates == [n, 0, 0, n]

"""The synthetic attention-recall objective."""

from __future__ import annotations

import math

import torch

from questkern.tuning.quality import TRACE, attention_recall, synthetic_recall


def test_recall_on_a_hand_made_case():
    # one sequence, one head, 32 tokens = 2 pages of 16; a budget of one page keeps only
    # the last page (always attended), so recall = the softmax mass of tokens 16..31
    q = torch.zeros(1, 1, 4)
    q[0, 0, 0] = 1.0
    k = torch.zeros(1, 32, 1, 4)
    k[0, :, 0, 0] = torch.arange(32.0) / 8
    s = k[0, :, 0, 0] / 2  # q.k / sqrt(4)
    want = float(torch.softmax(s, 0)[16:].sum())
    assert math.isclose(attention_recall(q, k, 16, 16, "shared"), want, rel_tol=1e-6)
    assert math.isclose(attention_recall(q, k, 16, 32, "shared"), 1.0, rel_tol=1e-6)


def test_synthetic_recall_behaves_like_recall():
    T = TRACE["seq_len"]
    assert synthetic_recall(16, T, "shared") == 1.0  # the whole context
    for page in (16, 64):
        vals = [synthetic_recall(page, b, "shared") for b in (256, 1024, 4096)]
        assert all(0.0 < v < 1.0 for v in vals)
        assert vals == sorted(vals)  # more budget, more recall
    # at a small budget, bigger pages waste it on unimportant neighbours
    assert synthetic_recall(64, 256, "shared") < synthetic_recall(16, 256, "shared")
    assert synthetic_recall(64, 256, "per_head") >= synthetic_recall(64, 256, "shared")


def test_default_quality_uses_cached_traces_when_present(tmp_path, monkeypatch):
    from questkern.quality.traces import save_trace, synthetic_traces
    from questkern.tuning.quality import default_quality_fn, synthetic_recall

    monkeypatch.setenv("QUESTKERN_TRACE_DIR", str(tmp_path))
    assert default_quality_fn() is synthetic_recall
    save_trace(synthetic_traces(n=1, seq_len=256, layers=3, steps=1)[0], tmp_path / "t.safetensors")
    fn = default_quality_fn()
    assert fn is not synthetic_recall and fn.__qualname__ == "questkern.quality.objective"
    assert 0.0 <= fn(16, 64, "shared") <= 1.0

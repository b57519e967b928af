"""The hook's rerank option (issue 16): the reference re-rank selection, validated settings."""

from __future__ import annotations

import pytest
import torch

from questkern.integrations.hf import QuestAttention, enable_quest
from questkern.ops.select.adaptive_naive import AdaptiveBudget

from test_hf import IDS, run_decode, tiny_llama  # noqa: E402  (same folder: pytest puts it on sys.path)


def test_rerank_changes_the_selection_and_covers_like_dense():
    model = tiny_llama()
    ref = run_decode(model, IDS, 2)
    seen = {0: [], 2: []}
    for rr in (0, 2):
        enable_quest(
            model,
            QuestAttention(
                budget=48,
                page_size=16,
                dense_layers=1,
                rerank=rr,
                on_select=lambda l, s, rr=rr: seen[rr].append(s.clone()),
            ),
        )
        out = run_decode(model, IDS, 2)
        assert torch.isfinite(out).all()
    assert len(seen[0]) == len(seen[2]) == 4 and all(s.shape == (1, 2, 3) for s in seen[2])
    assert any(not torch.equal(a, b) for a, b in zip(seen[0], seen[2]))
    enable_quest(model, QuestAttention(budget=4096, page_size=16, dense_layers=0, rerank=4))
    torch.testing.assert_close(run_decode(model, IDS, 2), ref, rtol=1e-4, atol=1e-4)


def test_rerank_settings_validation():
    with pytest.raises(ValueError, match="rerank"):
        QuestAttention(rerank=-1)
    with pytest.raises(ValueError, match="rerank"):
        QuestAttention(rerank=2, backend="kernels")
    with pytest.raises(ValueError, match="rerank"):
        QuestAttention(rerank=2, adaptive=AdaptiveBudget())

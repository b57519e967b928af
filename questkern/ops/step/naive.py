"""Float32 reference of the fused Quest step: the selection of ``questkern.ops.select.naive``
(same rules, ties toward the lower page index) followed by attention over the selected
pages (``questkern.ops.decode.naive``)."""

from __future__ import annotations

import torch

from questkern.ops.decode.naive import paged_attention_ref
from questkern.ops.select.naive import select_pages_ref


def quest_step_ref(
    q: torch.Tensor,  # [B, Hq, D]
    kmin: torch.Tensor,  # [P, Hkv, D]
    kmax: torch.Tensor,  # [P, Hkv, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    v_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages]
    seq_lens: torch.Tensor,  # [B]
    budget: int,
    gqa_mode: str = "shared",
    aggregate: str = "sum",
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Hq, D] float32, selected [B, Hsel, K] int32 logical pages, -1 padded)."""
    page_size = k_cache.shape[2]
    selected = select_pages_ref(q, kmin, kmax, page_table, seq_lens, page_size, budget, gqa_mode, aggregate)
    out = paged_attention_ref(q, k_cache, v_cache, page_table, seq_lens, selected, sm_scale)
    return out, selected

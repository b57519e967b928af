"""Float32 reference for paged decode attention over a set of pages."""

from __future__ import annotations

import math

import torch


def paged_attention_ref(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    v_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages]
    seq_lens: torch.Tensor,  # [B]
    selected: torch.Tensor | None = None,  # [B, Hsel, K] logical pages (-1 pad); None = all pages
    sm_scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention of each query head over the tokens of its pages. Returns [B, Hq, D] float32.

    ``selected`` rows are per KV head (Hsel == Hkv, GQA "shared") or per query head
    (Hsel == Hq, "per_head"). The partial last page is masked by ``seq_lens``.
    """
    B, Hq, D = q.shape
    _, Hkv, PAGE, _ = k_cache.shape
    G = Hq // Hkv
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(D)
    out = torch.zeros(B, Hq, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        n = int(seq_lens[b])
        n_pages = -(-n // PAGE)
        for h in range(Hq):
            hk = h // G
            if selected is None:
                pages = torch.arange(n_pages)
            else:
                row = selected[b, h if selected.shape[1] == Hq else hk]
                pages = row[row >= 0].long().cpu()
            phys = page_table[b, pages].long()
            k = k_cache[phys, hk].float().reshape(-1, D)  # [len(pages) * PAGE, D]
            v = v_cache[phys, hk].float().reshape(-1, D)
            pos = (pages[:, None] * PAGE + torch.arange(PAGE)[None]).reshape(-1).to(q.device)
            s = (k @ q[b, h].float()) * scale
            s = s.masked_fill(pos >= n, float("-inf"))
            out[b, h] = torch.softmax(s, dim=0) @ v
    return out

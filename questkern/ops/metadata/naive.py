"""Float32 references for page metadata (per-channel key min/max of each page)."""

from __future__ import annotations

import torch


def metadata_build_ref(
    k_cache: torch.Tensor,  # [P, Hkv, PAGE, D]
    page_table: torch.Tensor,  # [B, max_pages] int32
    seq_lens: torch.Tensor,  # [B] int32
    kmin: torch.Tensor | None = None,  # [P, Hkv, D] updated in place when given
    kmax: torch.Tensor | None = None,
):
    """kmin/kmax over the valid tokens of every page that a sequence uses.

    Pages no sequence uses are left as they are (or 0 in fresh outputs).
    """
    P, H, PAGE, D = k_cache.shape
    if kmin is None:
        kmin = torch.zeros(P, H, D, dtype=torch.float32, device=k_cache.device)
        kmax = torch.zeros(P, H, D, dtype=torch.float32, device=k_cache.device)
    for b in range(page_table.shape[0]):
        n = int(seq_lens[b])
        for p in range(-(-n // PAGE)):
            phys = int(page_table[b, p])
            valid = min(PAGE, n - p * PAGE)
            k = k_cache[phys, :, :valid, :].float()  # [H, valid, D]
            kmin[phys] = k.amin(dim=1).to(kmin.dtype)
            kmax[phys] = k.amax(dim=1).to(kmax.dtype)
    return kmin, kmax

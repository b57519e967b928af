"""Quest page metadata of one contiguous sequence (quality study, transformers hook): page min/max of keys, and safe rounding.

``page_minmax`` is the vectorized equivalent of
:func:`questkern.ops.metadata.naive.metadata_build_ref` for one contiguous sequence
(a test checks the two agree). ``round_meta`` stores kmin/kmax in a narrower float
type **without ever tightening the bound**: kmin is rounded toward -inf and kmax
toward +inf (DESIGN.md §1), so every page score stays an upper bound of q.k.
"""

from __future__ import annotations

import torch

from questkern._dtypes import META_DTYPES
from questkern.ops.metadata.naive import round_safe


def page_minmax(keys: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys [H, S, D] of one sequence -> (kmin, kmax) [n_pages, H, D] float32 over valid tokens."""
    H, S, D = keys.shape
    n = -(-S // page_size)
    pad = n * page_size - S
    k = keys.float()
    lo = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("inf")).view(H, n, page_size, D).amin(2)
    hi = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("-inf")).view(H, n, page_size, D).amax(2)
    return lo.transpose(0, 1).contiguous(), hi.transpose(0, 1).contiguous()  # [n, H, D]


def round_meta(kmin: torch.Tensor, kmax: torch.Tensor, meta: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Store kmin/kmax as ``meta`` (a key of META_DTYPES) with safe rounding; float32 out."""
    if meta not in META_DTYPES:
        raise ValueError(f"meta must be one of {list(META_DTYPES)}, got {meta!r}")
    dt = META_DTYPES[meta]
    return round_safe(kmin, dt, "down"), round_safe(kmax, dt, "up")

"""Choose a kernel config for a call: tuning table entry, or the documented heuristic.

This is the single entry point the public API uses; it never tunes implicitly.
"""

from __future__ import annotations

import torch

from questkern import config as C


def resolve_config(
    op: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    group: int,
    page_size: int,
    seq_len: int,
    batch: int,
):
    """Return ``(config, source)`` for ``op`` in {metadata, select, sparse_decode, dense_decode}.

    ``source`` says where the config came from (a table entry, or ``"heuristic"``).
    """
    if op == "metadata":
        return C.default_metadata_config(head_dim), "heuristic"
    if op == "select":
        return C.default_select_config(-(-seq_len // page_size), head_dim), "heuristic"
    if op in ("sparse_decode", "dense_decode"):
        return C.default_decode_config(page_size, head_dim), "heuristic"
    raise ValueError(f"op must be one of metadata, select, sparse_decode, dense_decode; got {op!r}")

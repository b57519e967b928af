"""Helpers shared by the tuning tests (imported as a plain module: pytest puts this
directory on sys.path)."""

from __future__ import annotations

from questkern.configs import paths
from questkern.configs.keys import EntryKey
from questkern.configs.table import atomic_write_json, make_entry, new_table

GPU = "nvidia-h100-80gb-hbm3"
GPU_NAME = "NVIDIA H100 80GB HBM3"


def entry(op="select", *, seq=32768, batch=1, page=16, group=4, head_dim=128, dtype="bfloat16", budget=2048,
          gqa_mode="shared", config=None, latency=10.0, default=12.0):
    """A valid table entry for tests."""
    key = EntryKey.for_call(op, dtype=dtype, head_dim=head_dim, group=group, page_size=page, seq_len=seq,
                            batch=batch, budget=budget, gqa_mode=gqa_mode)
    if config is None:
        config = ({"chunk_pages": 128, "block_d": 32, "num_warps": 4, "num_stages": 1, "merge_warps": 2}
                  if op == "select" else {"num_warps": 2} if op == "metadata" else
                  {"pages_per_block": 2, "num_splits": 8, "num_warps": 4, "num_stages": 3, "combine_warps": 2})
    return make_entry(key, config, latency, default, trials=7, seq_len=seq, batch=batch)


def write_doc(directory, entries, *, gpu_key=GPU, triton=None):
    doc = new_table(gpu_key, GPU_NAME)
    doc["entries"] = list(entries)
    if triton is not None:
        doc["versions"]["triton"] = triton
    path = paths.table_path(directory, gpu_key)
    atomic_write_json(path, doc)
    return path

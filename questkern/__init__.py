"""questkern: Quest sparse decoding kernels (Triton) for paged KV caches, tuned per GPU.

Public API:
    PagedKVCache      paged K/V storage with Quest page metadata kept in step
    QuestDecode       plan() once, run(q) per decode step (sparse, adaptive, or dense with budget=None)
    AdaptiveBudget    per-query budget: smallest page set whose estimated score mass passes a threshold
    quest_decode      one-shot plan + run
    dense_decode      dense paged decode baseline
Kernels and their float32 references live in ``questkern.ops.<op>``.
"""

from questkern._details import select_backend as _select_backend

_select_backend()  # before any kernel module is imported

from questkern.api import Plan, QuestDecode, dense_decode, quest_decode
from questkern.cache import PagedKVCache
from questkern.config import DecodeConfig, MetadataConfig, SelectConfig
from questkern._version import __version__
from questkern.ops.select.adaptive_naive import AdaptiveBudget

__all__ = [
    "PagedKVCache",
    "QuestDecode",
    "Plan",
    "quest_decode",
    "dense_decode",
    "AdaptiveBudget",
    "SelectConfig",
    "DecodeConfig",
    "MetadataConfig",
    "__version__",
]

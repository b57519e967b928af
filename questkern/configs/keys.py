"""Table keys: which call shapes share a tuned config, and how far apart two shapes are.

A table entry is keyed by

* ``op``, ``dtype``, ``head_dim``, ``group`` (GQA group, Hq / Hkv), ``page_size``:
  must match exactly (they change the compiled kernel or what it computes);
* ``seq_bucket`` = ceil(log2(seq_len)) and ``batch_bucket`` = ceil(log2(batch)):
  bucket ``b`` covers (2^(b-1), 2^b], so 32768 -> 15 and 32769 -> 16;
* ``budget`` (tokens; ``select`` and ``sparse_decode`` only, else ``None``) and
  ``gqa_mode`` (same ops): when the caller passes them, ``gqa_mode`` must match and the
  budget is compared in log2; when it does not, every entry qualifies (ties prefer
  ``shared`` and a budget near :data:`REFERENCE_BUDGET`).

The distance between a call and an entry is the L1 distance in log2 buckets:
``|Δseq_bucket| + |Δbatch_bucket| + |Δlog2 budget|`` (the budget term only when the
caller gave one); 0 is an exact match.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from questkern._dtypes import dtype_name

OPS = ("select", "sparse_decode", "dense_decode", "metadata", "quest_step")
BUDGET_OPS = ("select", "sparse_decode", "quest_step")  # ops whose kernel depends on the token budget and GQA mode
REFERENCE_BUDGET = 2048  # tie-break for callers that pass no budget: the paper's usual budget


def log2_bucket(n: int, name: str = "value") -> int:
    """ceil(log2(n)) for n >= 1: bucket b covers (2^(b-1), 2^b]."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return (n - 1).bit_length()


def check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    return op


@dataclass(frozen=True)
class EntryKey:
    """The identity of a table entry (two entries with equal keys are merged)."""

    op: str
    dtype: str
    head_dim: int
    group: int
    page_size: int
    seq_bucket: int
    batch_bucket: int
    budget: int | None = None
    gqa_mode: str | None = None

    @classmethod
    def for_call(
        cls,
        op: str,
        *,
        dtype,
        head_dim: int,
        group: int,
        page_size: int,
        seq_len: int,
        batch: int,
        budget: int | None = None,
        gqa_mode: str | None = None,
    ) -> "EntryKey":
        """The key of a call (or of a tuned bucket). ``budget``/``gqa_mode`` are dropped for
        ops that do not depend on them."""
        check_op(op)
        uses_budget = op in BUDGET_OPS
        return cls(
            op,
            dtype_name(dtype),
            int(head_dim),
            1 if op == "metadata" else int(group),
            int(page_size),
            log2_bucket(seq_len, "seq_len"),
            log2_bucket(batch, "batch"),
            int(budget) if (uses_budget and budget is not None) else None,
            gqa_mode if uses_budget else None,
        )

    @property
    def exact_fields(self) -> tuple:
        """Fields that must be equal for an entry to be a candidate at all."""
        return (self.op, self.dtype, self.head_dim, self.group, self.page_size)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        s = (
            f"{self.op} {self.dtype} d{self.head_dim} group {self.group} page {self.page_size} "
            f"seq 2^{self.seq_bucket} batch 2^{self.batch_bucket}"
        )
        if self.budget is not None:
            s += f" budget {self.budget}"
        if self.gqa_mode is not None:
            s += f" {self.gqa_mode}"
        return s


def distance(call: EntryKey, entry: EntryKey) -> float | None:
    """L1 distance in log2 buckets, or None when ``entry`` cannot serve ``call``."""
    if call.exact_fields != entry.exact_fields:
        return None
    if call.gqa_mode is not None and entry.gqa_mode is not None and call.gqa_mode != entry.gqa_mode:
        return None
    d: float = abs(call.seq_bucket - entry.seq_bucket) + abs(call.batch_bucket - entry.batch_bucket)
    if call.budget is not None and entry.budget is not None:
        d += abs(math.log2(call.budget) - math.log2(entry.budget))
    return d


def preference(call: EntryKey, entry: EntryKey) -> tuple:
    """Sort key among candidates: nearest first, then deterministic tie-breaks
    (closer seq bucket, longer seq bucket, larger batch bucket, shared GQA mode,
    budget nearest the caller's or the reference budget, larger budget)."""
    d = distance(call, entry)
    ref = call.budget if call.budget is not None else REFERENCE_BUDGET
    b = abs(math.log2(ref) - math.log2(entry.budget)) if entry.budget else 0.0
    return (
        d,
        abs(call.seq_bucket - entry.seq_bucket),
        -entry.seq_bucket,
        -entry.batch_bucket,
        entry.gqa_mode not in (None, "shared"),
        b,
        -(entry.budget or 0),
    )

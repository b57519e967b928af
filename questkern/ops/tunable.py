"""What the tuner needs to know about an op, kept with the op (in the spirit of FlashInfer's
per-op ``TunableRunner``): each ``ops/<op>/tunable.py`` describes the parameters it searches,
the combinations that cannot work, the heuristic default as a point, and how a point becomes
the op's config. The tuner (:mod:`questkern.tuning.space`) is generic over these descriptions
and holds no op names.

A description sees the tuning bucket through a few attributes and methods only (``head_dim``,
``batch``, ``page_sizes``, ``budgets``, ``max_pages(page_size)``, ``k_pages(page_size, budget)``,
``slots(page_size, budget)``, ``head_programs()``, ``gqa_mode``, ``aggregate``): :class:`BucketShape`;
and the tuner's inputs of one shape through :class:`Inputs` (a filled cache, a query, references).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

REG_BUDGET = 256  # operand elements per thread above which a tile is considered to spill


@dataclass(frozen=True)
class Param:
    """One searched parameter; ``active(params so far)`` makes it conditional."""

    name: str
    choices: tuple
    active: Callable[[dict], bool] | None = None


class BucketShape(Protocol):
    """The part of a tuning bucket (:class:`questkern.tuning.space.Bucket`) a description reads."""

    @property
    def head_dim(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def page_sizes(self) -> tuple[int, ...]: ...
    @property
    def budgets(self) -> tuple[int, ...]: ...  # empty for an op without a budget
    @property
    def gqa_mode(self) -> str: ...
    @property
    def aggregate(self) -> str: ...

    def max_pages(self, page_size: int) -> int: ...
    def k_pages(self, page_size: int, budget: int) -> int: ...
    def slots(self, page_size: int, budget: int | None) -> int: ...
    def head_programs(self) -> int: ...


class Inputs(Protocol):
    """A bucket's inputs at one page size (:class:`questkern.tuning.runner.Workload`): ``cache``
    (a filled :class:`~questkern.cache.PagedKVCache`), ``q`` [B, Hq, D], ``device``, and float32
    references computed once."""

    cache: Any
    q: Any
    device: Any

    def metadata_ref(self) -> tuple: ...
    def selection_ref(self, budget: int, gqa_mode: str, aggregate: str) -> Any: ...
    def selection_phys_ref(self, budget: int, gqa_mode: str, aggregate: str) -> Any: ...
    def attention_ref(self, selected: Any, key: Any) -> Any: ...


Launch = Callable[[], object]
Check = Callable[[], None]


class Tunable(Protocol):
    """The tunable description of one op."""

    def params(self, bucket: BucketShape, num_sms: int) -> list[Param]:
        """The searched parameters, in order, with static choice lists for this bucket."""
        ...

    def default(self, bucket: BucketShape, page_size: int, budget: int | None, num_sms: int) -> dict:
        """The heuristic default config as a point (its parameters only)."""
        ...

    def violation(
        self, bucket: BucketShape, params: dict, page_size: int, budget: int | None, num_sms: int
    ) -> str | None:
        """Why ``params`` cannot work or duplicates another point (pruned before compiling) on a
        device with ``num_sms`` SMs, or None."""
        ...

    def config(self, params: dict) -> Any:
        """The op's config for a point (raises ValueError for an invalid config)."""
        ...

    def build(self, bucket: BucketShape, inputs: Inputs, config: Any, budget: int | None) -> tuple[Launch, Check]:
        """(launch, check): ``launch`` runs the kernel with ``config`` into preallocated buffers,
        ``check`` raises AssertionError when its last result differs from the reference."""
        ...


def page_budget(bucket: BucketShape, params: dict) -> tuple[int, int | None]:
    """The page size and budget of a point: searched ones from ``params``, else the bucket's only one."""
    ps = params.get("page_size", bucket.page_sizes[0])
    bud = params.get("budget", bucket.budgets[0]) if bucket.budgets else None
    return ps, bud


def pow2_range(lo: int, hi: int) -> tuple[int, ...]:
    out, v = [], lo
    while v <= hi:
        out.append(v)
        v *= 2
    return tuple(out)


# op name -> (module under questkern.ops, its description); the op names are those of the tables
_TUNABLES = {
    "metadata": ("metadata", "TUNABLE"),
    "select": ("select", "TUNABLE"),
    "sparse_decode": ("decode", "SPARSE"),
    "dense_decode": ("decode", "DENSE"),
    "quest_step": ("step", "TUNABLE"),
}


def tunable(op: str) -> Tunable:
    """The tunable description of ``op`` (imported on first use: select's reads the launcher)."""
    if op not in _TUNABLES:
        raise ValueError(f"op must be one of {', '.join(_TUNABLES)}; got {op!r}")
    folder, name = _TUNABLES[op]
    return getattr(importlib.import_module(f"questkern.ops.{folder}.tunable"), name)

"""The runner: build a bucket's inputs once, then per candidate launch, check, time.

Every candidate is checked against the float32 references of ``questkern.ops`` before
it is timed, on inputs made for exact comparison: keys and queries are small integers
(``-2..2``), so page metadata and Quest scores are exact in any precision and the
selection must match the reference bit for bit (ties included); values are Gaussian,
and attention outputs are compared with ``torch.testing.assert_close`` at a tolerance
suited to the dtype. A mismatch, a compile error, an out-of-memory or any exception is
a failed candidate with its reason, never a fast one.

Timing is a callable ``timer(fn, info) -> microseconds`` so tests can inject one. On a
GPU the default captures ``fn`` in a CUDA graph and takes the median of
``triton.testing.do_bench`` on the replay (it clears L2 before every repetition); on
the CPU interpreter it is a wall-clock median that only shows the code ran.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from questkern._timing import graph_replay
from questkern.cache import PagedKVCache, prefill_chunked
from questkern._dtypes import torch_dtype
from questkern.ops.decode import paged_attention_ref
from questkern.ops.select import select_pages_ref
from questkern.ops.tunable import tunable
from questkern.tuning.space import Bucket, Candidate

FATAL_CUDA = ("illegal memory access", "unspecified launch failure", "device-side assert", "misaligned address",
              "an illegal instruction")


class FatalDeviceError(RuntimeError):
    """The CUDA context is broken (e.g. an illegal memory access): no later trial can run."""


@dataclass
class TrialInfo:
    """What a timer is told about the candidate it times (injected test timers use it)."""

    op: str
    config: Any
    params: dict
    page_size: int
    budget: int | None
    bucket: Bucket
    trial: int | None = None


Timer = Callable[[Callable[[], object], TrialInfo], float]


@dataclass
class Outcome:
    latency_us: float | None
    fail_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.fail_reason is None


# ----------------------------------------------------------------------------- timers


def cuda_graph_timer(rep_ms: int = 100, warmup_ms: int = 25, graph: bool = True) -> Timer:
    """Median microseconds of ``fn`` by ``do_bench`` on a CUDA-graph replay (L2 flushed per rep).

    Falls back to timing ``fn`` eagerly when it cannot be captured.
    """
    import triton.testing

    def timer(fn, info: TrialInfo) -> float:
        fn()
        torch.cuda.synchronize()
        target = fn
        if graph:
            try:
                target = graph_replay(fn)
            except Exception:  # not capturable: time it eagerly rather than fail the trial
                torch.cuda.synchronize()
                target = fn
        ms = triton.testing.do_bench(target, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        return float(ms) * 1e3

    return timer


def wall_timer(reps: int = 3) -> Timer:
    """Median wall-clock microseconds over ``reps`` calls (CPU interpreter: meaningless speeds)."""

    def timer(fn, info: TrialInfo) -> float:
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(ts)

    return timer


def default_timer(device: torch.device, rep_ms: int = 100, warmup_ms: int = 25) -> Timer:
    return cuda_graph_timer(rep_ms, warmup_ms) if device.type == "cuda" else wall_timer()


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Shape:
    """What a workload depends on (ops of the same shape share it)."""

    dtype: str
    head_dim: int
    num_q_heads: int
    num_kv_heads: int
    seq_len: int
    batch: int
    page_size: int

    @classmethod
    def of(cls, bucket: Bucket, page_size: int) -> "Shape":
        return cls(bucket.dtype, bucket.head_dim, bucket.num_q_heads, bucket.num_kv_heads, bucket.seq_len,
                   bucket.batch, page_size)


class Workload:
    """A filled paged KV cache (shuffled pages), a query, and lazily computed references."""

    def __init__(self, shape: Shape, device: torch.device, seed: int = 0):
        self.shape, self.device = shape, device
        s = shape
        dtype = torch_dtype(s.dtype)
        gen = torch.Generator(device=device).manual_seed(seed)
        with warnings.catch_warnings():  # the cache's own metadata lookup may warn "no table yet"
            warnings.simplefilter("ignore")
            self.cache = PagedKVCache(s.batch, s.seq_len, s.num_kv_heads, s.head_dim, page_size=s.page_size,
                                      dtype=dtype, device=device, shuffle=True, seed=seed)
            prefill_chunked(self.cache, [s.seq_len] * s.batch, lambda kv_shape: (
                torch.randint(-2, 3, kv_shape, generator=gen, device=device).to(dtype),
                torch.randn(kv_shape, generator=gen, device=device).to(dtype)))
        self.q = torch.randint(-2, 3, (s.batch, s.num_q_heads, s.head_dim), generator=gen,
                               device=device).to(dtype)  # [B, Hq, D]
        self._refs: dict = {}

    def _memo(self, key, make):
        if key not in self._refs:
            self._refs[key] = make()
        return self._refs[key]

    def metadata_ref(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 per-page min/max of the valid keys, [P, Hkv, D] each (vectorized
        equivalent of ``metadata_build_ref``; pages no sequence uses stay 0)."""
        def make():
            c = self.cache
            P, Hkv, PAGE, D = c.k_cache.shape
            valid = torch.zeros(P, dtype=torch.long, device=self.device)  # valid tokens per physical page
            for b, n in enumerate(c.lens):
                n_pages = -(-n // PAGE)
                counts = torch.full((n_pages,), PAGE, dtype=torch.long, device=self.device)
                counts[-1] = n - (n_pages - 1) * PAGE
                valid[c.page_table[b, :n_pages].long()] = counts
            m = (torch.arange(PAGE, device=self.device)[None, :] < valid[:, None])[:, None, :, None]  # [P, 1, PAGE, 1]
            k = c.k_cache.float()
            kmin = torch.where(m, k, torch.inf).amin(2)
            kmax = torch.where(m, k, -torch.inf).amax(2)
            unused = (valid == 0)[:, None, None]
            return torch.where(unused, 0.0, kmin), torch.where(unused, 0.0, kmax)
        return self._memo("metadata", make)

    def selection_ref(self, budget: int, gqa_mode: str, aggregate: str) -> torch.Tensor:
        """[B, Hsel, K] int32 reference selection, K = min(ceil(budget / page), max_pages)."""
        def make():
            c = self.cache
            ref = select_pages_ref(self.q, c.kmin, c.kmax, c.page_table, c.seq_lens, c.page_size, budget,
                                   gqa_mode, aggregate)
            k = min(-(-budget // c.page_size), c.page_table.shape[1])
            if ref.shape[2] > k and bool((ref[:, :, k:] != -1).any()):
                raise AssertionError("reference selection wider than the page table")  # cannot happen: budget >= context
            return ref[:, :, :k].contiguous().to(self.device)
        return self._memo(("select", budget, gqa_mode, aggregate), make)

    def selection_phys_ref(self, budget: int, gqa_mode: str, aggregate: str) -> torch.Tensor:
        """Physical page ids of :meth:`selection_ref` (-1 where the row is padded): what
        select writes to ``out_phys`` and sparse decode reads as ``selected_phys``."""
        def make():
            ref = self.selection_ref(budget, gqa_mode, aggregate)  # [B, Hsel, K]
            table = self.cache.page_table.long()[:, None, :].expand(-1, ref.shape[1], -1)  # [B, Hsel, max_pages]
            phys = torch.gather(table, 2, ref.clamp(min=0).long())
            return torch.where(ref >= 0, phys, -1).to(torch.int32)
        return self._memo(("select_phys", budget, gqa_mode, aggregate), make)

    def attention_ref(self, selected: torch.Tensor | None, key) -> torch.Tensor:
        """float32 [B, Hq, D] attention over the selected pages (None = all pages)."""
        c = self.cache
        return self._memo(("attention", key), lambda: paged_attention_ref(
            self.q, c.k_cache, c.v_cache, c.page_table, c.seq_lens, selected))


class WorkloadPool:
    """Workloads of the current shape group (all page sizes of one bucket shape).

    Moving to another (dtype, head dim, heads, seq, batch) frees the previous group, so
    at most one shape's caches (one per page size) live at a time.
    """

    def __init__(self, device: torch.device, seed: int = 0):
        self.device, self.seed = device, seed
        self._group: tuple | None = None
        self._items: dict[Shape, Workload] = {}

    def get(self, shape: Shape) -> Workload:
        group = (shape.dtype, shape.head_dim, shape.num_q_heads, shape.num_kv_heads, shape.seq_len, shape.batch)
        if group != self._group:
            self.clear()
            self._group = group
        if shape not in self._items:
            self._items[shape] = Workload(shape, self.device, self.seed)
        return self._items[shape]

    def clear(self) -> None:
        self._items.clear()
        self._group = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- runner


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    msg = " | ".join(lines[:3])[:300]
    kind = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else type(exc).__name__
    return f"{kind}: {msg}" if msg else kind


class Runner:
    """Evaluate candidates of one bucket: launch, check against the reference, time."""

    def __init__(self, bucket: Bucket, pool: WorkloadPool, timer: Timer):
        self.bucket, self.pool, self.timer = bucket, pool, timer

    def prepare(self, page_size: int) -> Workload:
        return self.pool.get(Shape.of(self.bucket, page_size))

    def build(self, cand: Candidate) -> tuple[Callable[[], object], Callable[[], None]]:
        """(launch, check): ``launch`` runs the kernel into preallocated buffers, ``check``
        raises AssertionError when its last result differs from the reference."""
        return tunable(self.bucket.op).build(self.bucket, self.prepare(cand.page_size), cand.config, cand.budget)

    def evaluate(self, cand: Candidate, trial: int | None = None) -> Outcome:
        """Build, run once, check, then time. Exceptions become a failed outcome."""
        try:
            launch, check = self.build(cand)
            launch()
            if self.pool.device.type == "cuda":
                torch.cuda.synchronize()
            check()
            info = TrialInfo(self.bucket.op, cand.config, cand.params, cand.page_size, cand.budget, self.bucket, trial)
            latency = float(self.timer(launch, info))
            if not latency > 0:
                return Outcome(None, f"timer returned a non-positive latency {latency!r}")
            return Outcome(latency)
        except AssertionError as exc:
            return Outcome(None, f"mismatch: {_reason(exc)}")
        except Exception as exc:  # compile errors, OOM, launch errors: recorded, the study goes on
            reason = _reason(exc)
            if isinstance(exc, torch.OutOfMemoryError) and self.pool.device.type == "cuda":
                torch.cuda.empty_cache()
            if any(s in str(exc) for s in FATAL_CUDA):
                raise FatalDeviceError(f"CUDA context lost while running {cand.config}: {reason}") from exc
            return Outcome(None, reason)

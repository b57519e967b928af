"""A paged KV cache with Quest page metadata kept in step with every write.

Layout (HND): ``k_cache, v_cache: [num_pages, Hkv, page_size, D]``; metadata
``kmin, kmax: [num_pages, Hkv, D]`` (the cache dtype by default, exact;
``meta_dtype=torch.float8_e5m2`` halves the bytes ``select`` streams, safe-rounded);
``page_table: [batch, max_pages]`` int32 of physical page ids; ``seq_lens: [batch]``
int32. Serving engines that own their page tables can skip this class and call
:class:`questkern.QuestDecode` with raw tensors.

Pages are taken from a free list as sequences grow (host bookkeeping, no device
sync); ``shuffle=True`` hands them out in random order, as a long-running server does.

``reference=True`` keeps the same layout but writes pages and metadata with plain torch
ops instead of the Triton kernels (for CPU runs without the interpreter, e.g. the
transformers hook on CPU); only then may ``dtype`` be float32 (the kernels take fp16/bf16).
"""

from __future__ import annotations

import torch

from questkern import validate as V
from questkern.ops.metadata import append_decode, metadata_build
from questkern.ops.metadata.naive import round_safe
from questkern.profiling import annotate
from questkern.tuning import resolve_config


class PagedKVCache:
    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        page_size: int = 16,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
        num_pages: int | None = None,
        meta_dtype: torch.dtype | None = None,
        shuffle: bool = False,
        seed: int = 0,
        reference: bool = False,
    ):
        V.check_positive_int("batch_size", batch_size)
        V.check_positive_int("max_seq_len", max_seq_len)
        V.check_positive_int("num_kv_heads", num_kv_heads)
        V.check_choice("head_dim", head_dim, V.HEAD_DIMS)
        V.check_choice("page_size", page_size, V.PAGE_SIZES)
        if not isinstance(reference, bool):
            raise TypeError(f"reference must be a bool, got {type(reference).__name__}")
        V.check_choice("dtype", dtype, V.KV_DTYPES + ((torch.float32,) if reference else ()))
        meta_dtype = meta_dtype or dtype
        if meta_dtype not in (*V.META_DTYPES, dtype):
            raise ValueError(f"meta_dtype must be the cache dtype {dtype} or one of {[str(d) for d in V.META_DTYPES]} "
                             f"(float32 and the cache dtype are exact; float8_e5m2 is safe-rounded, half the bytes), got {meta_dtype}")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.page_size, self.head_dim, self.num_kv_heads, self.dtype, self.device = page_size, head_dim, num_kv_heads, dtype, device
        self.reference = reference
        self.max_pages = -(-max_seq_len // page_size)
        self.num_pages = num_pages if num_pages is not None else batch_size * self.max_pages
        V.check_positive_int("num_pages", self.num_pages)
        shape = (self.num_pages, num_kv_heads, page_size, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # [P, Hkv, PAGE, D]
        self.device = device = self.k_cache.device  # "cuda" -> "cuda:0": compare like with like
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.kmin = torch.zeros(self.num_pages, num_kv_heads, head_dim, dtype=meta_dtype, device=device)  # [P, Hkv, D]
        self.kmax = torch.zeros_like(self.kmin)
        self.page_table = torch.zeros(batch_size, self.max_pages, dtype=torch.int32, device=device)  # [B, max_pages]
        self.seq_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)  # [B]
        self._table = torch.zeros(batch_size, self.max_pages, dtype=torch.int32)  # host mirror
        self._lens = [0] * batch_size
        self._mapped = [0] * batch_size  # pages mapped per sequence (>= those its length uses; see reserve)
        order = torch.randperm(self.num_pages, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(self.num_pages)
        self._free = order.tolist()[::-1]  # pop() from the end

    @property
    def batch_size(self) -> int:
        return len(self._lens)

    @property
    def lens(self) -> list[int]:
        """Host copy of the sequence lengths."""
        return list(self._lens)

    # ------------------------------------------------------------------ pages
    def _reserve(self, new_lens: list[int]) -> None:
        changed = False
        for b, n in enumerate(new_lens):
            if n > self.max_pages * self.page_size:
                raise ValueError(f"sequence {b} would reach {n} tokens, more than max_seq_len capacity {self.max_pages * self.page_size}")
            have = self._mapped[b]
            need = -(-n // self.page_size)
            for p in range(have, need):
                if not self._free:
                    raise RuntimeError(f"PagedKVCache is out of pages ({self.num_pages} in all); raise num_pages or release sequences")
                self._table[b, p] = self._free.pop()
                self._mapped[b] = p + 1
                changed = True
        if changed:
            self.page_table.copy_(self._table)

    def reserve(self, max_len: int) -> None:
        """Map now the pages of every sequence up to ``max_len`` tokens (<= max_seq_len), so
        that decode appends made by the kernels alone (a CUDA-graph loop calling
        :func:`questkern.ops.metadata.append_decode`) find their pages mapped. Lengths are
        unchanged; pages already mapped stay."""
        V.check_positive_int("max_len", max_len)
        cap = self.max_pages * self.page_size
        if max_len > cap:
            raise ValueError(f"max_len = {max_len} exceeds the max_seq_len capacity {cap}")
        self._reserve([max(n, max_len) for n in self._lens])

    def sync_lens(self) -> list[int]:
        """Read ``seq_lens`` back into the host mirror (after appends made outside this
        object, e.g. by a replayed CUDA graph; one device sync). Returns the lengths."""
        lens = [int(x) for x in self.seq_lens.tolist()]
        for b, n in enumerate(lens):
            if -(-n // self.page_size) > self._mapped[b]:
                raise RuntimeError(f"seq_lens[{b}] = {n} reaches pages that were never mapped "
                                   f"({self._mapped[b]} pages): reserve() them before appending outside the cache")
        self._lens = lens
        return list(lens)

    def release(self, b: int) -> None:
        """Free sequence b's pages and set its length to 0."""
        for p in range(self._mapped[b]):
            self._free.append(int(self._table[b, p]))
        self._mapped[b] = 0
        self._lens[b] = 0
        self.seq_lens[b] = 0

    # ------------------------------------------------------------------ writes
    def append(self, k: torch.Tensor, v: torch.Tensor, lens: list[int] | torch.Tensor | None = None) -> None:
        """Append a chunk of tokens (prefill): k, v [B, T, Hkv, D]; ``lens[b]`` <= T of them are valid.

        Metadata of every page touched is rebuilt from its keys.
        """
        B = self.batch_size
        V.check_tensor("k", k, ndim=4, dtypes=(self.dtype,), device=self.device, shape=(B, None, self.num_kv_heads, self.head_dim), contiguous=False, what="[batch, tokens, num_kv_heads, head_dim]")
        V.check_tensor("v", v, ndim=4, dtypes=(self.dtype,), device=self.device, shape=tuple(k.shape), contiguous=False)
        T = k.shape[1]
        lens = [T] * B if lens is None else [int(x) for x in lens]
        if len(lens) != B or any(n < 0 or n > T for n in lens):
            raise ValueError(f"lens must hold {B} values in [0, {T}], got {lens}")
        old = list(self._lens)
        new = [o + n for o, n in zip(old, lens)]
        self._reserve(new)
        ps = self.page_size
        for b in range(B):
            if lens[b] == 0:
                continue
            pos = torch.arange(old[b], new[b])
            pages = self._table[b, pos // ps].to(self.device, torch.long)
            slots = (pos % ps).to(self.device)
            self.k_cache[pages, :, slots, :] = k[b, : lens[b]]
            self.v_cache[pages, :, slots, :] = v[b, : lens[b]]
        self._lens = new
        self.seq_lens.copy_(torch.tensor(new, dtype=torch.int32))
        first = [o // ps for o in old]
        n_build = max(-(-n // ps) - f for n, f in zip(new, first))
        if self.reference:
            self._build_ref(first, new)
            return
        cfg, _ = resolve_config("metadata", device=self.device, dtype=self.dtype, head_dim=self.head_dim, group=1,
                                page_size=ps, seq_len=max(new), batch=B)
        with annotate("questkern.metadata", op="build", batch=B):
            metadata_build(self.k_cache, self.kmin, self.kmax, self.page_table, self.seq_lens,
                           torch.tensor(first, dtype=torch.int32, device=self.device), n_build, cfg)

    def append_decode(self, k: torch.Tensor, v: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Append one token per sequence: k, v [B, Hkv, D]. Updates only the page written."""
        B = self.batch_size
        V.check_tensor("k", k, ndim=3, dtypes=(self.dtype,), device=self.device, shape=(B, self.num_kv_heads, self.head_dim), what="[batch, num_kv_heads, head_dim]")
        V.check_tensor("v", v, ndim=3, dtypes=(self.dtype,), device=self.device, shape=tuple(k.shape))
        act = [True] * B if active is None else [bool(x) for x in active.tolist()]
        new = [n + int(a) for n, a in zip(self._lens, act)]
        self._reserve(new)
        act_t = torch.tensor(act, dtype=torch.int32, device=self.device)
        if self.reference:
            append_decode_torch(k, v, self.k_cache, self.v_cache, self.kmin, self.kmax, self.page_table, self.seq_lens, act_t)
            self._lens = new
            return
        with annotate("questkern.metadata", op="append", batch=B):
            append_decode(k, v, self.k_cache, self.v_cache, self.kmin, self.kmax, self.page_table, self.seq_lens, act_t)
        self._lens = new

    def _build_ref(self, first: list[int], new: list[int]) -> None:
        """Metadata of logical pages first[b].. of every sequence, with torch ops (reference mode)."""
        ps = self.page_size
        for b, (f, n) in enumerate(zip(first, new)):
            n_pages = -(-n // ps)
            if n_pages <= f:
                continue
            phys = self._table[b, f:n_pages].to(self.device, torch.long)
            k = self.k_cache[phys].float()  # [n, Hkv, PAGE, D]
            valid = (torch.arange(f, n_pages)[:, None] * ps + torch.arange(ps)[None]) < n  # [n, PAGE]
            valid = valid.to(self.device)[:, None, :, None]
            lo = torch.where(valid, k, float("inf")).amin(2)
            hi = torch.where(valid, k, float("-inf")).amax(2)
            self.kmin[phys] = round_safe(lo, self.kmin.dtype, "down").to(self.kmin.dtype)
            self.kmax[phys] = round_safe(hi, self.kmax.dtype, "up").to(self.kmax.dtype)


def append_decode_torch(k, v, k_cache, v_cache, kmin, kmax, page_table, seq_lens, active) -> None:
    """What :func:`questkern.ops.metadata.append_decode` does, with torch ops (reference
    mode of PagedKVCache): k, v [B, Hkv, D] written at seq_lens[b] of the active
    sequences, that page's running min/max updated, seq_lens incremented in place."""
    PAGE = k_cache.shape[2]
    live = active != 0  # [B]
    pos = seq_lens.long()
    phys = page_table.gather(1, (pos // PAGE)[:, None])[:, 0].long()  # [B]
    slot = pos % PAGE
    rows = live.nonzero()[:, 0]  # the writes of inactive rows are dropped (their page may be unmapped)
    phys, slot = phys[rows], slot[rows]
    kb, vb = k[rows].to(k_cache.dtype), v[rows].to(v_cache.dtype)  # [n, Hkv, D]
    k_cache[phys, :, slot] = kb
    v_cache[phys, :, slot] = vb
    first = (slot == 0)[:, None, None]
    kf = kb.float()
    lo = round_safe(kf, kmin.dtype, "down").to(kmin.dtype)
    hi = round_safe(kf, kmax.dtype, "up").to(kmax.dtype)
    kmin[phys] = torch.where(first, lo, torch.minimum(kmin[phys], lo))
    kmax[phys] = torch.where(first, hi, torch.maximum(kmax[phys], hi))
    seq_lens.add_(live.to(seq_lens.dtype))

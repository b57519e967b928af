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

``sub_page_size`` (hierarchical pages, LServe style): metadata ``[num_pages, Hkv, SUB, D]``
with one min/max per sub-page of ``sub_page_size`` tokens (SUB = page_size // sub_page_size);
selection scores a page by the max of its sub-pages' bounds and picks whole pages, so
p64/sub16 keeps the metadata bytes of page 16 with a quarter of the top-K candidates.
A sub-page with no valid token yet (in a sequence's last page) is not written.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from questkern import validate as V
from questkern._details import default_device
from questkern._nvtx import annotate
from questkern.configs.runtime import resolve_config
from questkern.ops.metadata import append_decode, metadata_build
from questkern.ops.metadata.naive import round_safe, sub_pages_view


def _check_device(device) -> torch.device:
    """None -> the current CUDA device, else the CPU; else a CPU or CUDA device that exists."""
    if device is None:
        return default_device()
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        raise TypeError(
            f"device must be a torch.device, a string such as 'cuda' or 'cpu', or None, got {type(device).__name__}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"device must name a torch device such as 'cuda', 'cuda:1' or 'cpu', got {device!r} ({e})"
        ) from None
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device must be a CUDA device (or the CPU, for the Triton interpreter), got {dev}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); pass device='cpu' to run the "
                f"kernels in the Triton interpreter (TRITON_INTERPRET=1)"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and not 0 <= dev.index < n:
            raise ValueError(f"device={str(device)!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return dev


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
        sub_page_size: int | None = None,
    ):
        V.check_positive_int("batch_size", batch_size)
        V.check_positive_int("max_seq_len", max_seq_len)
        V.check_positive_int("num_kv_heads", num_kv_heads)
        V.check_choice("head_dim", head_dim, V.HEAD_DIMS)
        V.check_choice("page_size", page_size, V.PAGE_SIZES)
        if not isinstance(reference, bool):
            raise TypeError(f"reference must be a bool, got {type(reference).__name__}")
        V.check_choice("dtype", dtype, V.KV_DTYPES + ((torch.float32,) if reference else ()))
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        meta_dtype = meta_dtype or dtype
        if meta_dtype not in (*V.META_DTYPES, dtype):
            raise ValueError(
                f"meta_dtype must be the cache dtype {dtype} or one of {[str(d) for d in V.META_DTYPES]} "
                f"(float32 and the cache dtype are exact; float8_e5m2 is safe-rounded, half the bytes), got {meta_dtype}"
            )
        if sub_page_size is not None:
            _check_sub_page_size(sub_page_size, page_size)
        device = _check_device(device)
        self.sub_page_size = sub_page_size  # None: one min/max per page (metadata [P, Hkv, D])
        self.page_size, self.head_dim, self.num_kv_heads, self.dtype, self.device = (
            page_size,
            head_dim,
            num_kv_heads,
            dtype,
            device,
        )
        self.reference = reference
        self.max_pages = -(-max_seq_len // page_size)
        self.num_pages = num_pages if num_pages is not None else batch_size * self.max_pages
        V.check_positive_int("num_pages", self.num_pages)
        shape = (self.num_pages, num_kv_heads, page_size, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # [P, Hkv, PAGE, D]
        self.device = device = self.k_cache.device  # "cuda" -> "cuda:0": compare like with like
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        sub = () if sub_page_size is None else (page_size // sub_page_size,)
        # [P, Hkv, D], or [P, Hkv, SUB, D] with sub-pages
        self.kmin = torch.zeros(self.num_pages, num_kv_heads, *sub, head_dim, dtype=meta_dtype, device=device)
        self.kmax = torch.zeros_like(self.kmin)
        self.page_table = torch.zeros(batch_size, self.max_pages, dtype=torch.int32, device=device)  # [B, max_pages]
        self.seq_lens = torch.zeros(batch_size, dtype=torch.int32, device=device)  # [B]
        self._table = torch.zeros(batch_size, self.max_pages, dtype=torch.int32)  # host mirror
        self._lens = [0] * batch_size
        self._mapped = [0] * batch_size  # pages mapped per sequence (>= those its length uses; see reserve)
        order = (
            torch.randperm(self.num_pages, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(self.num_pages)
        )
        self._free = order.tolist()[::-1]  # pop() from the end

    @property
    def batch_size(self) -> int:
        return len(self._lens)

    @property
    def lens(self) -> list[int]:
        """Host copy of the sequence lengths."""
        return list(self._lens)

    # ------------------------------------------------------------------ pages
    def _plan_pages(self, new_lens: list[int]) -> list[tuple[int, int]]:
        """The (sequence, logical page) slots that growing to ``new_lens`` needs; raises
        (changing nothing) when a sequence would pass max_seq_len or the free list is short."""
        cap = self.max_pages * self.page_size
        need = []
        for b, n in enumerate(new_lens):
            if n > cap:
                raise ValueError(f"sequence {b} would reach {n} tokens, more than max_seq_len capacity {cap}")
            have = self._mapped[b]  # pages mapped (>= those its length uses; see reserve)
            need += [(b, p) for p in range(have, -(-n // self.page_size))]
        if len(need) > len(self._free):
            raise RuntimeError(
                f"PagedKVCache is out of pages ({self.num_pages} in all, {len(self._free)} free, "
                f"{len(need)} needed); raise num_pages or release sequences"
            )
        return need

    def _take(self, slots: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Map the slots to free pages (all or nothing); returns what ``_give_back`` undoes."""
        taken = []
        for b, p in slots:
            taken.append((b, p, int(self._table[b, p])))
            self._table[b, p] = self._free.pop()
            self._mapped[b] = max(self._mapped[b], p + 1)
        if taken:
            self.page_table.copy_(self._table)
        return taken

    def _reserve(self, new_lens: list[int]) -> None:
        """Map the pages that growing to ``new_lens`` needs (all or nothing)."""
        self._take(self._plan_pages(new_lens))

    def _give_back(self, taken: list[tuple[int, int, int]]) -> None:
        for b, p, old in reversed(taken):
            self._free.append(int(self._table[b, p]))
            self._table[b, p] = old
            self._mapped[b] = min(self._mapped[b], p)
        if taken:
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
                raise RuntimeError(
                    f"seq_lens[{b}] = {n} reaches pages that were never mapped "
                    f"({self._mapped[b]} pages): reserve() them before appending outside the cache"
                )
        self._lens = lens
        return list(lens)

    def release(self, b: int) -> None:
        """Free sequence b's pages and set its length to 0."""
        self._check_index("b", b)
        for p in range(self._mapped[b]):
            self._free.append(int(self._table[b, p]))
        self._mapped[b] = 0
        self._lens[b] = 0
        self.seq_lens[b] = 0

    # ------------------------------------------------------------------ checks
    def _check_index(self, name: str, b) -> None:
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"{name} must be an int sequence index, got {type(b).__name__}")
        if not 0 <= b < self.batch_size:
            raise ValueError(f"{name} must be in [0, {self.batch_size}) (batch_size), got {b}")

    def _check_lens(self, lens, T: int) -> list[int]:
        """``lens``: None (every sequence gets all T tokens) or B integers in [0, T]."""
        B = self.batch_size
        if lens is None:
            return [T] * B
        if isinstance(lens, torch.Tensor):
            if lens.dtype.is_floating_point or lens.dtype.is_complex or lens.dtype == torch.bool or lens.dim() != 1:
                raise TypeError(
                    f"lens must be a 1-D integer tensor or a list of {B} ints, got a {lens.dim()}-D {lens.dtype} tensor"
                )
            lens = lens.tolist()
        if not isinstance(lens, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, int) for x in lens):
            raise TypeError(
                f"lens must be a list of {B} ints (token counts; fractions are not truncated), got {lens!r}"
            )
        if len(lens) != B or any(n < 0 or n > T for n in lens):
            raise ValueError(f"lens must hold {B} values in [0, {T}], got {list(lens)}")
        return list(lens)

    def _check_active(self, active) -> list[bool]:
        """``active``: None (every sequence) or a [batch] bool/int tensor (or list) of 0/1."""
        B = self.batch_size
        if active is None:
            return [True] * B
        if isinstance(active, torch.Tensor):
            if active.dtype.is_floating_point or active.dtype.is_complex or active.dim() != 1:
                raise TypeError(
                    f"active must be a 1-D bool or integer tensor of {B} flags, got a {active.dim()}-D "
                    f"{active.dtype} tensor"
                )
            active = active.tolist()
        if not isinstance(active, (list, tuple)) or any(not isinstance(x, int) for x in active):
            raise TypeError(f"active must be a [batch] bool tensor or a list of {B} bools, got {active!r}")
        if len(active) != B or any(x not in (0, 1) for x in active):
            raise ValueError(f"active must hold {B} flags (0/1 or bools), got {list(active)}")
        return [bool(x) for x in active]

    # ------------------------------------------------------------------ writes
    def append(self, k: torch.Tensor, v: torch.Tensor, lens: list[int] | torch.Tensor | None = None) -> None:
        """Append a chunk of tokens (prefill): k, v [B, T, Hkv, D]; ``lens[b]`` <= T of them are valid.

        Metadata of every page touched is rebuilt from its keys. Appending no tokens
        (T = 0 or every ``lens[b]`` = 0) is a no-op. Every argument is checked before
        anything is written: a call that raises leaves the cache as it was.
        """
        B = self.batch_size
        V.check_tensor(
            "k",
            k,
            ndim=4,
            dtypes=(self.dtype,),
            device=self.device,
            shape=(B, None, self.num_kv_heads, self.head_dim),
            contiguous=False,
            what="[batch, tokens, num_kv_heads, head_dim]",
        )
        V.check_tensor("v", v, ndim=4, dtypes=(self.dtype,), device=self.device, shape=tuple(k.shape), contiguous=False)
        T = k.shape[1]
        lens = self._check_lens(lens, T)
        if not any(lens):
            return  # nothing to append
        old = list(self._lens)
        new = [o + n for o, n in zip(old, lens)]
        slots = self._plan_pages(new)
        ps = self.page_size
        cfg = None
        if not self.reference:
            cfg, _ = resolve_config(
                "metadata",
                device=self.device,
                dtype=self.dtype,
                head_dim=self.head_dim,
                group=1,
                page_size=ps,
                seq_len=max(new),
                batch=B,
            )
        taken = self._take(slots)
        try:
            for b in range(B):
                if lens[b] == 0:
                    continue
                pos = torch.arange(old[b], new[b])
                pages = self._table[b, pos // ps].to(self.device, torch.long)
                slot = (pos % ps).to(self.device)
                self.k_cache[pages, :, slot, :] = k[b, : lens[b]]
                self.v_cache[pages, :, slot, :] = v[b, : lens[b]]
            self.seq_lens.copy_(torch.tensor(new, dtype=torch.int32))
            first = [o // ps for o in old]
            n_build = max(-(-n // ps) - f for n, f in zip(new, first))
            if self.reference:
                self._build_ref(first, new)
            else:
                with annotate("questkern.metadata", op="build", batch=B):
                    metadata_build(
                        self.k_cache,
                        self.kmin,
                        self.kmax,
                        self.page_table,
                        self.seq_lens,
                        torch.tensor(first, dtype=torch.int32, device=self.device),
                        n_build,
                        cfg,
                    )
        except BaseException:
            self._give_back(taken)
            self.seq_lens.copy_(torch.tensor(old, dtype=torch.int32))
            raise
        self._lens = new

    def append_decode(self, k: torch.Tensor, v: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Append one token per sequence: k, v [B, Hkv, D]; ``active`` [B] bools (None = all)
        says which sequences grow. Updates only the page written. A call that raises
        leaves the cache as it was."""
        B = self.batch_size
        V.check_tensor(
            "k",
            k,
            ndim=3,
            dtypes=(self.dtype,),
            device=self.device,
            shape=(B, self.num_kv_heads, self.head_dim),
            what="[batch, num_kv_heads, head_dim]",
        )
        V.check_tensor("v", v, ndim=3, dtypes=(self.dtype,), device=self.device, shape=tuple(k.shape))
        act = self._check_active(active)
        new = [n + int(a) for n, a in zip(self._lens, act)]
        taken = self._take(self._plan_pages(new))
        try:
            act_t = torch.tensor(act, dtype=torch.int32, device=self.device)
            if self.reference:
                append_decode_torch(
                    k, v, self.k_cache, self.v_cache, self.kmin, self.kmax, self.page_table, self.seq_lens, act_t
                )
            else:
                with annotate("questkern.metadata", op="append", batch=B):
                    append_decode(
                        k, v, self.k_cache, self.v_cache, self.kmin, self.kmax, self.page_table, self.seq_lens, act_t
                    )
        except BaseException:
            self._give_back(taken)
            raise
        self._lens = new

    def _build_ref(self, first: list[int], new: list[int]) -> None:
        """Metadata of logical pages first[b].. of every sequence, with torch ops (reference mode);
        with sub-pages, one min/max per sub-page, those with no valid token left as they are."""
        ps = self.page_size
        sub = self.sub_page_size or ps
        for b, (f, n) in enumerate(zip(first, new)):
            n_pages = -(-n // ps)
            if n_pages <= f:
                continue
            phys = self._table[b, f:n_pages].to(self.device, torch.long)
            k = self.k_cache[phys].float()  # [n, Hkv, PAGE, D]
            valid = (torch.arange(f, n_pages)[:, None] * ps + torch.arange(ps)[None]) < n  # [n, PAGE]
            valid = valid.to(self.device)[:, None, :, None]
            shape = (k.shape[0], k.shape[1], ps // sub, sub, k.shape[3])  # [n, Hkv, SUB, SUBPAGE, D]
            k, valid = k.view(shape), valid.view(shape[0], 1, shape[2], sub, 1)
            lo = round_safe(torch.where(valid, k, float("inf")).amin(3), self.kmin.dtype, "down")  # [n, Hkv, SUB, D]
            hi = round_safe(torch.where(valid, k, float("-inf")).amax(3), self.kmax.dtype, "up")
            has = valid.any(3)  # [n, 1, SUB, 1] sub-pages holding a valid token (whole pages: always)
            for meta, val in ((sub_pages_view(self.kmin), lo), (sub_pages_view(self.kmax), hi)):
                meta[phys] = torch.where(has, val.to(meta.dtype), meta[phys])


def _check_sub_page_size(sub_page_size, page_size: int) -> None:
    """``sub_page_size``: a power of two >= V.MIN_SUB_PAGE dividing page_size, smaller than it."""
    if isinstance(sub_page_size, bool) or not isinstance(sub_page_size, int):
        raise TypeError(f"sub_page_size must be an int or None, got {type(sub_page_size).__name__}")
    ok = [s for s in V.SUB_PAGE_SIZES if s >= V.MIN_SUB_PAGE and s < page_size and page_size % s == 0]
    if sub_page_size not in ok:
        raise ValueError(
            f"sub_page_size must be a power of two >= {V.MIN_SUB_PAGE} that divides page_size = "
            f"{page_size} and is smaller than it (one of {ok}; None for whole pages), got {sub_page_size}"
        )


PREFILL_CHUNK = 8192  # tokens appended per step while filling a cache (bounds the temporary K/V)


def prefill_chunked(
    cache: PagedKVCache,
    lens: list[int],
    make_kv: Callable[[tuple[int, int, int, int]], tuple],
    *,
    chunk: int = PREFILL_CHUNK,
) -> None:
    """Fill ``cache`` with synthetic tokens chunk by chunk (bench, tuner and profiler inputs):
    sequence ``b`` gets ``lens[b]`` tokens. ``make_kv(shape)`` returns the chunk's ``(k, v)``
    for ``shape = (batch, T, num_kv_heads, head_dim)``; it is called once per chunk, in order,
    so a seeded generator gives the same cache every time."""
    total = max(lens)
    for start in range(0, total, chunk):
        T = min(chunk, total - start)
        k, v = make_kv((cache.batch_size, T, cache.num_kv_heads, cache.head_dim))  # [B, T, Hkv, D]
        cache.append(k, v, [max(0, min(T, n - start)) for n in lens])
        del k, v


def append_decode_torch(k, v, k_cache, v_cache, kmin, kmax, page_table, seq_lens, active) -> None:
    """What :func:`questkern.ops.metadata.append_decode` does, with torch ops (reference
    mode of PagedKVCache): k, v [B, Hkv, D] written at seq_lens[b] of the active
    sequences, that page's running min/max updated, seq_lens incremented in place."""
    PAGE = k_cache.shape[2]
    sub = PAGE // kmin.shape[2] if kmin.dim() == 4 else PAGE  # tokens per sub-page (PAGE: whole pages)
    live = active != 0  # [B]
    pos = seq_lens.long()
    phys = page_table.gather(1, (pos // PAGE)[:, None])[:, 0].long()  # [B]
    slot = pos % PAGE
    rows = live.nonzero()[:, 0]  # the writes of inactive rows are dropped (their page may be unmapped)
    phys, slot = phys[rows], slot[rows]
    kb, vb = k[rows].to(k_cache.dtype), v[rows].to(v_cache.dtype)  # [n, Hkv, D]
    k_cache[phys, :, slot] = kb
    v_cache[phys, :, slot] = vb
    first = (slot % sub == 0)[:, None, None]  # a (sub-)page's first token starts its min/max afresh
    kf = kb.float()
    lo = round_safe(kf, kmin.dtype, "down")  # float32 values of the metadata dtype (min/max of them are exact)
    hi = round_safe(kf, kmax.dtype, "up")
    j = slot // sub  # the sub-page of each token (0 for whole pages)
    lo4, hi4 = sub_pages_view(kmin), sub_pages_view(kmax)
    lo4[phys, :, j] = torch.where(first, lo, torch.minimum(lo4[phys, :, j].float(), lo)).to(kmin.dtype)
    hi4[phys, :, j] = torch.where(first, hi, torch.maximum(hi4[phys, :, j].float(), hi)).to(kmax.dtype)
    seq_lens.add_(live.to(seq_lens.dtype))

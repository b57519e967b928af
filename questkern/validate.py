"""Input checks run before any launch. Each error names the argument and what was expected."""

from __future__ import annotations

import math

import torch

KV_DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (32, 64, 128, 256)
PAGE_SIZES = (8, 16, 32, 64)
# page metadata besides the key dtype (exact): float32 (exact), float8_e5m2 (safe-rounded)
META_DTYPES = (torch.float32, torch.float8_e5m2)
GQA_MODES = ("shared", "per_head")
MIN_SUB_PAGE = 4  # tokens per sub-page of hierarchical metadata, at least
SUB_PAGE_SIZES = (4, 8, 16, 32)  # sub_page_size values PagedKVCache and `bench --sub-page-size` take
AGGREGATES = ("sum", "max")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: tuple | None = None,
    device: torch.device | None = None,
    shape: tuple | None = None,
    contiguous: bool = True,
    what: str = "",
) -> None:
    """Type, rank, dtype, device, shape (None entries = any) and contiguity of one tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{what and ' ' + what}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D{what and ' ' + what}, got shape {_shape(t)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (where the KV cache is), got {t.device}")
    if shape is not None:
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is not None and want != got:
                exp = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"{name} must have shape {exp}{what and ' ' + what}, got {_shape(t)} (dim {i})")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous()), got strides {tuple(t.stride())}")


def check_positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_choice(name: str, v, choices) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")


def check_kv_cache(k_cache, v_cache, kmin, kmax) -> None:
    check_tensor("k_cache", k_cache, ndim=4, dtypes=KV_DTYPES, what="[num_pages, num_kv_heads, page_size, head_dim]")
    check_tensor("v_cache", v_cache, ndim=4, dtypes=(k_cache.dtype,), device=k_cache.device, shape=tuple(k_cache.shape))
    P, H, PAGE, D = k_cache.shape
    check_choice("page_size (k_cache.shape[2])", PAGE, PAGE_SIZES)
    check_choice("head_dim (k_cache.shape[3])", D, HEAD_DIMS)
    meta = META_DTYPES + (k_cache.dtype,)
    if isinstance(kmin, torch.Tensor) and kmin.dim() == 4:  # hierarchical: one min/max per sub-page
        what = "[num_pages, num_kv_heads, sub_pages, head_dim] (hierarchical metadata)"
        check_tensor("kmin", kmin, ndim=4, dtypes=meta, device=k_cache.device, shape=(P, H, None, D), what=what)
        SUB = kmin.shape[2]
        if SUB < 1 or PAGE % SUB or PAGE // SUB < MIN_SUB_PAGE:
            ok = [s for s in range(1, PAGE + 1) if PAGE % s == 0 and PAGE // s >= MIN_SUB_PAGE]
            raise ValueError(
                f"kmin must have shape [num_pages, num_kv_heads, sub_pages, head_dim] with sub_pages "
                f"dividing page_size = {PAGE} into sub-pages of >= {MIN_SUB_PAGE} tokens (one of {ok}), "
                f"got {_shape(kmin)}"
            )
        check_tensor("kmax", kmax, ndim=4, dtypes=(kmin.dtype,), device=k_cache.device, shape=(P, H, SUB, D), what=what)
        return
    what = "[num_pages, num_kv_heads, head_dim] (or [num_pages, num_kv_heads, sub_pages, head_dim], hierarchical)"
    check_tensor("kmin", kmin, ndim=3, dtypes=meta, device=k_cache.device, shape=(P, H, D), what=what)
    check_tensor("kmax", kmax, ndim=3, dtypes=(kmin.dtype,), device=k_cache.device, shape=(P, H, D), what=what)


def check_batch(page_table, seq_lens, num_pages: int, page_size: int, device) -> int:
    """Check the page table and lengths (reads them on the host once). Returns max seq_len."""
    check_tensor("page_table", page_table, ndim=2, dtypes=(torch.int32,), device=device, what="[batch, max_pages]")
    B, max_pages = page_table.shape
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32,), device=device, shape=(B,), what="[batch]")
    if B == 0:
        raise ValueError("page_table must have at least one row (batch >= 1)")
    lens = seq_lens.cpu()
    if int(lens.min()) <= 0:
        b = int(torch.argmin(lens))
        raise ValueError(f"seq_lens must be >= 1 for every sequence, got seq_lens[{b}] = {int(lens[b])}")
    cap = max_pages * page_size
    if int(lens.max()) > cap:
        b = int(torch.argmax(lens))
        raise ValueError(
            f"seq_lens[{b}] = {int(lens[b])} exceeds the page table capacity {max_pages} pages x {page_size} = {cap} tokens"
        )
    n_pages = (lens + page_size - 1) // page_size
    used = torch.arange(max_pages)[None, :] < n_pages[:, None]
    ids = page_table.cpu()[used]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_pages):
        bad = ids[(ids < 0) | (ids >= num_pages)][0]
        raise ValueError(
            f"page_table holds page id {int(bad)} outside [0, {num_pages}) (num_pages of k_cache) in a page in use"
        )
    return int(lens.max())


def check_query(q, batch: int, num_kv_heads: int, head_dim: int, dtype, device, num_q_heads: int | None = None) -> None:
    check_tensor(
        "q",
        q,
        ndim=3,
        dtypes=(dtype,),
        device=device,
        shape=(batch, num_q_heads, head_dim),
        what="[batch, num_q_heads, head_dim]",
    )
    if q.shape[1] % num_kv_heads:
        raise ValueError(f"q.shape[1] (num_q_heads = {q.shape[1]}) must be a multiple of num_kv_heads = {num_kv_heads}")


def check_metadata_order(kmin, kmax, page_table, seq_lens, page_size: int, chunk: int = 4096) -> None:
    """kmin <= kmax on every channel of every page in use (swapped tensors select wrongly).
    NaN entries (a non-finite key, see the README) pass. Hierarchical metadata
    [P, Hkv, SUB, D]: every sub-page holding a valid token (those past a sequence's end
    are never written, nor read). Reads the metadata of the pages in use, ``chunk``
    pages at a time (a device sync: plan() only)."""
    B, max_pages = page_table.shape
    n_pages = (seq_lens.long() + page_size - 1) // page_size
    used = torch.arange(max_pages, device=page_table.device)[None, :] < n_pages[:, None]
    if kmin.dim() == 4:
        SUB = kmin.shape[2]
        sub = page_size // SUB
        n_valid = seq_lens.long()[:, None] - torch.arange(max_pages, device=page_table.device)[None, :] * page_size
        n_sub = ((n_valid.clamp(0, page_size) + sub - 1) // sub)[used]  # [N] sub-pages in use of each page in use
        ids = page_table[used].long()
        live = torch.arange(SUB, device=ids.device)[None, :] < n_sub[:, None]  # [N, SUB]
    else:
        ids = torch.unique(page_table[used].long())
        live = None

    def bad_of(i: int):
        sl = ids[i : i + chunk]
        bad = kmin[sl].float() > kmax[sl].float()  # [n, H, D] or [n, H, SUB, D]
        if live is not None:
            bad &= live[i : i + chunk][:, None, :, None].to(bad.device)
        return sl, bad

    found = torch.zeros((), dtype=torch.bool, device=kmin.device)
    for i in range(0, ids.numel(), chunk):  # one sync in all (then, on a bad page, the search for it)
        found |= bad_of(i)[1].any()
    if not bool(found):
        return
    for i in range(0, ids.numel(), chunk):
        sl, bad = bad_of(i)
        if bool(bad.any()):
            at = [int(x) for x in bad.nonzero()[0]]
            p, h, d = at[0], at[1], at[-1]
            where = f"page {int(sl[p])}, kv head {h}, " + (f"sub-page {at[2]}, " if live is not None else "")
            idx = (sl[p], h, at[2], d) if live is not None else (sl[p], h, d)
            raise ValueError(
                f"kmin > kmax at {where}channel {d} "
                f"({float(kmin[idx])} > {float(kmax[idx])}): kmin and kmax swapped "
                f"or not built from the keys"
            )


def check_reuse(every, threshold, budget, adaptive, path: str = "auto") -> None:
    """``reselect_every`` / ``drift_threshold`` of QuestDecode (and the transformers hook)."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"reselect_every must be an int >= 1 or None, got {every!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"drift_threshold must be a number in [-1, 1] or None, got {type(threshold).__name__}")
        if not (math.isfinite(threshold) and -1 <= threshold <= 1):
            raise ValueError(f"drift_threshold must be a number in [-1, 1] or None, got {threshold!r}")
    if every is None and threshold is None:
        raise ValueError(
            "reselect_every=None (no age limit) needs a drift_threshold; pass reselect_every=1 to select at every step"
        )
    if every == 1 and threshold is None:
        return
    if budget is None and adaptive is None:
        raise ValueError(
            "reselect_every / drift_threshold reuse a sparse selection: they need a budget (got budget=None, dense)"
        )
    if adaptive is not None:
        raise ValueError("reselect_every / drift_threshold do not take an adaptive budget yet (use a fixed budget)")
    if path == "fused":
        raise ValueError(
            "reselect_every / drift_threshold run the classic path (select, then decode); use path='auto' or 'classic'"
        )

"""Public decode API: ``plan()`` once (validation, configs, buffers), ``run(q)`` per step.

    wrapper = questkern.QuestDecode(budget=2048, gqa_mode="shared")
    wrapper.plan(cache, num_q_heads=32)      # hoist out of the decode loop
    out = wrapper.run(q)                     # q [B, Hq, D] -> out [B, Hq, D]

``run`` allocates nothing and never synchronizes, so a whole step can be captured in
a CUDA graph. It reads ``page_table`` and ``seq_lens`` at launch: an engine may update
them in place between steps (e.g. ``PagedKVCache.append_decode``) as long as no
sequence outgrows the page table width that was planned. Call ``plan`` again when the
batch changes shape or crosses into another sequence-length bucket.

A sequence that outgrows the planned width anyway is read up to that width only (never
out of bounds) and the kernels set a device-side flag: :meth:`QuestDecode.check` reads it
(a device sync) and the next ``plan()`` raises naming it. ``run`` checks ``q`` (shape,
dtype, device, contiguity: host metadata only) and nothing that would need a sync: not
``seq_lens``, page ids or metadata values changed after ``plan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from questkern import validate as V
from questkern._nvtx import annotate
from questkern.config import CONFIG_TYPES, DecodeConfig, SelectConfig, StepConfig, kernel_violation
from questkern.configs.runtime import resolve_config
from questkern.ops.decode import decode_workspace, paged_decode
from questkern.ops.decode.kernel import decode_num_splits
from questkern.ops.select import select_pages, select_workspace
from questkern.ops.select.adaptive import adaptive_workspace, select_pages_adaptive
from questkern.ops.select.adaptive_naive import AdaptiveBudget
from questkern.ops.select.reuse import ReuseState, reuse_gate, reuse_state
from questkern.ops.step import quest_step, step_plan, step_workspace


@dataclass
class Plan:
    """What ``plan()`` decided; ``sources`` says where each config came from."""

    batch: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    max_seq_len: int
    k_pages: int  # pages attended per selection row (0 = dense)
    select_config: SelectConfig | None
    decode_config: DecodeConfig
    num_splits: int
    sources: dict
    path: str = "classic"  # "fused" (questkern.ops.step: 2 launches) or "classic" (select, decode, combine)
    step_config: StepConfig | None = None


class QuestDecode:
    """Quest sparse decode (``budget`` tokens per step) or dense decode (``budget=None``).

    gqa_mode: ``"shared"`` (one page set per KV head from the group's aggregated
        score; each page is loaded once for the whole group) or ``"per_head"`` (exact
        Quest: one page set per query head).
    aggregate: how ``shared`` combines the group's scores: ``"sum"`` or ``"max"``.
    adaptive: an :class:`AdaptiveBudget` instead of ``budget``: per query, the smallest
        page set whose estimated score mass passes ``threshold``, between ``min_budget``
        and ``max_budget`` tokens (``questkern.ops.select.adaptive_naive`` has the rule).
    configs: optional ``{"select": SelectConfig, "sparse_decode"|"dense_decode": DecodeConfig,
        "quest_step": StepConfig}`` overrides (the tuner uses this); by default the tuning
        table or heuristic decides.
    path: how a sparse step runs. ``"fused"`` (questkern.ops.step): the page scores, then
        one launch in which every program of a selection row finds the row's top-K itself
        and attends to its share of the selected pages. ``"classic"``: select (scores, then
        a top-K merge with one program per row), split-K decode, combine. ``"auto"`` (the
        default) is the classic path until the fused one is measured faster on the GPU
        (issue 15; the adaptive budget and selection reuse run the classic path only).
    reselect_every: reuse a selection across decode steps (LServe's
        ``dynamic_select_interval``): a KV head selects afresh every this many steps and
        keeps its page ids in between (``1``, the default: every step; ``None``: no age
        limit, with ``drift_threshold``).
    drift_threshold: also select afresh when the cosine similarity of a KV head's group
        of queries to those of its last selection falls below this (in [-1, 1]).
        Whatever these say, a sequence new to the plan (or named by :meth:`reselect`),
        and a sequence whose context crossed into a new page, selects at that step; the
        decision is made on the device (no sync, CUDA-graph safe). Rules:
        :mod:`questkern.ops.select.reuse_naive`.
    """

    def __init__(
        self,
        budget: int | None,
        *,
        gqa_mode: str = "shared",
        aggregate: str = "sum",
        sm_scale: float | None = None,
        configs: dict | None = None,
        adaptive: AdaptiveBudget | None = None,
        path: str = "auto",
        reselect_every: int | None = 1,
        drift_threshold: float | None = None,
    ):
        if budget is not None:
            V.check_positive_int("budget", budget)
        if adaptive is not None:
            if not isinstance(adaptive, AdaptiveBudget):
                raise TypeError(f"adaptive must be an AdaptiveBudget or None, got {type(adaptive).__name__}")
            if budget is not None:
                raise ValueError("pass either budget or adaptive (whose max_budget bounds the pages), not both")
        self.adaptive = adaptive
        V.check_choice("gqa_mode", gqa_mode, V.GQA_MODES)
        V.check_choice("aggregate", aggregate, V.AGGREGATES)
        if sm_scale is not None and (isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float))):
            raise TypeError(f"sm_scale must be a positive finite number or None, got {type(sm_scale).__name__}")
        if sm_scale is not None and not (math.isfinite(sm_scale) and sm_scale > 0):
            raise ValueError(f"sm_scale must be a positive finite number or None, got {sm_scale!r}")
        V.check_choice("path", path, ("auto", "fused", "classic"))
        if path == "fused" and adaptive is not None:
            raise ValueError("path='fused' does not take an adaptive budget (use path='auto' or 'classic')")
        V.check_reuse(reselect_every, drift_threshold, budget, adaptive, path)
        self.reselect_every, self.drift_threshold = reselect_every, drift_threshold
        self.budget, self.gqa_mode, self.aggregate, self.sm_scale = budget, gqa_mode, aggregate, sm_scale
        self.path = path
        self.configs = _check_configs(configs)
        self._plan: Plan | None = None
        self._reuse: ReuseState | None = None  # of the current plan (reuse only)
        self._status: torch.Tensor | None = None  # [1] int32 of the current plan: bit 0 = grown past it

    @property
    def dense(self) -> bool:
        return self.budget is None and self.adaptive is None

    @property
    def reuse(self) -> bool:
        """Whether selections are reused across steps (``reselect_every`` != 1 or a drift threshold)."""
        return self.reselect_every != 1 or self.drift_threshold is not None

    # ------------------------------------------------------------------ plan
    def plan(
        self,
        cache=None,
        *,
        num_q_heads: int,
        k_cache=None,
        v_cache=None,
        kmin=None,
        kmax=None,
        page_table=None,
        seq_lens=None,
        page_size: int | None = None,
        max_seq_len: int | None = None,
    ) -> Plan:
        """Validate the cache and batch, choose configs, allocate buffers.

        Pass a :class:`questkern.PagedKVCache` or the raw tensors. ``page_size``, when
        given, must match the cache. ``max_seq_len`` (>= the current longest sequence)
        picks the tuning bucket for a loop that will grow the sequences.

        Raises if a ``run()`` of the previous plan met a sequence longer than the page-table
        width planned (see :meth:`check`); the flag is cleared, so planning again works.
        Every argument is checked before anything changes: a rejected call leaves the
        previous plan in place.
        """
        self._raise_if_grown(clear=True)
        raw = dict(k_cache=k_cache, v_cache=v_cache, kmin=kmin, kmax=kmax, page_table=page_table, seq_lens=seq_lens)
        if cache is not None:
            given = [n for n, t in raw.items() if t is not None]
            if given:
                raise ValueError(f"pass either a cache or the raw tensors, not both (got cache and {', '.join(given)})")
            for n in raw:
                if not hasattr(cache, n):
                    raise TypeError(
                        f"cache must be a questkern.PagedKVCache (or pass the raw tensors), "
                        f"got {type(cache).__name__} without .{n}"
                    )
            k_cache, v_cache, kmin, kmax = cache.k_cache, cache.v_cache, cache.kmin, cache.kmax
            page_table, seq_lens = cache.page_table, cache.seq_lens
        else:
            missing = [n for n, t in raw.items() if t is None]
            if missing:
                raise TypeError(f"plan() needs a cache or all raw tensors; missing {', '.join(missing)}")
        if page_size is not None:
            V.check_positive_int("page_size", page_size)
        V.check_kv_cache(k_cache, v_cache, kmin, kmax)
        P, Hkv, PAGE, D = k_cache.shape
        if kmin.dim() == 4:  # hierarchical pages: the classic select only (configs keyed by the physical page)
            if self.adaptive is not None:
                raise ValueError(
                    f"adaptive: the adaptive budget does not take hierarchical metadata yet (kmin "
                    f"{tuple(kmin.shape)} has {kmin.shape[2]} sub-pages a page); use a fixed budget"
                )
            if self.path == "fused":
                raise ValueError(
                    f"path='fused' does not take hierarchical metadata yet (kmin {tuple(kmin.shape)} "
                    f"has {kmin.shape[2]} sub-pages a page); use path='auto' or 'classic'"
                )
        if page_size is not None and page_size != PAGE:
            raise ValueError(f"page_size = {page_size} does not match the cache's page size k_cache.shape[2] = {PAGE}")
        V.check_positive_int("num_q_heads", num_q_heads)
        if num_q_heads % Hkv:
            raise ValueError(f"num_q_heads = {num_q_heads} must be a multiple of num_kv_heads = {Hkv}")
        longest = V.check_batch(page_table, seq_lens, P, PAGE, k_cache.device)
        if max_seq_len is not None:
            V.check_positive_int("max_seq_len", max_seq_len)
            if max_seq_len < longest:
                raise ValueError(f"max_seq_len = {max_seq_len} is shorter than the longest sequence ({longest})")
        V.check_metadata_order(kmin, kmax, page_table, seq_lens, PAGE)
        bucket_len = max_seq_len or longest
        B, max_pages = page_table.shape
        G = num_q_heads // Hkv
        key = dict(
            device=k_cache.device, dtype=k_cache.dtype, head_dim=D, group=G, page_size=PAGE, seq_len=bucket_len, batch=B
        )
        sources = {}
        sel_cfg = None
        k_pages = 0
        if not self.dense:
            budget = self.adaptive.max_budget if self.adaptive is not None else self.budget
            k_pages = min(-(-budget // PAGE), max_pages)
            sel_cfg, sources["select"] = self._config("select", key)
        fused = not self.dense and self.adaptive is None and not self.reuse and self.path == "fused"
        if fused:
            return self._plan_fused(
                key, k_cache, v_cache, kmin, kmax, page_table, seq_lens, num_q_heads, bucket_len, k_pages
            )
        op = "dense_decode" if self.dense else "sparse_decode"
        dec_cfg, sources[op] = self._config(op, key)
        per_head = self.gqa_mode == "per_head" and G > 1 and not self.dense
        n_slots = max_pages if self.dense else k_pages
        splits = decode_num_splits(dec_cfg, B, num_q_heads, Hkv, per_head, n_slots, k_cache.device)

        dev = k_cache.device
        self._plan = None  # every check passed; should an allocation below fail, no half-built plan runs
        self._tensors = (k_cache, v_cache, kmin, kmax, page_table, seq_lens)
        self._status = torch.zeros(1, dtype=torch.int32, device=dev)
        self._out = torch.empty(B, num_q_heads, D, dtype=k_cache.dtype, device=dev)
        self._dec_ws = decode_workspace(B, num_q_heads, splits, D, dev) if splits > 1 else None
        self._reuse = None
        if not self.dense:
            rows = Hkv if self.gqa_mode == "shared" else num_q_heads
            self._selected = torch.empty(B, rows, k_pages, dtype=torch.int32, device=dev)
            self._selected_phys = torch.empty_like(self._selected)
            if self.adaptive is not None:
                self._sel_ws = adaptive_workspace(B, rows, max_pages, k_pages, sel_cfg, dev)
            else:
                self._sel_ws = select_workspace(B, rows, max_pages, k_pages, sel_cfg, dev)
            self._reuse = (
                reuse_state(B, Hkv, G, D, self.reselect_every, self.drift_threshold, dev) if self.reuse else None
            )
        self._plan = Plan(B, num_q_heads, Hkv, D, PAGE, bucket_len, k_pages, sel_cfg, dec_cfg, splits, sources)
        return self._plan

    def _plan_fused(
        self,
        key: dict,
        k_cache,
        v_cache,
        kmin,
        kmax,
        page_table,
        seq_lens,
        num_q_heads: int,
        bucket_len: int,
        k_pages: int,
    ) -> Plan:
        P, Hkv, PAGE, D = k_cache.shape
        B, max_pages = page_table.shape
        dev = k_cache.device
        cfg, source = self._config("quest_step", key)
        rows = num_q_heads if (self.gqa_mode == "per_head" and num_q_heads != Hkv) else Hkv
        num_sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 4
        geo = step_plan(B, rows, max_pages, k_pages, cfg, num_sms)
        self._plan = None  # every check passed; should an allocation below fail, no half-built plan runs
        self._num_sms = num_sms
        self._reuse = None
        self._tensors = (k_cache, v_cache, kmin, kmax, page_table, seq_lens)
        self._status = torch.zeros(1, dtype=torch.int32, device=dev)
        self._out = torch.empty(B, num_q_heads, D, dtype=k_cache.dtype, device=dev)
        self._selected = torch.empty(B, rows, k_pages, dtype=torch.int32, device=dev)
        self._selected_phys = torch.empty_like(self._selected)
        self._step_ws = step_workspace(B, num_q_heads, rows, D, geo, dev)
        self._plan = Plan(
            B,
            num_q_heads,
            Hkv,
            D,
            PAGE,
            bucket_len,
            k_pages,
            None,
            DecodeConfig(),
            geo["splits"],
            {"quest_step": source},
            path="fused",
            step_config=cfg,
        )
        return self._plan

    def _config(self, op: str, key: dict):
        if op in self.configs:
            cfg = self.configs[op]
            bad = kernel_violation(op, cfg, page_size=key["page_size"], head_dim=key["head_dim"])
            if bad:
                raise ValueError(f"configs[{op!r}] cannot run on this cache: {bad}")
            return cfg, "override"
        return resolve_config(op, **key, budget=self.budget, gqa_mode=self.gqa_mode)

    # ------------------------------------------------------------------ run
    def run(self, q: torch.Tensor, *, return_selected: bool = False):
        """One decode step: q [B, Hq, D] -> out [B, Hq, D] (a buffer owned by the plan,
        overwritten by the next run). With ``return_selected`` also the selected
        logical pages [B, Hkv or Hq, K] (int32, ascending, -1 padded)."""
        p = self._plan
        if p is None:
            raise RuntimeError("QuestDecode.run() called before plan()")
        if not isinstance(return_selected, bool):
            raise TypeError(f"return_selected must be a bool, got {type(return_selected).__name__}")
        k_cache, v_cache, kmin, kmax, page_table, seq_lens = self._tensors
        V.check_query(q, p.batch, p.num_kv_heads, p.head_dim, k_cache.dtype, k_cache.device, p.num_q_heads)
        if p.path == "fused":
            with annotate(
                "questkern.quest_step", batch=p.batch, pages=page_table.shape[1], k=p.k_pages, splits=p.num_splits
            ):
                quest_step(
                    q,
                    kmin,
                    kmax,
                    k_cache,
                    v_cache,
                    page_table,
                    seq_lens,
                    p.k_pages,
                    gqa_mode=self.gqa_mode,
                    aggregate=self.aggregate,
                    sm_scale=self.sm_scale,
                    config=p.step_config,
                    out=self._out,
                    selected=self._selected,
                    selected_phys=self._selected_phys,
                    workspace=self._step_ws,
                    num_sms=self._num_sms,
                    status=self._status,
                )
            return (self._out, self._selected) if return_selected else self._out
        selected = None
        if not self.dense:
            with annotate("questkern.select", batch=p.batch, pages=page_table.shape[1], k=p.k_pages):
                if self.adaptive is not None:  # rows hold <= k_pages pages, -1 padded (decode skips -1)
                    selected = select_pages_adaptive(
                        q,
                        kmin,
                        kmax,
                        page_table,
                        seq_lens,
                        p.page_size,
                        self.adaptive,
                        self.gqa_mode,
                        self.aggregate,
                        sm_scale=self.sm_scale,
                        config=p.select_config,
                        out=self._selected,
                        out_phys=self._selected_phys,
                        workspace=self._sel_ws,
                        status=self._status,
                    )
                elif self._reuse is not None:  # stored rows are logical ids: the decode maps them now
                    gate = reuse_gate(q, page_table, seq_lens, p.page_size, self._reuse, status=self._status)
                    selected = select_pages(
                        q,
                        kmin,
                        kmax,
                        page_table,
                        seq_lens,
                        p.page_size,
                        p.k_pages,
                        self.gqa_mode,
                        self.aggregate,
                        p.select_config,
                        out=self._selected,
                        workspace=self._sel_ws,
                        status=self._status,
                        gate=gate,
                    )
                else:
                    selected = select_pages(
                        q,
                        kmin,
                        kmax,
                        page_table,
                        seq_lens,
                        p.page_size,
                        p.k_pages,
                        self.gqa_mode,
                        self.aggregate,
                        p.select_config,
                        out=self._selected,
                        out_phys=self._selected_phys,
                        workspace=self._sel_ws,
                        status=self._status,
                    )
        name = "questkern.dense_decode" if self.dense else "questkern.sparse_decode"
        with annotate(name, batch=p.batch, splits=p.num_splits):
            paged_decode(
                q,
                k_cache,
                v_cache,
                page_table,
                seq_lens,
                selected,
                self.sm_scale,
                p.decode_config,
                num_splits=p.num_splits,
                out=self._out,
                workspace=self._dec_ws,
                selected_phys=None if self.dense or self._reuse is not None else self._selected_phys,
                status=self._status,
            )
        return (self._out, selected) if return_selected else self._out

    def reselect(self, sequences=None) -> None:
        """Make the given sequences (batch indices: an int, a list of ints or a [B] bool
        tensor; ``None`` = all) select afresh at the next ``run()``, whatever the reuse
        rules say (e.g. an engine that put a new request in a batch slot). Writes a device
        flag: no sync. A plan without reuse ignores it."""
        p = self._plan
        if p is None:
            raise RuntimeError("QuestDecode.reselect() called before plan()")
        force = self._reuse.force if self._reuse is not None else None
        if sequences is None:
            idx: slice | torch.Tensor = slice(None)
        elif isinstance(sequences, torch.Tensor):
            if sequences.dtype != torch.bool or sequences.shape != (p.batch,):
                raise ValueError(
                    f"sequences as a tensor must be a [batch] = [{p.batch}] bool mask, "
                    f"got {sequences.dtype} {tuple(sequences.shape)}"
                )
            idx = sequences.to(self._status.device)
        else:
            ids = [sequences] if isinstance(sequences, int) and not isinstance(sequences, bool) else sequences
            if not isinstance(ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise TypeError(
                    f"sequences must be None, an int, a list of ints or a [batch] bool tensor, got {sequences!r}"
                )
            bad = [i for i in ids if not 0 <= i < p.batch]
            if bad:
                raise ValueError(f"sequences must be batch indices in [0, {p.batch}), got {bad}")
            idx = torch.tensor(ids, dtype=torch.long, device=self._status.device)
        if force is not None:
            force[idx] = 1

    # ------------------------------------------------------------------ status
    def check(self, *, raise_error: bool = True) -> bool:
        """Whether every ``run()`` since ``plan()`` stayed within the planned page-table width.

        Reads the plan's device flag, so it **synchronizes with the device** (call it
        outside the hot loop, e.g. every N steps or when a step ends). A sequence that grew
        past the width was attended up to it only. With ``raise_error`` (the default) that
        raises ``RuntimeError``; else returns False. The flag stays set until ``plan()``.
        """
        if self._plan is None:
            raise RuntimeError("QuestDecode.check() called before plan()")
        if int(self._status.item()) & 1:
            if raise_error:
                raise RuntimeError(self._grown_message())
            return False
        return True

    def _grown_message(self) -> str:
        width = self._tensors[4].shape[1]
        return (
            f"QuestDecode: a run() met a sequence longer than the page-table width planned ({width} pages x "
            f"{self._plan.page_size} = {width * self._plan.page_size} tokens); those steps attended to the "
            f"first {width} pages only. Call plan() again after the page table grows (a precondition of run())."
        )

    def _raise_if_grown(self, clear: bool) -> None:
        if self._plan is not None and self._status is not None and int(self._status.item()) & 1:
            msg = self._grown_message()
            if clear:
                self._status.zero_()
            raise RuntimeError(msg + " (flag cleared: this plan() call was refused, the next one proceeds)")


def _check_configs(configs) -> dict:
    """``configs``: None or {op: config instance or dict of its fields} for the ops below."""
    if configs is None:
        return {}
    if not isinstance(configs, dict):
        raise TypeError(f"configs must be a dict {{op: config}} or None, got {type(configs).__name__}")
    ops = ("select", "sparse_decode", "dense_decode", "quest_step")
    out = {}
    for op, cfg in configs.items():
        if op not in ops:
            raise ValueError(f"configs has unknown op {op!r}; expected some of {list(ops)}")
        want = CONFIG_TYPES[op]
        if isinstance(cfg, dict):
            try:
                cfg = want.from_dict(cfg)
            except (TypeError, ValueError) as e:
                raise ValueError(f"configs[{op!r}]: {e}") from None
        if not isinstance(cfg, want):
            raise TypeError(
                f"configs[{op!r}] must be a {want.__name__} (or a dict of its fields), got {type(cfg).__name__}"
            )
        out[op] = cfg
    return out


def quest_decode(q: torch.Tensor, cache, budget: int | None, **kwargs):
    """One-shot convenience: plan + run (plans every call; hoist QuestDecode.plan in loops)."""
    run_kw = {"return_selected": kwargs.pop("return_selected", False)}
    V.check_tensor("q", q, ndim=3, contiguous=False, what="[batch, num_q_heads, head_dim]")
    w = QuestDecode(budget, **kwargs)
    w.plan(cache, num_q_heads=q.shape[1])
    return w.run(q, **run_kw)


def dense_decode(q: torch.Tensor, cache, **kwargs):
    """Dense paged decode over every page (the in-house baseline)."""
    return quest_decode(q, cache, None, **kwargs)


__all__ = ["QuestDecode", "Plan", "quest_decode", "dense_decode"]

"""questkern as the decode attention of a Hugging Face ``transformers`` model.

    from questkern.integrations.hf import QuestAttention, QuestCache, enable_quest
    enable_quest(model, QuestAttention(budget=2048, page_size=16, dense_layers=2))
    cache = QuestCache(model, max_cache_len=prompt_len + 64)     # K/V in questkern's pages only
    model.generate(**inputs, past_key_values=cache, max_new_tokens=64)

``enable_quest`` registers :func:`questkern_attention` as ``"questkern"`` in transformers'
``AttentionInterface`` (and the SDPA mask builder under the same name in
``AttentionMaskInterface``), switches the model to it and attaches the settings to every
attention module. transformers then calls it with post-RoPE ``query [B, Hq, T, D]`` and
whatever the cache's ``update`` returned.

With a :class:`QuestCache` (:mod:`questkern.integrations.hf_cache`; the way to use it)
the K/V are stored once, in one :class:`questkern.PagedKVCache` per layer, with the page
metadata kept in step by the metadata kernels; prefill runs SDPA, decode steps of layers
``>= dense_layers`` run :class:`questkern.QuestDecode` (the others the dense paged decode);
left-padded / ragged batches are stored unpadded; ``generate()`` works greedy and sampling
(beam search is refused). A CUDA-graph decode loop is in
:mod:`questkern.integrations.hf_generate`.

With any other cache (e.g. transformers' ``DynamicCache``) the hook gets the whole
contiguous K/V at each step and runs the sparse decode step on them; prefill (T > 1), the
first ``dense_layers`` layers and ``budget=None`` run dense SDPA, as Quest does:

* ``"reference"``: the float32 torch references — metadata per page of the cached keys
  (optionally narrowed with safe rounding), :func:`questkern.ops.select.select_pages_ref`
  (or the adaptive reference) and :func:`questkern.ops.decode.naive.paged_attention_ref`;
  metadata is recomputed from the keys at every step (O(S) per layer, no state).
* ``"kernels"``: each layer mirrors the cache into a :class:`questkern.PagedKVCache`
  (built at the first decode step, then one ``append_decode`` per step: **a second copy
  of the K/V** — QuestCache avoids it) and runs :class:`questkern.QuestDecode`.

``backend="auto"`` (the default) is ``"kernels"`` on CUDA and ``"reference"`` elsewhere (a
warning says so once); decode steps without QuestCache need sequences of equal length
(no padding mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from questkern import validate as V
from questkern.ops.decode.naive import paged_attention_ref
from questkern.ops.select.adaptive_naive import AdaptiveBudget, select_pages_adaptive_ref
from questkern.ops.select.naive import select_pages_ref
from questkern.ops.metadata.minmax import META_DTYPES, page_minmax, round_meta
from questkern.ops.select.rerank_naive import select_pages_rerank_ref
from questkern.ops.select.reuse_naive import ReuseStateRef

NAME = "questkern"
BACKENDS = ("auto", "reference", "kernels")


@dataclass
class QuestAttention:
    """Settings of the questkern attention hook.

    budget: tokens attended per decode step (None = dense everywhere); ignored when
        ``adaptive`` is given.
    page_size: tokens per page (8, 16, 32 or 64).
    dense_layers: the first this many layers stay dense (Quest keeps 2).
    gqa_mode / aggregate: as in :class:`questkern.QuestDecode`.
    adaptive: an :class:`AdaptiveBudget` to pick K per query (see adaptive_naive).
    meta: metadata type for the reference backend ("fp32", "bf16", "fp16",
        "fp8_e5m2"; narrow types are safe-rounded).
    backend: "auto" (kernels on CUDA, the references elsewhere), "reference" or
        "kernels" (see module doc).
    kv_dtype: K/V dtype of the kernels backend's pages: always for the mirror of another
        cache; for QuestCache when the model's dtype is neither bf16 nor fp16.
    rerank: 0 (today's rule) or a candidate factor: the ``rerank * (K - 1)`` best pages by
        bound are re-ranked by their exact attention mass and the ``K - 1`` best kept
        (:mod:`questkern.ops.select.rerank_naive`; reads those pages' keys). Reference
        backend only for now ("auto" then means the reference; "kernels" refuses it); the
        quality suite measures it.
    reselect_every / drift_threshold: reuse a layer's selection across decode steps, as in
        :class:`questkern.QuestDecode` (rules: :mod:`questkern.ops.select.reuse_naive`; the
        reference backend keeps the same state per layer). Defaults: select at every step.
    on_select: optional callback ``(layer_idx, selected [B, Hsel, K]) -> None`` (for
        studies: which pages each step read).
    on_query: optional callback ``(layer_idx, q [B, Hq, D]) -> None`` called at every
        decode step of every layer, dense or sparse (trace capture uses it).
    """

    budget: int | None = 2048
    page_size: int = 16
    dense_layers: int = 2
    gqa_mode: str = "shared"
    aggregate: str = "sum"
    adaptive: AdaptiveBudget | None = None
    meta: str = "fp32"
    backend: str = "auto"
    kv_dtype: torch.dtype = torch.bfloat16
    rerank: int = 0
    reselect_every: int | None = 1
    drift_threshold: float | None = None
    on_select: Callable | None = None
    on_query: Callable | None = None
    _state: dict = field(default_factory=dict, repr=False)  # kernels backend: per-layer caches

    def __post_init__(self):
        if self.budget is not None:
            V.check_positive_int("budget", self.budget)
        V.check_choice("page_size", self.page_size, V.PAGE_SIZES)
        if isinstance(self.dense_layers, bool) or not isinstance(self.dense_layers, int) or self.dense_layers < 0:
            raise ValueError(f"dense_layers must be an int >= 0, got {self.dense_layers!r}")
        V.check_choice("gqa_mode", self.gqa_mode, V.GQA_MODES)
        V.check_choice("aggregate", self.aggregate, V.AGGREGATES)
        if self.adaptive is not None and not isinstance(self.adaptive, AdaptiveBudget):
            raise TypeError(f"adaptive must be an AdaptiveBudget or None, got {type(self.adaptive).__name__}")
        V.check_choice("meta", self.meta, tuple(META_DTYPES))
        V.check_choice("backend", self.backend, BACKENDS)
        V.check_choice("kv_dtype", self.kv_dtype, V.KV_DTYPES)
        if isinstance(self.rerank, bool) or not isinstance(self.rerank, int) or self.rerank < 0:
            raise ValueError(f"rerank must be an int >= 0 (candidate pages per selected page), got {self.rerank!r}")
        if self.rerank and (self.backend == "kernels" or self.adaptive is not None):
            raise ValueError(
                "rerank > 0 needs backend='reference' (or 'auto', which then uses the reference) and a "
                "fixed budget (no adaptive): the kernels have no re-rank stage yet"
            )
        V.check_reuse(self.reselect_every, self.drift_threshold, self.budget, self.adaptive)
        if self.backend == "kernels" and self.meta != "fp32":
            raise ValueError(
                "meta must be 'fp32' with backend='kernels' (the paged cache keeps exact metadata in the kv dtype)"
            )

    @property
    def sparse(self) -> bool:
        return self.budget is not None or self.adaptive is not None

    @property
    def reuse(self) -> bool:
        return self.reselect_every != 1 or self.drift_threshold is not None

    def reuse_options(self) -> dict:
        """QuestDecode keywords of the reuse settings (none when every step selects)."""
        return {"reselect_every": self.reselect_every, "drift_threshold": self.drift_threshold} if self.reuse else {}

    def reuse_ref(self, key, batch: int, num_kv_heads: int) -> ReuseStateRef:
        """The reference backends' reuse state for ``key`` (e.g. a layer), kept in ``_state``."""
        st = self._state.get(("reuse", key))
        if st is None or st.last_len.shape != (batch, num_kv_heads):
            st = self._state[("reuse", key)] = ReuseStateRef(
                batch, num_kv_heads, self.page_size, self.reselect_every, self.drift_threshold
            )
        return st

    def reset(self) -> None:
        """Drop the kernels backend's mirrored caches (call between unrelated generations)."""
        self._state.clear()

    def resolved_backend(self, device: torch.device) -> str:
        """The backend used on ``device`` ("auto": kernels on CUDA with exact metadata)."""
        if self.backend == "auto" and (self.meta != "fp32" or self.rerank):
            return "reference"
        from questkern.integrations.hf_cache import resolve_backend

        return resolve_backend(self.backend, device)


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def questkern_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function. query [B, Hq, T, D], key/value [B, Hkv, S, D]
    -> (out [B, T, Hq, D], None)."""
    cfg: QuestAttention | None = getattr(module, "questkern", None)
    paged_layer = getattr(key, "_questkern_layer", None)  # set by QuestCache.update
    if paged_layer is not None:
        return paged_layer.attend(
            module, cfg or paged_layer.settings, query, key, value, attention_mask, scaling, dropout, **kwargs
        )
    layer = getattr(module, "layer_idx", 0)
    T = query.shape[2]
    if cfg is not None and cfg.on_query is not None and T == 1:
        cfg.on_query(layer, query[:, :, 0, :])
    if cfg is None or not cfg.sparse or T != 1 or layer < cfg.dense_layers:
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if _hides_keys(attention_mask):
        raise NotImplementedError(
            "questkern attention: decode steps need unpadded sequences of equal length "
            "(the attention mask hides some keys); run one sequence per call"
        )
    D = query.shape[3]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
    q = query[:, :, 0, :]  # [B, Hq, D]
    if cfg.resolved_backend(query.device) == "kernels":
        out = _kernels_step(cfg, layer, q, key, value, scale)
    else:
        out = _reference_step(cfg, layer, q, key, value, scale)
    return out.to(query.dtype)[:, None], None  # [B, 1, Hq, D]


def _hides_keys(mask) -> bool:
    """Whether an SDPA-style mask (bool: True = attend; float: additive) hides any key."""
    if mask is None:
        return False
    if mask.dtype == torch.bool:
        return not bool(mask.all())
    return bool((mask < torch.finfo(mask.dtype).min / 2).any())


def _reference_step(cfg: QuestAttention, layer: int, q, key, value, scale):
    """Float32 references on a paged view of the contiguous HF cache (one page table per sequence)."""
    B, Hkv, S, D = key.shape
    P = cfg.page_size
    n = -(-S // P)
    pad = n * P - S
    out = torch.empty(B, q.shape[1], D, dtype=torch.float32, device=q.device)
    table = torch.arange(n, dtype=torch.int32, device=q.device)[None]  # [1, n]
    lens = torch.tensor([S], dtype=torch.int32, device=q.device)
    for b in range(B):
        kmin, kmax = page_minmax(key[b], P)  # [n, Hkv, D]
        kmin, kmax = round_meta(kmin, kmax, cfg.meta)
        k_pages = torch.nn.functional.pad(key[b], (0, 0, 0, pad)).view(Hkv, n, P, D).transpose(0, 1)  # [n, Hkv, P, D]
        v_pages = torch.nn.functional.pad(value[b], (0, 0, 0, pad)).view(Hkv, n, P, D).transpose(0, 1)
        qb = q[b : b + 1].float()  # [1, Hq, D]
        if cfg.adaptive is not None:
            sel = select_pages_adaptive_ref(
                qb, kmin, kmax, table, lens, P, cfg.adaptive, cfg.gqa_mode, cfg.aggregate, scale
            )
        elif cfg.rerank:
            sel = select_pages_rerank_ref(
                qb, kmin, kmax, k_pages, table, lens, P, cfg.budget, cfg.rerank, cfg.gqa_mode, cfg.aggregate, scale
            )
        else:
            sel = select_pages_ref(qb, kmin, kmax, table, lens, P, cfg.budget, cfg.gqa_mode, cfg.aggregate)
        if cfg.reuse:
            sel = cfg.reuse_ref((layer, b), 1, Hkv).step(qb, table, lens, sel)
        if cfg.on_select is not None:
            cfg.on_select(layer, sel)
        out[b] = paged_attention_ref(qb, k_pages, v_pages, table, lens, sel, scale)[0]
    return out


def _kernels_step(cfg: QuestAttention, layer: int, q, key, value, scale):
    """Triton kernels on a paged mirror of the HF cache (kept per layer in cfg._state)."""
    from questkern.api import QuestDecode
    from questkern.cache import PagedKVCache

    B, Hkv, S, D = key.shape
    st = cfg._state.get(layer)
    cache: PagedKVCache | None = st["cache"] if st else None
    if cache is None or cache.batch_size != B or cache.lens != [S - 1] * B or cache.max_pages * cfg.page_size < S:
        cap = max(S, (st or {}).get("cap", 0)) + 256  # room for the steps that follow
        cache = PagedKVCache(B, cap, Hkv, D, page_size=cfg.page_size, dtype=cfg.kv_dtype, device=key.device)
        cache.append(
            key[:, :, : S - 1].transpose(1, 2).to(cfg.kv_dtype), value[:, :, : S - 1].transpose(1, 2).to(cfg.kv_dtype)
        )
        st = cfg._state[layer] = {"cache": cache, "cap": cap}
    cache.append_decode(
        key[:, :, S - 1].to(cfg.kv_dtype).contiguous(), value[:, :, S - 1].to(cfg.kv_dtype).contiguous()
    )
    qk = q.to(cfg.kv_dtype).contiguous()  # [B, Hq, D]
    key = (cfg.budget, cfg.adaptive, cfg.gqa_mode, cfg.aggregate, scale, q.shape[1], tuple(cfg.reuse_options().items()))
    w = st.get("decode")
    if w is None or st.get("decode_key") != key:  # one plan per mirror and settings (its reuse state lives there)
        w = QuestDecode(
            None if cfg.adaptive is not None else cfg.budget,
            adaptive=cfg.adaptive,
            gqa_mode=cfg.gqa_mode,
            aggregate=cfg.aggregate,
            sm_scale=scale,
            **cfg.reuse_options(),
        )
        w.plan(cache, num_q_heads=q.shape[1], max_seq_len=cache.max_pages * cfg.page_size)
        st["decode"], st["decode_key"] = w, key
    out, sel = w.run(qk, return_selected=True)
    if cfg.on_select is not None:
        cfg.on_select(layer, sel)
    return out.float()


def register() -> str:
    """Register ``"questkern"`` with transformers' attention and mask registries; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, questkern_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def attention_modules(model) -> list:
    """The attention modules of a transformers model (those with a ``layer_idx``)."""
    mods = [
        m
        for m in model.modules()
        if hasattr(m, "layer_idx") and hasattr(m, "config") and (hasattr(m, "q_proj") or hasattr(m, "qkv_proj"))
    ]
    if not mods:
        raise ValueError("model has no attention modules with a layer_idx and q_proj: not a supported decoder")
    return mods


def enable_quest(model, settings: QuestAttention | None = None) -> QuestAttention:
    """Switch ``model`` to questkern attention with ``settings`` (returned; mutate it
    or call again to change the budget between generations).

    Then generate with a :class:`QuestCache` so the K/V live once, in questkern's pages::

        cache = QuestCache(model, max_cache_len=prompt_len + max_new_tokens)
        model.generate(**inputs, past_key_values=cache, max_new_tokens=max_new_tokens)

    (``cache=cache`` on transformers releases that renamed the argument). Any other cache
    works too, through the slower paths of the module doc."""
    settings = settings or QuestAttention()
    if not isinstance(settings, QuestAttention):
        raise TypeError(f"settings must be a QuestAttention, got {type(settings).__name__}")
    register()
    model.set_attn_implementation(NAME)
    for m in attention_modules(model):
        m.questkern = settings
    settings.reset()
    return settings


def model_settings(model) -> QuestAttention:
    """The QuestAttention that ``enable_quest`` attached to ``model`` (ValueError if none)."""
    found = {id(m.questkern): m.questkern for m in attention_modules(model) if hasattr(m, "questkern")}
    if not found:
        raise ValueError("model has no questkern settings: call enable_quest(model, QuestAttention(...)) first")
    if len(found) > 1:
        raise ValueError("model's attention modules carry different QuestAttention settings; call enable_quest again")
    return next(iter(found.values()))


def __getattr__(name):  # QuestCache imports transformers: load it on first use
    if name == "QuestCache":
        from questkern.integrations.hf_cache import QuestCache

        return QuestCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def disable_quest(model, implementation: str = "sdpa") -> None:
    """Back to a stock attention implementation; removes the settings from the modules."""
    model.set_attn_implementation(implementation)
    for m in attention_modules(model):
        if hasattr(m, "questkern"):
            del m.questkern


__all__ = [
    "QuestAttention",
    "QuestCache",  # noqa: F822 (lazy: __getattr__)
    "AdaptiveBudget",
    "enable_quest",
    "disable_quest",
    "model_settings",
    "register",
    "questkern_attention",
    "NAME",
]

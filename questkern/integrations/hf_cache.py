"""``QuestCache``: a transformers ``Cache`` whose K/V live only in questkern's paged layout.

    from questkern.integrations.hf import QuestAttention, QuestCache, enable_quest
    enable_quest(model, QuestAttention(budget=2048, dense_layers=2))   # kernels on CUDA
    cache = QuestCache(model, max_cache_len=prompt_len + max_new_tokens)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=max_new_tokens)

One :class:`questkern.PagedKVCache` per layer holds the keys and values (no second copy:
``update`` returns the new tokens only, never the whole cache) with the page metadata
kept in step: rebuilt by the metadata kernel for the pages a prefill chunk touches, the
append kernel per decode token. Pages are allocated at the first update for
``max_cache_len`` tokens per sequence (plus 1/16 for kmin/kmax).

How it works with the attention function (``questkern`` in transformers' registry, set
by ``enable_quest``): ``update`` tags the keys it returns with its layer, and
:func:`questkern.integrations.hf.questkern_attention` then

* prefill (query length > 1): attends with SDPA over the chunk (after the first chunk,
  over the pages gathered for this layer plus the chunk), then writes the chunk's
  **unpadded** tokens into the pages — the padding a left-padded batch carries is read
  from the attention mask and dropped, so every sequence is stored ragged, at its own
  length;
* decode (one token): the token was appended by ``update``; layers ``< dense_layers``
  (and ``budget=None``) run the dense paged decode (``QuestDecode(None)``), the others
  ``QuestDecode(budget)`` (or the adaptive budget). The mask is not needed there.

Backends: ``"kernels"`` (Triton; the default on CUDA) or ``"reference"`` (the float32
torch references on the same pages, ``PagedKVCache(reference=True)``; the default on
CPU, where a float32 model keeps float32 pages). ``get_seq_length()`` counts the tokens
fed, padding included, as transformers' masks and positions expect.

Not supported (clear errors): beam search and anything else that reorders, repeats,
selects or crops the batch (``num_beams > 1``, assisted decoding), sliding-window layers,
and a model not switched to questkern attention. For a CUDA-graph decode loop see
:mod:`questkern.integrations.hf_generate` (``prepare_static`` / ``advance``).
"""

from __future__ import annotations

import math
import warnings

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from questkern.cache import PagedKVCache, append_decode_torch
from questkern.ops.decode.naive import paged_attention_ref
from questkern.ops.select.adaptive_naive import select_pages_adaptive_ref
from questkern.ops.select.naive import select_pages_ref

_TAG = "_questkern_layer"  # attribute update() sets on the keys it returns
_warned: set = set()


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` -> ``"kernels"`` on CUDA, ``"reference"`` elsewhere (said once per process)."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "kernels"
    if device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(
            f"questkern attention on {device.type}: the float32 torch references run the Quest steps "
            "(the Triton kernels need a GPU; backend='kernels' runs them through the interpreter, slowly)",
            stacklevel=3,
        )
    return "reference"


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _valid_keys(mask, B: int, T: int) -> torch.Tensor | None:
    """[B, T] bool: which of the chunk's T tokens are real (not padding), from an SDPA
    mask [B or 1, 1, T, kv] (bool: True = attend; float: additive); None = all of them.
    The last query row is read: in a left-padded batch it is a real token and sees every
    real key of the chunk."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise NotImplementedError(
            f"QuestCache prefill needs an SDPA-style 4-D attention mask or None, got "
            f"{type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}"
        )
    m = mask[:, 0, -1, -T:]
    if m.dtype != torch.bool:
        m = m > torch.finfo(m.dtype).min / 2
    return m.expand(B, T)


class QuestCacheLayer(CacheLayerMixin):
    """One decoder layer of a :class:`QuestCache` (a ``PagedKVCache`` plus its plans)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, layer_idx: int, settings, max_cache_len: int, batch_size: int | None):
        super().__init__()
        self.layer_idx, self.settings, self.max_cache_len, self.expected_batch = (
            layer_idx,
            settings,
            max_cache_len,
            batch_size,
        )
        self.paged: PagedKVCache | None = None
        self.backend: str | None = None
        self.seen = 0  # tokens fed so far, padding included (transformers' coordinates)
        self.static = False  # prepare_static(): decode appends by kernels only, no host bookkeeping
        self._pending = None  # a prefill chunk waiting for the attention mask
        self._plans: dict = {}
        self._active: torch.Tensor | None = None

    # ---------------------------------------------------------------- Cache layer API
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, Hkv, _, D = key_states.shape
        s = self.settings
        self.device = key_states.device
        self.backend = resolve_backend(s.backend, self.device)
        kd = key_states.dtype
        if self.backend == "reference":
            dtype = kd if kd in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        else:
            dtype = kd if kd in (torch.float16, torch.bfloat16) else s.kv_dtype
        self.paged = PagedKVCache(
            B,
            self.max_cache_len,
            Hkv,
            D,
            page_size=s.page_size,
            dtype=dtype,
            device=self.device,
            reference=self.backend == "reference",
        )
        self.batch_size = B
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Decode token: appended now. Prefill chunk: kept until the attention function
        (which has the mask) writes its unpadded tokens. Returns the new tokens, tagged."""
        if self._pending is not None:
            raise RuntimeError(
                f"QuestCache layer {self.layer_idx}: the previous chunk was never written — the model "
                "must run questkern attention (call questkern.integrations.hf.enable_quest(model) first)"
            )
        B, Hkv, T, D = key_states.shape
        if self.expected_batch is not None and B != self.expected_batch:
            raise ValueError(
                f"QuestCache was made for batch_size={self.expected_batch}, got {B} sequences "
                "(beam search / num_return_sequences > 1 are not supported)"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        pc = self.paged
        if B != pc.batch_size:
            raise ValueError(
                f"QuestCache holds {pc.batch_size} sequences, got {B} (beam search and batch changes are "
                "not supported; make a new QuestCache)"
            )
        if T == 1:
            k = key_states[:, :, 0].to(pc.dtype).contiguous()  # [B, Hkv, D]
            v = value_states[:, :, 0].to(pc.dtype).contiguous()
            if self.static:
                fn = append_decode_torch if pc.reference else _append_kernel()
                fn(k, v, pc.k_cache, pc.v_cache, pc.kmin, pc.kmax, pc.page_table, pc.seq_lens, self._active)
            else:
                self._check_room(1)
                pc.append_decode(k, v)
                self.seen += 1
        else:
            if self.static:
                raise RuntimeError("QuestCache: a prefill chunk after prepare_static() (decode steps only)")
            self._check_room(T)
            self._pending = (key_states, value_states)
            self.seen += T
        setattr(key_states, _TAG, self)
        return key_states, value_states

    def _check_room(self, T: int) -> None:
        longest = max(self.paged.lens) + T
        if longest > self.max_cache_len:
            raise ValueError(
                f"QuestCache layer {self.layer_idx}: a sequence would reach {longest} tokens, more than "
                f"max_cache_len = {self.max_cache_len}; make the cache with a larger max_cache_len"
            )

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        if self.paged is not None:
            for b in range(self.paged.batch_size):
                self.paged.release(b)
        self.seen, self._pending, self.static = 0, None, False

    def _refuse(self, what: str):
        raise NotImplementedError(
            f"QuestCache does not support {what}: the pages hold each sequence at its own length "
            "(use num_beams=1 and no assistant model, or a DynamicCache)"
        )

    def reorder_cache(self, beam_idx):
        self._refuse("beam search (reorder_cache)")

    def batch_repeat_interleave(self, repeats: int):
        self._refuse("repeating the batch (beam search, num_return_sequences)")

    def batch_select_indices(self, indices):
        self._refuse("selecting batch rows")

    def crop(self, tokens_to_remove: int):
        self._refuse("crop (assisted decoding)")

    def offload(self):
        pass

    def prefetch(self):
        pass

    # ---------------------------------------------------------------- attention
    def attend(self, module, cfg, query, key, value, attention_mask, scaling, dropout, **kwargs):
        """The attention of this layer for the tokens update() just returned (see module doc)."""
        B, Hq, T, D = query.shape
        if self._pending is not None:
            k, v = self._pending
            self._pending = None
            valid = _valid_keys(attention_mask, B, T)
            if max(self.paged.lens) == 0:
                out = _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
            else:
                out = self._chunk_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
            self._commit(k, v, valid)
            return out
        if T != 1:
            raise RuntimeError(f"QuestCache layer {self.layer_idx}: attention for {T} queries without their keys")
        q = query[:, :, 0]  # [B, Hq, D]
        if cfg.on_query is not None:
            cfg.on_query(self.layer_idx, q)
        scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
        dense = not cfg.sparse or self.layer_idx < cfg.dense_layers
        pc = self.paged
        if self.backend == "kernels":
            w = self._plan(cfg, dense, scale, Hq)
            qk = q.to(pc.dtype).contiguous()
            if dense:
                out, sel = w.run(qk), None
            else:
                out, sel = w.run(qk, return_selected=True)
        else:
            qf = q.float()
            if dense:
                sel = None
            elif cfg.adaptive is not None:
                sel = select_pages_adaptive_ref(
                    qf,
                    pc.kmin,
                    pc.kmax,
                    pc.page_table,
                    pc.seq_lens,
                    pc.page_size,
                    cfg.adaptive,
                    cfg.gqa_mode,
                    cfg.aggregate,
                    scale,
                )
            else:
                sel = select_pages_ref(
                    qf,
                    pc.kmin,
                    pc.kmax,
                    pc.page_table,
                    pc.seq_lens,
                    pc.page_size,
                    cfg.budget,
                    cfg.gqa_mode,
                    cfg.aggregate,
                )
                if cfg.reuse:
                    sel = (
                        cfg.reuse_ref(self.layer_idx, pc.batch_size, pc.num_kv_heads)
                        .step(qf, pc.page_table, pc.seq_lens, sel)
                        .to(qf.device)
                    )
            out = paged_attention_ref(qf, pc.k_cache, pc.v_cache, pc.page_table, pc.seq_lens, sel, scale)
        if sel is not None and cfg.on_select is not None:
            cfg.on_select(self.layer_idx, sel)
        return out.to(query.dtype)[:, None], None  # [B, 1, Hq, D]

    def _plan(self, cfg, dense: bool, scale: float, num_q_heads: int):
        from questkern.api import QuestDecode

        key = (
            dense,
            None if dense else cfg.budget,
            None if dense else cfg.adaptive,
            cfg.gqa_mode,
            cfg.aggregate,
            scale,
            num_q_heads,
            None if dense else tuple(cfg.reuse_options().items()),
        )
        w = self._plans.get(key)
        if w is None:
            if dense:
                w = QuestDecode(None, sm_scale=scale)
            else:
                w = QuestDecode(
                    None if cfg.adaptive is not None else cfg.budget,
                    adaptive=cfg.adaptive,
                    gqa_mode=cfg.gqa_mode,
                    aggregate=cfg.aggregate,
                    sm_scale=scale,
                    **cfg.reuse_options(),
                )
            w.plan(self.paged, num_q_heads=num_q_heads, max_seq_len=self.paged.max_pages * self.paged.page_size)
            self._plans = {key: w}  # one plan per layer: settings changed -> re-plan
        return w

    def _gather(self, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This layer's stored tokens as [B, Hkv, Lmax, D] (left-aligned, zeros after each
        sequence's length) and the [B, Lmax] validity: a transient copy of one layer."""
        pc = self.paged
        lens = pc.lens
        L = max(lens)
        n = -(-L // pc.page_size)
        phys = pc.page_table[:, :n].long()  # [B, n]
        k = (
            pc.k_cache[phys]
            .permute(0, 2, 1, 3, 4)
            .reshape(pc.batch_size, pc.num_kv_heads, n * pc.page_size, -1)[:, :, :L]
        )
        v = (
            pc.v_cache[phys]
            .permute(0, 2, 1, 3, 4)
            .reshape(pc.batch_size, pc.num_kv_heads, n * pc.page_size, -1)[:, :, :L]
        )
        valid = torch.arange(L, device=pc.device)[None] < torch.tensor(lens, device=pc.device)[:, None]
        return k.to(dtype), v.to(dtype), valid

    def _chunk_attention(self, module, query, key, value, attention_mask, scaling, dropout, **kwargs):
        """A prefill chunk after earlier ones: SDPA over the gathered pages + the chunk."""
        B, _, T, _ = query.shape
        kp, vp, past_valid = self._gather(key.dtype)
        if attention_mask is None:
            chunk = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()[None, None].expand(B, 1, T, T)
        else:
            chunk = attention_mask[:, :, :, -T:]
            if chunk.dtype != torch.bool:
                chunk = chunk > torch.finfo(chunk.dtype).min / 2
            chunk = chunk.expand(B, 1, T, T)
        mask = torch.cat([past_valid[:, None, None, :].expand(B, 1, T, past_valid.shape[1]), chunk], dim=-1)
        mask = mask | ~mask.any(-1, keepdim=True)  # a padding query that sees nothing: any finite row, never used
        return _sdpa(
            module, query, torch.cat([kp, key], 2), torch.cat([vp, value], 2), mask, scaling, dropout, **kwargs
        )

    def _commit(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Write the chunk's real tokens (k, v [B, Hkv, T, D]) after each sequence's stored ones."""
        pc = self.paged
        kt = k.transpose(1, 2)  # [B, T, Hkv, D]
        vt = v.transpose(1, 2)
        if valid is None or bool(valid.all()):
            pc.append(kt.to(pc.dtype), vt.to(pc.dtype))
            return
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # real tokens first, in order
        idx = order[:, :, None, None].expand_as(kt)
        pc.append(kt.gather(1, idx).to(pc.dtype), vt.gather(1, idx).to(pc.dtype), valid.sum(1).tolist())

    # ---------------------------------------------------------------- static decode (CUDA graphs)
    def prepare_static(self, max_len: int) -> None:
        pc = self.paged
        if pc is None:
            raise RuntimeError("QuestCache.prepare_static(): run the prefill first")
        if max_len > self.max_cache_len:
            raise ValueError(f"max_len = {max_len} exceeds max_cache_len = {self.max_cache_len}")
        pc.reserve(max_len)
        self._active = torch.ones(pc.batch_size, dtype=torch.int32, device=pc.device)
        self.static = True

    def advance(self, steps: int) -> None:
        self.seen += steps
        self.paged.sync_lens()
        self.static = False


def _append_kernel():
    from questkern.ops.metadata import append_decode

    return append_decode


class QuestCache(Cache):
    """transformers cache in questkern's paged layout (see the module doc).

    model: a transformers decoder switched to questkern attention by ``enable_quest``
        (its settings — budget, page size, dense layers, backend — are the ones used).
    max_cache_len: tokens per sequence the pages hold (prompt + new tokens, padding
        excluded); allocated at the first forward.
    batch_size: optional; when given, a forward with another batch size is refused
        before anything is written (e.g. beam search expanding the batch).
    """

    def __init__(self, model, max_cache_len: int, *, batch_size: int | None = None):
        from questkern import validate as V
        from questkern.integrations.hf import NAME, model_settings

        V.check_positive_int("max_cache_len", max_cache_len)
        if batch_size is not None:
            V.check_positive_int("batch_size", batch_size)
        config = model.config
        if getattr(config, "_attn_implementation", None) != NAME:
            raise ValueError(
                f"QuestCache needs the model on questkern attention (config._attn_implementation is "
                f"{getattr(config, '_attn_implementation', None)!r}): call enable_quest(model, ...) first"
            )
        settings = model_settings(model)
        if settings.meta != "fp32":
            raise ValueError(f"QuestCache keeps exact page metadata (meta='fp32'), got meta={settings.meta!r}")
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        if getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True):
            types = ["sliding_attention"] * len(types)
        if any(t != "full_attention" for t in types):
            raise ValueError(f"QuestCache supports full-attention layers only, the model has {sorted(set(types))}")
        self.settings = settings
        super().__init__(layers=[QuestCacheLayer(i, settings, max_cache_len, batch_size) for i in range(len(types))])

    @property
    def pages(self) -> list[PagedKVCache | None]:
        """Each layer's PagedKVCache (None before the first forward)."""
        return [layer.paged for layer in self.layers]

    @property
    def lens(self) -> list[int]:
        """Stored (unpadded) tokens per sequence."""
        pc = self.layers[0].paged
        return pc.lens if pc is not None else []

    def kv_bytes(self) -> int:
        """Bytes this cache holds on its device (K/V pages, metadata, page tables)."""
        total = 0
        for pc in self.pages:
            if pc is not None:
                total += sum(
                    t.numel() * t.element_size()
                    for t in (pc.k_cache, pc.v_cache, pc.kmin, pc.kmax, pc.page_table, pc.seq_lens)
                )
        return total

    def prepare_static(self, max_len: int) -> None:
        """For a CUDA-graph decode loop: map every page up to ``max_len`` tokens per
        sequence now; afterwards decode appends run on the device only (no host
        bookkeeping, no allocation) until :meth:`advance`."""
        for layer in self.layers:
            layer.prepare_static(max_len)

    def advance(self, steps: int) -> None:
        """After ``steps`` static decode steps: bring the host lengths back (one sync)."""
        for layer in self.layers:
            layer.advance(steps)


def cache_layer(key) -> QuestCacheLayer | None:
    """The QuestCache layer that returned these keys (None for any other cache)."""
    return getattr(key, _TAG, None)


__all__ = ["QuestCache", "QuestCacheLayer", "cache_layer", "resolve_backend"]

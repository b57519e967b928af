"""Model-level decode benchmark: one token step of a decoder-shaped model, whole, under one
CUDA graph (``questkern bench --model``).

Random bf16/fp16 weights made on the device; every layer has its own K/V cache and page
metadata, so nothing a layer reads is warm in L2 from the layer before. A token step is
``embedding row -> layers x (RMSNorm, QKV projection, RoPE, K/V append, attention,
output projection, RMSNorm, gated MLP) -> RMSNorm -> lm_head -> argmax``. The attention
variants, timed in one run at each (batch, context):

* ``sdpa``  K/V contiguous per layer ``[B, Hkv, T, D]`` (the token written in place at
  position T-1), ``scaled_dot_product_attention`` over them: the baseline.
* ``dense`` questkern's paged cache, in-house dense decode over every page.
* ``quest`` questkern's paged cache, ``QuestDecode(budget)`` past the first
  ``dense_layers`` layers (those run the in-house dense decode).
* ``none``  no attention and no K/V append (the attention output is the query): the
  ceiling, what attention that cost nothing would give.

Each replay decodes at the same position (the sequence lengths are reset inside the graph
before the append), so a step can be replayed for timing without the caches growing.
``bound`` = the ``none`` step plus every layer's attention bytes (all page metadata and the
selected K/V of Quest layers, the whole K/V of dense layers) at the copy bandwidth of the
same run; ``gain_captured`` = (1 - 1/speedup) / (1 - 1/bound_speedup).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from questkern.api import QuestDecode
from questkern.bench.models import ModelShape
from questkern._timing import time_fn
from questkern.cache import PagedKVCache
from questkern.ops.metadata import append_decode

ATTENTIONS = ("sdpa", "none", "dense", "quest", "quest_classic")
# plus Quest with selection reuse: "quest_every<N>" (QuestDecode(reselect_every=N)) and
# "quest_drift<t>" (drift_threshold=t, no age limit), timed after the others


def quest_options(attention: str) -> dict | None:
    """QuestDecode keywords of a Quest attention name (None for sdpa / none / dense)."""
    if attention in ("quest", "quest_classic"):
        return {"path": "classic"} if attention == "quest_classic" else {}
    for prefix, key in (("quest_every", "reselect_every"), ("quest_drift", "drift_threshold")):
        if attention.startswith(prefix):
            try:
                v = (int if key == "reselect_every" else float)(attention[len(prefix) :])
            except ValueError:
                break
            return {key: v} if key == "reselect_every" else {key: v, "reselect_every": None}
    return None


def check_attention(attention: str) -> None:
    if attention not in ATTENTIONS and quest_options(attention) is None:
        raise ValueError(f"attention must be one of {ATTENTIONS}, quest_every<N> or quest_drift<t>, got {attention!r}")


@dataclass(frozen=True)
class ModelCase:
    shape: ModelShape
    batch: int
    seq_len: int  # context length of the step, the new token included
    dtype: torch.dtype = torch.bfloat16
    page_size: int = 16
    budget: int = 2048
    dense_layers: int = 2
    gqa_mode: str = "shared"
    path: str = "auto"
    meta_dtype: torch.dtype | None = None
    sub_page_size: int | None = None  # hierarchical pages: key min/max per sub-page of this many tokens

    def quest_layers(self) -> int:
        return max(0, self.shape.layers - self.dense_layers)


class _Weights:
    """One token step's weights (random, on the device)."""

    def __init__(self, s: ModelShape, dtype, device, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)

        def w(*shape, scale=0.02):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

        d, hd = s.hidden, s.head_dim
        self.embed_row = w(1, d, scale=1.0)  # one embedding row (a step reads one row per token)
        self.layers = []
        for _ in range(s.layers):
            self.layers.append(
                dict(
                    norm1=torch.ones(d, dtype=dtype, device=device),
                    qkv=w(d, (s.q_heads + 2 * s.kv_heads) * hd),
                    o=w(s.q_heads * hd, d),
                    norm2=torch.ones(d, dtype=dtype, device=device),
                    gate_up=w(d, 2 * s.mlp),
                    down=w(s.mlp, d),
                )
            )
        self.norm = torch.ones(d, dtype=dtype, device=device)
        self.lm_head = w(d, s.vocab)


def _rms_norm(x, w, eps: float = 1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def _rope_tables(s: ModelShape, position: int, device, dtype):
    inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, device=device, dtype=torch.float32) / s.head_dim))
    ang = position * inv
    cos = torch.cat([ang.cos(), ang.cos()]).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()]).to(dtype)
    return cos, sin  # [D]


def _rope(x, cos, sin):  # x [B, H, D]
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class ModelStep:
    """The token step of one attention variant; ``step()`` is capturable in a CUDA graph.

    ``caches``: the paged caches of the ``dense``/``quest*`` variants (one per layer,
    :func:`paged_caches`), shared between those variants; ``path`` overrides the case's
    Quest path (``quest_classic`` is ``quest`` with ``path="classic"``)."""

    def __init__(self, case: ModelCase, attention: str, weights: _Weights, device, caches: list | None = None):
        check_attention(attention)
        s, B, T = case.shape, case.batch, case.seq_len
        self.case, self.attention, self.w, self.device = case, attention, weights, device
        self.x = weights.embed_row.expand(B, -1).contiguous()  # [B, hidden] the step's input
        self.cos, self.sin = _rope_tables(s, T - 1, device, case.dtype)
        self.token = torch.zeros(B, dtype=torch.long, device=device)
        self.kv: list = []
        self.decoders: list = []
        if attention == "sdpa":
            g = torch.Generator(device=device).manual_seed(1)
            for _ in range(s.layers):
                shape = (B, s.kv_heads, T, s.head_dim)
                self.kv.append(
                    (
                        torch.randn(shape, generator=g, device=device).to(case.dtype),
                        torch.randn(shape, generator=g, device=device).to(case.dtype),
                    )
                )
        elif attention != "none":
            if caches is None:
                raise ValueError(f"attention {attention!r} needs the paged caches (paged_caches(case, device))")
            self.base_lens = torch.full((B,), T - 1, dtype=torch.int32, device=device)
            self.kv = caches
            opts = {"path": case.path, **(quest_options(attention) or {})}
            for layer, cache in enumerate(caches):
                sparse = attention != "dense" and layer >= case.dense_layers
                dec = QuestDecode(case.budget, gqa_mode=case.gqa_mode, **opts) if sparse else QuestDecode(None)
                dec.plan(cache, num_q_heads=s.q_heads)
                self.decoders.append(dec)

    def _attend(self, layer: int, q, k, v):  # q [B, Hq, D], k/v [B, Hkv, D] -> [B, Hq, D]
        s = self.case.shape
        if self.attention == "none":
            return q
        if self.attention == "sdpa":
            kc, vc = self.kv[layer]
            T = kc.shape[2]
            kc[:, :, T - 1].copy_(k)
            vc[:, :, T - 1].copy_(v)
            o = F.scaled_dot_product_attention(q[:, :, None], kc, vc, enable_gqa=s.q_heads != s.kv_heads)
            return o[:, :, 0]
        cache = self.kv[layer]
        cache.seq_lens.copy_(self.base_lens)  # decode at the same position every replay
        append_decode(k, v, cache.k_cache, cache.v_cache, cache.kmin, cache.kmax, cache.page_table, cache.seq_lens)
        return self.decoders[layer].run(q)

    def step(self) -> torch.Tensor:
        s, B = self.case.shape, self.case.batch
        x = self.x
        for layer, lw in enumerate(self.w.layers):
            h = _rms_norm(x, lw["norm1"])
            qkv = h @ lw["qkv"]
            q, k, v = qkv.split([s.q_heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1)
            q = _rope(q.view(B, s.q_heads, s.head_dim), self.cos, self.sin).contiguous()
            k = _rope(k.view(B, s.kv_heads, s.head_dim), self.cos, self.sin).contiguous()
            v = v.reshape(B, s.kv_heads, s.head_dim).contiguous()
            o = self._attend(layer, q, k, v)
            x = x + o.reshape(B, -1) @ lw["o"]
            h = _rms_norm(x, lw["norm2"])
            gate, up = (h @ lw["gate_up"]).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ lw["down"]
        logits = _rms_norm(x, self.w.norm) @ self.w.lm_head
        self.token.copy_(logits.argmax(-1))
        return self.token

    def attention_bytes(self) -> int:
        """Fewest bytes attention must move per step, all layers (see the module doc)."""
        c, s = self.case, self.case.shape
        elt = c.dtype.itemsize
        kv_layer = 2 * c.batch * c.seq_len * s.kv_heads * s.head_dim * elt
        if self.attention == "none":
            return 0
        if self.attention in ("sdpa", "dense"):
            return s.layers * kv_layer
        n_pages = -(-c.seq_len // c.page_size)
        k_pages = min(-(-c.budget // c.page_size), n_pages)
        meta_elt = (c.meta_dtype or c.dtype).itemsize
        rows = s.q_heads if (c.gqa_mode == "per_head" and s.group > 1) else s.kv_heads
        subs = c.page_size // c.sub_page_size if c.sub_page_size else 1  # metadata rows per page
        meta = 2 * c.batch * n_pages * subs * s.kv_heads * s.head_dim * meta_elt
        sel = 2 * c.batch * k_pages * c.page_size * rows * s.head_dim * elt
        return c.dense_layers * kv_layer + c.quest_layers() * (meta + sel)


def paged_caches(case: ModelCase, device, seed: int = 1) -> list[PagedKVCache]:
    """One filled paged cache per layer (see :func:`_filled_cache`)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [_filled_cache(case, case.seq_len, g, device) for _ in range(case.shape.layers)]


def _filled_cache(case: ModelCase, T: int, g, device) -> PagedKVCache:
    """A layer's paged cache holding T - 1 random tokens per sequence (the step appends the
    T-th), with the page of position T - 1 already mapped."""
    s, B = case.shape, case.batch
    cache = PagedKVCache(
        B,
        T,
        s.kv_heads,
        s.head_dim,
        page_size=case.page_size,
        dtype=case.dtype,
        device=device,
        shuffle=True,
        meta_dtype=case.meta_dtype,
        sub_page_size=case.sub_page_size,
    )
    chunk = 8192
    for start in range(0, T - 1, chunk):
        n = min(chunk, T - 1 - start)
        shape = (B, n, s.kv_heads, s.head_dim)
        cache.append(
            torch.randn(shape, generator=g, device=device).to(case.dtype),
            torch.randn(shape, generator=g, device=device).to(case.dtype),
        )
    # map the page of position T - 1 (append_decode reserves it), then rewind the length
    one = torch.zeros(B, s.kv_heads, s.head_dim, dtype=case.dtype, device=device)
    cache.append_decode(one, one)
    cache.seq_lens.fill_(T - 1)
    return cache


def case_memory(case: ModelCase) -> dict[str, int]:
    """Bytes a case holds at once: the weights, and the largest attention variant's caches
    (variants are built one at a time)."""
    s = case.shape
    elt = case.dtype.itemsize
    kv = s.kv_bytes(case.batch, case.seq_len, elt)
    n_pages = -(-case.seq_len // case.page_size)
    meta = 2 * s.layers * case.batch * n_pages * s.kv_heads * s.head_dim * (case.meta_dtype or case.dtype).itemsize
    return {"weights": s.weight_bytes(elt), "kv": kv, "metadata": meta, "total": s.weight_bytes(elt) + kv + meta}


def check_fits(case: ModelCase, device) -> None:
    """Refuse a case that would not fit in the device's free memory, naming the sizes."""
    if device.type != "cuda":
        return
    need = case_memory(case)
    free, total = torch.cuda.mem_get_info(device)
    if need["total"] * 1.05 + (2 << 30) > free:
        gib = {k: v / 2**30 for k, v in need.items()}
        raise MemoryError(
            f"{case.shape.name} at batch {case.batch}, {case.seq_len} tokens needs {gib['total']:.1f} GiB "
            f"(weights {gib['weights']:.1f} GiB + K/V {gib['kv']:.1f} GiB + metadata {gib['metadata']:.1f} GiB, "
            f"plus about 5% and 2 GiB of working memory); the GPU has {free / 2**30:.1f} GiB free of "
            f"{total / 2**30:.1f} GiB"
        )


def run_model_case(case: ModelCase, device, *, rep_ms: int = 300, attentions=ATTENTIONS, log=print) -> dict:
    """Time the attention variants of ``case`` in this run (contiguous variants first, then
    the paged ones on shared caches). Returns {attention: (us, attention bytes)}."""
    check_fits(case, device)
    weights = _Weights(case.shape, case.dtype, device)
    out = {}
    graph = device.type == "cuda"
    caches = None
    for a in attentions:
        check_attention(a)
    order = [a for a in ATTENTIONS if a in attentions] + [a for a in attentions if a not in ATTENTIONS]
    for att in order:
        if (att == "dense" or quest_options(att) is not None) and caches is None:
            gc.collect()
            if graph:
                torch.cuda.empty_cache()
            caches = paged_caches(case, device)
        m = ModelStep(case, att, weights, device, caches)
        us = time_fn(m.step, graph=graph, rep_ms=rep_ms)
        out[att] = (us, m.attention_bytes())
        log(f"    {att:<13} {us / 1e3:8.3f} ms/token")
        del m
    del caches
    gc.collect()
    if graph:
        torch.cuda.empty_cache()
    return out


def summarize(case: ModelCase, times: dict, copy_gbps: float) -> list[dict]:
    """CSV rows: one per attention variant, with speedups, the ceiling, the bound and the
    share of the possible gain captured."""
    sdpa = times["sdpa"][0] if "sdpa" in times else float("nan")
    none = times["none"][0] if "none" in times else float("nan")
    rows = []
    for att, (us, nbytes) in times.items():
        speed = sdpa / us
        bound_us = none + nbytes / (copy_gbps * 1e3) if att != "none" else none
        bound = sdpa / bound_us
        gain = (1 - 1 / speed) / (1 - 1 / bound) if bound > 1 and math.isfinite(bound) else float("nan")
        rows.append(
            dict(
                model=case.shape.name,
                layers=case.shape.layers,
                batch=case.batch,
                seq_len=case.seq_len,
                attention=att,
                budget=case.budget if att.startswith("quest") else "",
                dense_layers=case.dense_layers if att.startswith("quest") else "",
                page_size=case.page_size,
                sub_page_size=case.sub_page_size or "",
                gqa_mode=case.gqa_mode if att.startswith("quest") else "",
                ms_per_token=us / 1e3,
                tokens_per_s=case.batch / (us * 1e-6),
                speedup_vs_sdpa=speed,
                ceiling_speedup=sdpa / none,
                attention_bytes=nbytes,
                bound_us=bound_us,
                bound_speedup=bound,
                gain_captured=gain,
            )
        )
    return rows


__all__ = [
    "ModelCase",
    "ModelStep",
    "ATTENTIONS",
    "quest_options",
    "check_attention",
    "paged_caches",
    "run_model_case",
    "summarize",
    "case_memory",
    "check_fits",
]

"""A small generation loop whose decode step can be captured in one CUDA graph.

    from questkern.integrations.hf_generate import generate
    enable_quest(model, QuestAttention(budget=2048))
    res = generate(model, prompts, 64, cache="quest", mode="graph")   # prompts: lists of token ids
    res.tokens, res.tokens_per_s

``generate(model, prompts, max_new_tokens, cache=..., mode=...)``:

* ``cache="quest"``: a :class:`~questkern.integrations.hf_cache.QuestCache` (the model must
  be on questkern attention); ``cache="sdpa"``: transformers' own caches with SDPA
  (``DynamicCache`` eager, ``StaticCache`` in the static modes) — the baseline.
* ``mode="eager"``: one ordinary forward per token (what ``model.generate`` does).
  ``"static"``: the step with static shapes — input token, positions and (for SDPA) the
  mask live in fixed buffers updated in place, the QuestCache pages are mapped ahead
  (``prepare_static``) and its appends run on the device only, nothing allocates or syncs;
  ``"graph"``: the static step captured once in a CUDA graph and replayed (CUDA only).
  ``"static"`` runs the very code the graph captures, so it is what the CPU tests check.

Prompts of different lengths are left-padded for the prefill; QuestCache stores them
unpadded and the positions are each sequence's own. Greedy by default; ``temperature > 0``
samples (Gumbel-max, optionally over the ``top_k`` best), in the graph as well. The loop
always runs ``max_new_tokens`` steps (no early stop: it would need a sync per step);
``GenerateResult.trimmed(eos)`` cuts the returned tokens at an end token. Python callbacks
(``QuestAttention.on_select`` / ``on_query``) run at every eager or static step; under
``mode="graph"`` only in the first step and the capture, never in replays. Timing: ``decode_s`` covers the
steps after the first (which compiles kernels, plans, and for ``graph`` captures).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch

CACHES = ("quest", "sdpa")
MODES = ("eager", "static", "graph")


@dataclass
class GenerateResult:
    tokens: torch.Tensor  # [B, max_new_tokens] int64 (cpu)
    prompt_lens: list[int]
    prefill_s: float
    decode_s: float  # the timed steps (all but the first decode step)
    timed_steps: int
    cache: str
    mode: str
    peak_bytes: int | None = None  # torch.cuda.max_memory_allocated over the run (CUDA)

    @property
    def tokens_per_s(self) -> float:
        """Decode throughput: sequences x timed steps / their time (prefill excluded)."""
        return self.tokens.shape[0] * self.timed_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def trimmed(self, eos_token_id: int | None) -> list[list[int]]:
        """Each sequence's tokens up to (and including) its first ``eos_token_id``."""
        out = []
        for row in self.tokens.tolist():
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id) + 1]
            out.append(row)
        return out


def cache_kwarg(model) -> str:
    """The forward's name for the cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def left_pad(prompts, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """prompts (lists of ids) -> input_ids [B, T], attention_mask [B, T] (left padding), lengths."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token lists")
    lens = [len(p) for p in prompts]
    T = max(lens)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[b, T - len(p) :] = 1
    return ids.to(device), mask.to(device), lens


class _Sampler:
    """Greedy, or Gumbel-max sampling at ``temperature`` over the ``top_k`` best (graph safe)."""

    def __init__(self, temperature: float, top_k: int | None):
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        self.temperature, self.top_k = float(temperature), top_k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # [B, V] -> [B]
        if self.temperature == 0:
            return logits.argmax(-1)
        x = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < x.shape[-1]:
            kth = x.topk(self.top_k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        u = torch.rand_like(x).clamp_(min=1e-20)
        return (x - torch.log(-torch.log(u))).argmax(-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(
    model,
    prompts,
    max_new_tokens: int,
    *,
    cache: str = "quest",
    mode: str = "eager",
    temperature: float = 0.0,
    top_k: int | None = None,
    pad_token_id: int = 0,
    max_cache_len: int | None = None,
) -> GenerateResult:
    """Generate ``max_new_tokens`` per prompt (see module doc). The model must be on
    questkern attention (``enable_quest``) for ``cache="quest"`` and on ``"sdpa"`` for
    ``cache="sdpa"``."""
    from transformers import DynamicCache, StaticCache

    from questkern.integrations.hf import NAME
    from questkern.integrations.hf_cache import QuestCache

    if cache not in CACHES:
        raise ValueError(f"cache must be one of {list(CACHES)}, got {cache!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    sample = _Sampler(temperature, top_k)
    device = next(model.parameters()).device
    if mode == "graph" and device.type != "cuda":
        raise ValueError(
            f"mode='graph' needs the model on a CUDA device, it is on {device}; use mode='static' "
            "(the same step, run eagerly)"
        )
    impl = model.config._attn_implementation
    want = NAME if cache == "quest" else "sdpa"
    if impl != want:
        raise ValueError(
            f"cache={cache!r} needs the model on {want!r} attention, it is on {impl!r}"
            + (" (call enable_quest(model, ...))" if cache == "quest" else " (disable_quest(model))")
        )
    ids, mask, lens = left_pad(prompts, pad_token_id, device)
    B, T = ids.shape
    cap = max_cache_len or (T + max_new_tokens)
    if cap < T + max_new_tokens:
        raise ValueError(f"max_cache_len = {cap} < padded prompt ({T}) + max_new_tokens ({max_new_tokens})")
    ckw = cache_kwarg(model)
    static = mode in ("static", "graph")
    if cache == "quest":
        kv = QuestCache(model, max_cache_len=max(lens) + max_new_tokens, batch_size=B)
    else:
        kv = StaticCache(config=model.config, max_cache_len=cap) if static else DynamicCache(config=model.config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    _sync(device)
    t0 = time.perf_counter()
    pos0 = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos0, use_cache=True, logits_to_keep=1, **{ckw: kv})
    first = sample(out.logits[:, -1])
    del out
    _sync(device)
    prefill_s = time.perf_counter() - t0

    tokens = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    tokens[:, 0] = first
    tok = first[:, None].clone()  # [B, 1] the token fed at the next step
    pos = torch.tensor(lens, dtype=torch.long, device=device)[:, None]  # [B, 1] its position (real tokens before it)
    steps = max_new_tokens - 1
    if static:
        if cache == "quest":
            kv.prepare_static(max(lens) + max_new_tokens)
            attn = torch.ones(B, 1, 1, 1, dtype=torch.bool, device=device)  # 4-D: no mask is built (decode ignores it)
            col = None
        else:
            attn = torch.zeros(B, 1, 1, cap, dtype=torch.bool, device=device)
            attn[:, 0, 0, :T] = mask.bool()
            col = torch.tensor([T], dtype=torch.long, device=device)  # static-cache slot of the token fed

        def step():
            if col is not None:
                attn.index_fill_(3, col, True)
            o = model(input_ids=tok, position_ids=pos, attention_mask=attn, use_cache=True, **{ckw: kv})
            tok.copy_(sample(o.logits[:, -1])[:, None])
            pos.add_(1)
            if col is not None:
                col.add_(1)
    else:
        am = [mask]

        def step():
            am.append(torch.ones(B, 1, dtype=mask.dtype, device=device))
            o = model(input_ids=tok, position_ids=pos, attention_mask=torch.cat(am, 1), use_cache=True, **{ckw: kv})
            tok.copy_(sample(o.logits[:, -1])[:, None])
            pos.add_(1)

    decode_s, timed = 0.0, 0
    if steps > 0:
        if mode == "graph":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step()  # a real step: compiles the kernels, plans, warms the allocator
            torch.cuda.current_stream(device).wait_stream(side)
            tokens[:, 1] = tok[:, 0]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()

            def run():
                graph.replay()
        else:
            step()
            tokens[:, 1] = tok[:, 0]
            run = step
        _sync(device)
        t1 = time.perf_counter()
        for i in range(2, max_new_tokens):
            run()
            tokens[:, i] = tok[:, 0]
        _sync(device)
        decode_s, timed = time.perf_counter() - t1, steps - 1
        if static and cache == "quest":
            kv.advance(steps)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return GenerateResult(tokens.cpu(), lens, prefill_s, decode_s, timed, cache, mode, peak)


__all__ = ["generate", "GenerateResult", "cache_kwarg", "left_pad", "CACHES", "MODES"]

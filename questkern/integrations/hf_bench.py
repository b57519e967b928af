"""What ``questkern generate`` runs: load (or randomly initialise) a transformers model,
generate with SDPA, the in-house dense paged decode and Quest in one run, time each, and
check the peak memory of ``generate()`` with QuestCache against transformers' DynamicCache.

Attentions: ``sdpa`` (transformers' caches + SDPA: the baseline), ``paged`` (QuestCache,
dense paged decode on every layer: ``QuestDecode(None)``), ``quest`` (QuestCache, Quest past
the first ``dense_layers`` layers). Modes: see :mod:`questkern.integrations.hf_generate`.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch

ATTENTIONS = ("sdpa", "paged", "quest")
# metadata of K/V: kmin + kmax per page and KV head are 2 x D values against 2 x page x D of K/V
MEMORY_SLACK = 0.05


@dataclass
class Settings:
    budget: int = 2048
    page_size: int = 16
    dense_layers: int = 2
    gqa_mode: str = "shared"
    temperature: float = 0.0
    top_k: int | None = None


def load_local(path: str | Path, dtype: torch.dtype | None, device: str):
    """(model, tokenizer) from a local model directory or a ``.gguf`` file, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        kw = {"gguf_file": path.name}
        where = str(path.parent)
    elif path.is_dir():
        kw = {}
        where = str(path)
    else:
        raise FileNotFoundError(f"--model must be a local model directory or a .gguf file, got {str(path)!r}")
    tok = AutoTokenizer.from_pretrained(where, local_files_only=True, **kw)
    model = AutoModelForCausalLM.from_pretrained(
        where, local_files_only=True, dtype=dtype or "auto", attn_implementation="sdpa", **kw
    )
    return model.to(device).eval(), tok


def random_llama(shape, dtype: torch.dtype, device: str, max_positions: int):
    """A Llama with ``shape`` (questkern.bench.models.ModelShape) and random weights, made
    on ``device`` in ``dtype`` directly (no float32 copy of the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape.tp != 1:
        raise ValueError(
            f"--random-config {shape.name}: a tensor-parallel shard is not a whole model; use a TP1 preset"
        )
    cfg = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.q_heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def use_attention(model, attention: str, s: Settings):
    """Switch ``model`` to the attention of a row; returns the cache name for generate()."""
    from questkern.integrations.hf import QuestAttention, disable_quest, enable_quest

    if attention == "sdpa":
        if model.config._attn_implementation != "sdpa":
            disable_quest(model)
        return "sdpa"
    budget = s.budget if attention == "quest" else None
    enable_quest(
        model, QuestAttention(budget=budget, page_size=s.page_size, dense_layers=s.dense_layers, gqa_mode=s.gqa_mode)
    )
    return "quest"


def run_rows(model, prompts: list[list[int]], new_tokens: int, attentions, modes, s: Settings, log=print) -> list[dict]:
    """One row per (attention, mode): tokens, timings, peak memory, or the error it hit."""
    from questkern.integrations.hf_generate import generate

    rows = []
    base = None
    for attention in attentions:
        for mode in modes:
            row = {
                "attention": attention,
                "mode": mode,
                "batch": len(prompts),
                "prompt_tokens": max(map(len, prompts)),
                "new_tokens": new_tokens,
                "budget": s.budget if attention == "quest" else "",
                "page_size": s.page_size if attention != "sdpa" else "",
                "dense_layers": s.dense_layers if attention == "quest" else "",
            }
            try:
                cache = use_attention(model, attention, s)
                _free()
                r = generate(
                    model, prompts, new_tokens, cache=cache, mode=mode, temperature=s.temperature, top_k=s.top_k
                )
                row.update(
                    prefill_s=r.prefill_s,
                    decode_s=r.decode_s,
                    timed_steps=r.timed_steps,
                    tokens_per_s=r.tokens_per_s,
                    ms_per_step=1e3 * r.decode_s / max(1, r.timed_steps),
                    peak_gib=(r.peak_bytes or 0) / 2**30 if r.peak_bytes is not None else "",
                    tokens=r.tokens,
                    error="",
                )
                if attention == "sdpa" and mode == modes[0]:
                    base = r.tokens
                log(
                    f"  {attention:5s} {mode:6s}: {r.tokens_per_s:9.1f} tokens/s ({row['ms_per_step']:.2f} ms/step, "
                    f"prefill {r.prefill_s:.2f} s)"
                )
            except Exception as e:  # keep the other rows: a failed capture must not lose the run
                row.update(error=f"{type(e).__name__}: {e}".replace("\n", " ")[:300], tokens=None)
                log(f"  {attention:5s} {mode:6s}: FAILED {row['error']}")
            rows.append(row)
            _free()
    for row in rows:  # speedups against SDPA in the same mode; token agreement with the first SDPA row
        ref = next((r for r in rows if r["attention"] == "sdpa" and r["mode"] == row["mode"] and not r["error"]), None)
        ok = not row["error"] and ref is not None
        row["speedup_vs_sdpa"] = row["tokens_per_s"] / ref["tokens_per_s"] if ok else ""
        t = row.pop("tokens")
        row["same_tokens_as_sdpa"] = float((t == base).float().mean()) if (t is not None and base is not None) else ""
        row["_tokens"] = t
    return rows


def memory_check(model, prompts: list[list[int]], new_tokens: int, s: Settings, log=print) -> dict:
    """Peak memory above the model (``torch.cuda.max_memory_allocated`` minus what was
    allocated before) of ``model.generate()`` with transformers' DynamicCache and with
    QuestCache; ok when QuestCache's is <= DynamicCache's x (1 + 1/16 + 5%)."""
    from transformers import DynamicCache

    from questkern.integrations.hf_cache import QuestCache
    from questkern.integrations.hf_generate import cache_kwarg, left_pad

    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError("the memory check measures CUDA memory: run it with the model on a GPU")
    ids, mask, lens = left_pad(prompts, 0, device)
    out = {}
    for name in ("dynamic", "quest"):
        use_attention(model, "sdpa" if name == "dynamic" else "quest", s)
        _free()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        cache = (
            DynamicCache(config=model.config)
            if name == "dynamic"
            else QuestCache(model, max_cache_len=max(lens) + new_tokens, batch_size=len(prompts))
        )
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                **{cache_kwarg(model): cache},
            )
        torch.cuda.synchronize(device)
        out[f"{name}_peak_gib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**30
        out[f"{name}_total_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if name == "quest":
            out["quest_cache_gib"] = cache.kv_bytes() / 2**30
        del cache
        _free()
    out["limit_gib"] = out["dynamic_peak_gib"] * (1 + 1 / 16 + MEMORY_SLACK)
    out["ok"] = out["quest_peak_gib"] <= out["limit_gib"]
    log(
        f"  memory (peak above the weights): DynamicCache {out['dynamic_peak_gib']:.2f} GiB, QuestCache "
        f"{out['quest_peak_gib']:.2f} GiB (its pages {out['quest_cache_gib']:.2f} GiB); limit {out['limit_gib']:.2f} GiB "
        f"-> {'ok' if out['ok'] else 'OVER'}"
    )
    return out


__all__ = ["ATTENTIONS", "Settings", "load_local", "random_llama", "run_rows", "memory_check", "use_attention"]

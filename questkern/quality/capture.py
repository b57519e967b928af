"""Run prompts through a transformers model: dense traces and end-to-end passkey accuracy.

For each prompt the prefill (all but the last ``tail`` tokens) runs once, densely.
Then, from that same prefilled cache (cropped back after each run):

1. a dense decode run feeds the tail and generates greedily, recording every layer's
   query at every step (the trace; keys/values are read from the cache at the end);
2. for each Quest configuration, the same decode run with questkern attention on
   every layer but the first ``dense_layers`` (via :mod:`questkern.integrations.hf`),
   and the generated answer is checked against the passkey: accuracy from a real
   generation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from questkern.integrations.hf import QuestAttention, enable_quest
from questkern.ops.select.adaptive_naive import AdaptiveBudget
from questkern.quality.prompts import Prompt
from questkern.quality.traces import Trace


@dataclass(frozen=True)
class E2EConfig:
    """One end-to-end decode configuration (``policy`` "dense", "fixed" or "adaptive")."""

    policy: str
    page_size: int = 16
    budget: int | None = None
    gqa_mode: str = "shared"
    aggregate: str = "sum"
    threshold: float | None = None
    min_budget: int | None = None
    max_budget: int | None = None
    temperature: float | None = None

    def settings(self, dense_layers: int) -> QuestAttention:
        if self.policy == "dense":
            return QuestAttention(budget=None, page_size=self.page_size, dense_layers=dense_layers)
        adaptive = None
        if self.policy == "adaptive":
            adaptive = AdaptiveBudget(self.threshold, self.min_budget, self.max_budget, self.temperature or 1.0)
        return QuestAttention(
            budget=self.budget,
            page_size=self.page_size,
            dense_layers=dense_layers,
            gqa_mode=self.gqa_mode,
            aggregate=self.aggregate,
            adaptive=adaptive,
        )

    def label(self) -> str:
        if self.policy == "dense":
            return "dense"
        if self.policy == "adaptive":
            temp = f" T{self.temperature:g}" if self.temperature not in (None, 1.0) else ""
            return f"adaptive p{self.page_size} t{self.threshold}{temp} [{self.min_budget},{self.max_budget}] {self.gqa_mode}"
        agg = f"-{self.aggregate}" if self.gqa_mode == "shared" else ""
        return f"fixed p{self.page_size} b{self.budget} {self.gqa_mode}{agg}"


def default_e2e_configs() -> list[E2EConfig]:
    """Dense plus a budget sweep at page 16, one budget at other page sizes, GQA and adaptive variants."""
    cfgs = [E2EConfig("dense")]
    cfgs += [E2EConfig("fixed", 16, b) for b in (32, 64, 128, 256, 512, 1024)]
    cfgs += [E2EConfig("fixed", p, 128) for p in (8, 32, 64)]
    cfgs += [E2EConfig("fixed", 16, 64, "per_head"), E2EConfig("fixed", 16, 64, "shared", "max")]
    cfgs += [E2EConfig("adaptive", 16, None, threshold=t, min_budget=32, max_budget=1024) for t in (0.9, 0.99)]
    cfgs += [E2EConfig("adaptive", 16, None, threshold=0.9, min_budget=32, max_budget=2048, temperature=4.0)]
    return cfgs


@torch.no_grad()
def prefill(model, ids: list[int]):
    """Dense prefill; returns the transformers cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
    return cache


@torch.no_grad()
def decode(model, cache, prefix_len: int, feed: list[int], gen_tokens: int) -> list[int]:
    """Feed ``feed`` one token per step, then generate ``gen_tokens`` greedily (the last
    generated token is not fed). Crops the cache back to ``prefix_len`` first."""
    extra = cache.get_seq_length() - prefix_len
    if extra < 0:
        raise ValueError(f"cache holds {cache.get_seq_length()} tokens, fewer than prefix_len={prefix_len}")
    if extra:
        cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
    pos = prefix_len
    out: list[int] = []
    tokens = list(feed)
    i = 0
    while True:
        tok = tokens[i] if i < len(tokens) else out[-1]
        logits = model(
            input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos]]), cache=cache, use_cache=True
        ).logits[0, -1]
        pos += 1
        i += 1
        if i >= len(tokens):
            if gen_tokens == 0:
                break
            out.append(int(torch.argmax(logits)))
            if len(out) >= gen_tokens:
                break
    return out


def passkey_answer(text: str) -> str:
    """The first run of digits in the generated text ('' if none)."""
    m = re.search(r"\d+", text)
    return m.group(0) if m else ""


def run_prompt(model, tokenizer, prompt: Prompt, e2e: list[E2EConfig], dense_layers: int = 2, log=print):
    """Returns (trace, e2e rows). The first config run is always the dense trace capture."""
    t0 = time.time()
    ids = prompt.ids
    S0 = len(ids) - prompt.tail
    threads = torch.get_num_threads()
    cache = prefill(model, ids[:S0])
    t_prefill = time.time() - t0
    # decode steps are many small ops: one thread avoids OpenMP spin-waits on a shared CPU
    torch.set_num_threads(1)
    try:
        return _decode_runs(model, tokenizer, prompt, e2e, dense_layers, log, cache, S0, t0, t_prefill)
    finally:
        torch.set_num_threads(threads)


def _decode_runs(model, tokenizer, prompt, e2e, dense_layers, log, cache, S0, t0, t_prefill):
    ids = prompt.ids
    cfg_model = model.config
    L = cfg_model.num_hidden_layers

    steps: dict[int, list[torch.Tensor]] = {l: [] for l in range(L)}

    def on_query(layer, q):  # q [1, Hq, D]
        steps[layer].append(q[0].detach().to(torch.bfloat16).clone())

    settings = enable_quest(model, QuestAttention(budget=None, dense_layers=dense_layers, on_query=on_query))
    t1 = time.time()
    gen = decode(model, cache, S0, ids[S0:], prompt.gen_tokens)
    t_dense = time.time() - t1
    T = len(steps[0])
    q = torch.stack([torch.stack([steps[l][t] for l in range(L)]) for t in range(T)])  # [T, L, Hq, D]
    k = torch.stack([cache.layers[l].keys[0] for l in range(L)])  # [L, Hkv, S, D]
    v = torch.stack([cache.layers[l].values[0] for l in range(L)])
    info = prompt.info() | {
        "prefix_len": S0,
        "model": getattr(cfg_model, "_name_or_path", "") or "model",
        "sm_scale": 1.0 / cfg_model.head_dim**0.5,
        "dense_answer": tokenizer.decode(gen),
        "prefill_s": round(t_prefill, 2),
    }
    trace = Trace(q, k[:, :, : S0 + T], v[:, :, : S0 + T], info)
    settings.on_query = None
    log(
        f"  {prompt.name}: {len(ids)} tokens, prefill {t_prefill:.1f}s, dense decode {t_dense:.1f}s"
        + (f", answer {passkey_answer(info['dense_answer'])!r} (key {prompt.key})" if prompt.kind == "passkey" else "")
    )

    rows = []
    if prompt.kind != "passkey":
        return trace, rows
    for c in e2e:
        t2 = time.time()
        if c.policy == "dense":
            text = info["dense_answer"]
            secs = t_dense
        else:
            enable_quest(model, c.settings(dense_layers))
            text = tokenizer.decode(decode(model, cache, S0, ids[S0:], prompt.gen_tokens))
            secs = time.time() - t2
        ans = passkey_answer(text)
        rows.append(
            {
                "prompt": prompt.name,
                "context": len(ids),
                "depth": prompt.depth,
                "policy": c.policy,
                "page_size": c.page_size if c.policy != "dense" else None,
                "budget": c.budget,
                "gqa_mode": c.gqa_mode if c.policy != "dense" else None,
                "aggregate": c.aggregate if c.policy != "dense" and c.gqa_mode == "shared" else None,
                "threshold": c.threshold,
                "min_budget": c.min_budget,
                "max_budget": c.max_budget,
                "temperature": c.temperature,
                "dense_layers": dense_layers,
                "config": c.label(),
                "expected": prompt.key,
                "answer": ans,
                "generated": text,
                "correct": int(ans == prompt.key),
                "decode_s": round(secs, 2),
            }
        )
    ok = sum(r["correct"] for r in rows[1:])
    log(f"    quest configs correct: {ok}/{len(rows) - 1} ({time.time() - t0:.0f}s in all)")
    enable_quest(model, QuestAttention(budget=None, dense_layers=dense_layers))
    return trace, rows


DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192)


def default_depths(context: int) -> tuple[float, ...]:
    """Needle depths: near the start, the middle and the end (three per context: CPU time)."""
    return (0.1, 0.5, 0.9)


def capture_all(
    trace_dir,
    passkey_csv,
    *,
    contexts=DEFAULT_CONTEXTS,
    depths=None,
    texts_per_context: int = 1,
    e2e: list[E2EConfig] | None = None,
    dense_layers: int = 2,
    threads: int | None = None,
    skip_existing: bool = True,
    log=print,
) -> list[dict]:
    """Capture every trace (and run the end-to-end passkey configs) for the study.

    Traces go to ``trace_dir`` (one file each); end-to-end rows to ``passkey_csv``
    (rewritten atomically after every prompt, so an interrupted run keeps its rows).
    Existing traces are kept and skipped when ``skip_existing`` and no e2e run is asked.
    """
    import pandas as pd

    from questkern._io import write_csv_atomic
    from questkern.quality.model import load_model
    from questkern.quality.prompts import passkey_prompt, text_prompt
    from questkern.quality.traces import save_trace

    from pathlib import Path

    trace_dir = Path(trace_dir)
    e2e = default_e2e_configs() if e2e is None else e2e
    t0 = time.time()
    model, tok = load_model(threads=threads)
    log(f"model loaded in {time.time() - t0:.0f}s; {len(e2e)} end-to-end configs per passkey prompt")
    prompts = []
    for ctx in contexts:
        for d in depths or default_depths(ctx):
            prompts.append(passkey_prompt(tok, ctx, d))
        for s in range(texts_per_context):
            prompts.append(text_prompt(tok, ctx, seed=s))
    passkey_csv = Path(passkey_csv)
    kept = pd.DataFrame()
    if passkey_csv.exists():  # rows of (prompt, config) pairs this run does not redo stay
        kept = pd.read_csv(passkey_csv, dtype={"expected": str, "answer": str})
    rows: list[dict] = []
    for p in prompts:
        path = trace_dir / f"{p.name}.safetensors"
        if skip_existing and path.exists() and (p.kind != "passkey" or not e2e):
            log(f"  {p.name}: trace exists, skipped")
            continue
        trace, r = run_prompt(model, tok, p, e2e, dense_layers, log)
        save_trace(trace, path)
        rows += r
        if rows:
            both = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
            write_csv_atomic(passkey_csv, both.drop_duplicates(["prompt", "config"], keep="last"), float_format="%.6g")
    log(
        f"captured {len(prompts)} prompts in {time.time() - t0:.0f}s -> {trace_dir}"
        + (f", {passkey_csv}" if rows else "")
    )
    return rows

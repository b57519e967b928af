"""``questkern quality demo``: SmolLM2-135M answering a passkey prompt with questkern as
its decode attention (transformers ``AttentionInterface``), next to the dense answer.

The prompt is prefilled densely except its last tokens, which are decoded one by one
through questkern (Quest on every layer but the first two), then the answer is
generated greedily. ``backend="kernels"`` runs the Triton kernels (on CPU through the
interpreter: minutes per token — use it on a GPU); ``"reference"`` runs the float32
references and takes seconds.
"""

from __future__ import annotations

import time

from questkern.integrations.hf import QuestAttention, enable_quest
from questkern.quality.capture import decode, passkey_answer, prefill
from questkern.quality.model import load_model
from questkern.quality.prompts import passkey_prompt


def demo(
    context: int = 2048,
    depth: float = 0.5,
    budget: int = 256,
    page_size: int = 16,
    backend: str = "reference",
    dense_layers: int = 2,
    log=print,
) -> dict:
    """Run the demo; returns {"key", "dense", "quest", "pages_read_mean"}."""
    t0 = time.time()
    model, tok = load_model()
    p = passkey_prompt(tok, context, depth)
    log(
        f"SmolLM2-135M loaded in {time.time() - t0:.0f}s; passkey prompt of {len(p.ids)} tokens, key {p.key} at depth {depth}"
    )
    S0 = len(p.ids) - p.tail
    t1 = time.time()
    cache = prefill(model, p.ids[:S0])
    log(f"dense prefill of {S0} tokens: {time.time() - t1:.1f}s")
    out: dict = {"key": p.key}
    enable_quest(model, QuestAttention(budget=None))
    out["dense"] = tok.decode(decode(model, cache, S0, p.ids[S0:], p.gen_tokens))
    pages: list[float] = []
    settings = QuestAttention(
        budget=budget,
        page_size=page_size,
        dense_layers=dense_layers,
        backend=backend,
        on_select=lambda layer, sel: pages.append(float((sel >= 0).sum(-1).float().mean())),
    )
    enable_quest(model, settings)
    t2 = time.time()
    out["quest"] = tok.decode(decode(model, cache, S0, p.ids[S0:], p.gen_tokens))
    n_pages = -(-S0 // page_size)
    out["pages_read_mean"] = sum(pages) / max(1, len(pages))
    log(f"dense : {out['dense']!r} -> {'correct' if passkey_answer(out['dense']) == p.key else 'wrong'}")
    log(
        f"quest : {out['quest']!r} -> {'correct' if passkey_answer(out['quest']) == p.key else 'wrong'} "
        f"(budget {budget}, page {page_size}, {backend}; {out['pages_read_mean']:.1f} of ~{n_pages} pages per "
        f"selection on layers >= {dense_layers}; decode {time.time() - t2:.1f}s)"
    )
    return out

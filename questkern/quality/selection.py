"""Selection variants of the quality suite (issue 16): float32 references, one decode step.

Today's rule (:mod:`questkern.ops.select.naive`) keeps the last page plus the ``K - 1``
pages with the best Quest upper bound. A :class:`Variant` generalizes it along the
axes the suite measures, all at page granularity (``K = ceil(budget / page_size)``
pages per selection row, **everything counted inside the budget**):

* ``gqa_mode``: ``"per_head"`` (one page set per query head) or ``"shared"`` (one per
  KV head) with ``aggregate`` over the group's query heads:
  ``"sum"`` of raw bounds, ``"max"``, or ``"softmax"`` — the sum of per-head
  softmax-normalised estimated masses ``softmax_p(u_hp * sm_scale)`` (each head's
  vote weighs the same, whatever the spread of its bounds);
* ``sub_page``: bounds per sub-page of this many tokens; a page's bound is the max of
  its sub-page bounds (tighter, same decode granularity, ``page_size / sub_page``
  times the metadata bytes);
* ``sinks``: the first this many pages are always attended (attention sinks);
* ``recent``: the pages holding the last ``recent`` tokens are always attended
  (beside the last page, which always is);
* ``rerank``: a second stage: the ``rerank * K_free`` best candidates by bound are
  re-ranked by their exact attention mass (``sum_t exp(q.k_t * sm_scale)`` over the
  page's tokens; for ``shared`` the sum over the group of each head's mass normalised
  over the candidates), reading the keys of those pages only;
* ``dense_layers``: the layers that run dense (a set, so it can be chosen by where
  retrieval happens instead of "the first two");
* ``reselect_every`` / ``drift``: selection reuse across decode steps (issue 19; the rules
  of :func:`reuse_select`, the same as questkern.api's): a KV head re-selects every
  ``reselect_every`` steps (1: every step, today's rule; ``None``: no age limit, with
  ``drift`` only) and, with ``drift``, also when the cosine of its group's query to the
  query at its last selection falls below ``drift``; in between it reuses its page mask.

Forced pages (last, sinks, recent) come first; the remaining ``K - forced`` slots go to
the other pages by score descending, ties to the lower page index (as the fixed rule).
A sequence of ``<= K`` pages attends all of them. ``Variant(budget=...)`` with the
defaults is exactly today's rule (a test checks it against ``select_pages_ref``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import torch

AGGREGATES = ("sum", "max", "softmax")


@dataclass(frozen=True)
class Variant:
    """One selection rule (see module doc). ``budget=None``: dense."""

    budget: int | None
    page_size: int = 16
    gqa_mode: str = "shared"
    aggregate: str = "sum"
    sub_page: int | None = None
    sinks: int = 0
    recent: int = 0
    rerank: int = 0
    dense_layers: tuple[int, ...] = (0, 1)
    reselect_every: int | None = 1
    drift: float | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if self.budget is not None and (
            isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget <= 0
        ):
            raise ValueError(f"budget must be a positive int or None, got {self.budget!r}")
        if self.page_size not in (4, 8, 16, 32, 64):
            raise ValueError(f"page_size must be one of 4, 8, 16, 32, 64, got {self.page_size!r}")
        if self.gqa_mode not in ("shared", "per_head"):
            raise ValueError(f"gqa_mode must be 'shared' or 'per_head', got {self.gqa_mode!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.sub_page is not None and (self.sub_page <= 0 or self.page_size % self.sub_page):
            raise ValueError(f"sub_page must divide page_size={self.page_size}, got {self.sub_page!r}")
        for k in ("sinks", "recent", "rerank"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{k} must be an int >= 0, got {v!r}")
        if not isinstance(self.dense_layers, tuple) or any(not isinstance(i, int) or i < 0 for i in self.dense_layers):
            raise ValueError(f"dense_layers must be a tuple of layer indices >= 0, got {self.dense_layers!r}")
        e = self.reselect_every
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e <= 0):
            raise ValueError(f"reselect_every must be a positive int (or None with drift: no age limit), got {e!r}")
        d = self.drift
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not -1.0 <= d <= 1.0:
                raise ValueError(f"drift must be a cosine threshold, a float in [-1, 1], got {d!r}")
            object.__setattr__(self, "drift", float(d))
            if e == 1:
                raise ValueError(
                    "drift with reselect_every=1 re-selects every step anyway: "
                    "pass reselect_every=None (no age limit) or an int > 1"
                )
        elif e is None:
            raise ValueError("reselect_every=None (no age limit) needs drift; without drift pass a positive int")
        if not self.name:
            object.__setattr__(self, "name", self.label())

    @property
    def dense(self) -> bool:
        return self.budget is None

    @property
    def reuses(self) -> bool:
        """Whether selections may be reused across decode steps (else every step selects)."""
        return self.reselect_every != 1 or self.drift is not None

    def with_(self, **kw) -> "Variant":
        return replace(self, name="", **kw)

    def label(self) -> str:
        if self.dense:
            return "dense"
        s = f"p{self.page_size} b{self.budget} " + (
            "per_head" if self.gqa_mode == "per_head" else f"shared-{self.aggregate}"
        )
        if self.sub_page:
            s += f" sub{self.sub_page}"
        if self.sinks:
            s += f" sink{self.sinks}"
        if self.recent:
            s += f" recent{self.recent}"
        if self.rerank:
            s += f" rerank{self.rerank}"
        if self.reselect_every not in (1, None):
            s += f" every{self.reselect_every}"
        if self.drift is not None:
            d = repr(self.drift)
            s += " drift" + (d[:-2] if d.endswith(".0") else d)
        if self.dense_layers != (0, 1):
            s += " dense" + "-".join(map(str, self.dense_layers))
        return s

    def bytes_per_step(self, S: int, num_q_heads: int, num_kv_heads: int, head_dim: int, elt: int = 2) -> dict:
        """Bytes read per sparse layer and sequence at context ``S`` (K/V in ``elt``-byte
        elements, metadata too): metadata, selected K/V, and the re-rank's extra keys."""
        P = self.page_size
        n = -(-S // P)
        rows = num_q_heads if self.gqa_mode == "per_head" else num_kv_heads
        K = min(n, -(-self.budget // P))
        sub = (P // self.sub_page) if self.sub_page else 1
        meta = n * sub * num_kv_heads * head_dim * 2 * elt
        kv = rows * K * P * head_dim * 2 * elt
        free = max(0, K - 1 - self.sinks - -(-self.recent // P))
        rr = rows * min(n, self.rerank * free) * P * head_dim * elt if self.rerank else 0
        return {"meta_bytes": meta, "kv_bytes": kv, "rerank_bytes": rr, "total_bytes": meta + kv + rr}


def parse_variant(name: str) -> Variant:
    """Variant from its label (inverse of :meth:`Variant.label`), e.g. ``"p16 b1024 shared-sum rerank2"``."""
    if name == "dense":
        return Variant(None)
    m = re.match(r"p(\d+) b(\d+) (per_head|shared-(\w+))(.*)$", name.strip())
    if not m:
        raise ValueError(f"not a variant label: {name!r} (expected e.g. 'p16 b1024 shared-sum rerank4')")
    kw: dict = {"page_size": int(m.group(1)), "gqa_mode": "per_head" if m.group(3) == "per_head" else "shared"}
    if m.group(4):
        kw["aggregate"] = m.group(4)
    for tok in m.group(5).split():
        if tok.startswith("drift"):
            try:
                kw["drift"] = float(tok[5:])
            except ValueError:
                raise ValueError(f"not a variant label: {name!r} (drift needs a number: {tok!r})") from None
            continue
        for key, attr in (
            ("sub", "sub_page"),
            ("sink", "sinks"),
            ("recent", "recent"),
            ("rerank", "rerank"),
            ("every", "reselect_every"),
        ):
            if tok.startswith(key) and tok[len(key) :].isdigit():
                kw[attr] = int(tok[len(key) :])
                break
        else:
            if tok.startswith("dense") and all(x.isdigit() for x in tok[5:].split("-")):
                kw["dense_layers"] = tuple(int(x) for x in tok[5:].split("-"))
            else:
                raise ValueError(f"not a variant label: {name!r} (unknown part {tok!r})")
    if "drift" in kw and "reselect_every" not in kw:
        kw["reselect_every"] = None  # drift alone: no age limit
    return Variant(int(m.group(2)), **kw)


def page_bounds(q: torch.Tensor, k: torch.Tensor, page_size: int, sub_page: int | None = None) -> torch.Tensor:
    """Quest upper bounds per query head and page: q [Hq, D], k [Hkv, S, D] -> [Hq, n] float32.

    With ``sub_page``: bounds per sub-page, page bound = max of its sub-pages' bounds."""
    Hq, D = q.shape
    Hkv, S, _ = k.shape
    G = Hq // Hkv
    g = sub_page or page_size
    m = -(-S // g)
    pad = m * g - S
    kf = k.float()
    lo = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("inf")).view(Hkv, m, g, D).amin(2)
    hi = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("-inf")).view(Hkv, m, g, D).amax(2)
    qq = q.float().view(Hkv, G, 1, D)
    u = torch.maximum(qq * lo[:, None], qq * hi[:, None]).sum(-1).reshape(Hq, m)  # [Hq, m]
    if sub_page:
        per = page_size // sub_page
        n = -(-S // page_size)
        u = torch.nn.functional.pad(u, (0, n * per - m), value=float("-inf")).view(Hq, n, per).amax(2)
    return u


def row_scores(u: torch.Tensor, num_kv_heads: int, gqa_mode: str, aggregate: str, sm_scale: float) -> torch.Tensor:
    """Per-head bounds [Hq, n] -> selection-row scores [R, n]."""
    if gqa_mode == "per_head":
        return u
    Hq, n = u.shape
    g = u.view(num_kv_heads, Hq // num_kv_heads, n)
    if aggregate == "sum":
        return g.sum(1)
    if aggregate == "max":
        return g.amax(1)
    return torch.softmax(g.double() * sm_scale, dim=-1).sum(1).float()


def forced_pages(n: int, page_size: int, S: int, sinks: int, recent: int) -> torch.Tensor:
    """Bool [n]: the last page, the first ``sinks`` pages, the pages of the last ``recent`` tokens."""
    f = torch.zeros(n, dtype=torch.bool)
    f[-1] = True
    f[: min(sinks, n)] = True
    if recent:
        first = max(0, (S - recent) // page_size)
        f[first:] = True
    return f


def select_mask(v: Variant, q: torch.Tensor, k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Selected pages of one decode step as a bool mask [R, n] (R = Hq for per_head, Hkv for shared).

    q [Hq, D] (post-RoPE), k [Hkv, S, D] the cached keys (the current token included)."""
    Hq, D = q.shape
    Hkv, S, _ = k.shape
    P = v.page_size
    n = -(-S // P)
    R = Hq if v.gqa_mode == "per_head" else Hkv
    K = -(-v.budget // P)
    if n <= K:
        return torch.ones(R, n, dtype=torch.bool)
    forced = forced_pages(n, P, S, v.sinks, v.recent)
    free = K - int(forced.sum())
    mask = forced[None].expand(R, n).clone()
    if free <= 0:
        return mask
    s = row_scores(page_bounds(q, k, P, v.sub_page), Hkv, v.gqa_mode, v.aggregate, sm_scale)  # [R, n]
    s = s.masked_fill(forced[None], float("-inf"))
    avail = n - int(forced.sum())
    if v.rerank:
        c = min(avail, v.rerank * free)
        cand = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :c]  # [R, c]
        ex = exact_page_mass(q, k, P, sm_scale, v.gqa_mode, cand)  # [R, c]
        pick = torch.sort(ex, dim=1, descending=True, stable=True).indices[:, :free]
        chosen = torch.gather(cand, 1, pick)
    else:
        chosen = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :free]
    mask.scatter_(1, chosen, True)
    return mask


def exact_page_mass(q, k, page_size: int, sm_scale: float, gqa_mode: str, cand: torch.Tensor) -> torch.Tensor:
    """Exact attention mass of candidate pages cand [R, c] (logical ids) -> [R, c], normalised over
    the candidates per query head; shared rows sum their group's heads."""
    Hq, D = q.shape
    Hkv, S, _ = k.shape
    G = Hq // Hkv
    n = -(-S // page_size)
    pad = n * page_size - S
    kp = torch.nn.functional.pad(k.float(), (0, 0, 0, pad)).view(Hkv, n, page_size, D)
    valid = (torch.arange(n * page_size) < S).view(n, page_size)
    qh = q.float().view(Hkv, G, D)
    if gqa_mode == "per_head":
        kv_of_row = torch.arange(Hq) // G
        keys = kp[kv_of_row[:, None], cand]  # [Hq, c, P, D]
        logits = torch.einsum("rcpd,rd->rcp", keys, q.float()) * sm_scale
        logits = logits.masked_fill(~valid[cand], float("-inf"))
        lse = torch.logsumexp(logits, dim=2)  # [Hq, c]
        return torch.softmax(lse, dim=1)
    keys = kp[torch.arange(Hkv)[:, None], cand]  # [Hkv, c, P, D]
    logits = torch.einsum("rcpd,rgd->rgcp", keys, qh) * sm_scale  # [Hkv, G, c, P]
    logits = logits.masked_fill(~valid[cand][:, None], float("-inf"))
    lse = torch.logsumexp(logits, dim=3)  # [Hkv, G, c]
    return torch.softmax(lse, dim=2).sum(1)


def token_mask(sel: torch.Tensor, num_q_heads: int, page_size: int, S: int) -> torch.Tensor:
    """Page mask [R, n] -> token mask [Hq, S]."""
    m = sel.repeat_interleave(num_q_heads // sel.shape[0], dim=0) if sel.shape[0] != num_q_heads else sel
    return m.repeat_interleave(page_size, dim=1)[:, :S]


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, vv: torch.Tensor, tmask: torch.Tensor | None, sm_scale: float
) -> torch.Tensor:
    """Softmax attention restricted to ``tmask`` [Hq, S] (None = dense). q [Hq, D], k/vv [Hkv, S, D] -> [Hq, D] float32."""
    Hq, D = q.shape
    Hkv = k.shape[0]
    G = Hq // Hkv
    qh = q.float().view(Hkv, G, D)
    s = torch.einsum("hgd,hsd->hgs", qh, k.float()) * sm_scale  # [Hkv, G, S]
    if tmask is not None:
        s = s.masked_fill(~tmask.view(Hkv, G, -1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("hgs,hsd->hgd", p, vv.float()).reshape(Hq, D)


def attention_probs(q: torch.Tensor, k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Dense attention q [Hq, D], k [Hkv, S, D] -> p [Hq, S] float32."""
    Hq, D = q.shape
    Hkv = k.shape[0]
    s = torch.einsum("hgd,hsd->hgs", q.float().view(Hkv, Hq // Hkv, D), k.float()) * sm_scale
    return torch.softmax(s, dim=-1).reshape(Hq, -1)


# --- the transformers hook of the suite --------------------------------------------------------

NAME = "questkern_suite"


@dataclass
class ReuseState:
    """Selection state of one layer across decode steps (issue 19), per KV head.

    ``S`` key length at the last step, ``step`` decode steps since the sequence began,
    ``pages`` page count at the last selection (common to the layer's heads: a page
    crossing re-selects them all), ``at`` [Hkv] the step of each head's last selection,
    ``q`` [Hkv, G*D] float32 the group's query at it, ``mask`` [R, n] the pages in use."""

    S: int
    step: int
    pages: int
    at: torch.Tensor
    q: torch.Tensor
    mask: torch.Tensor


def reuse_select(
    v: Variant, state: ReuseState | None, q: torch.Tensor, k: torch.Tensor, sm_scale: float
) -> tuple[torch.Tensor, ReuseState, torch.Tensor]:
    """One decode step's page mask [R, n] with selection reuse: returns (mask, new state,
    re-selected [Hkv] bool). The rules (the same as questkern.api's): a KV head re-selects
    when (a) the sequence is new (``state`` None, or the key length is not the last step's + 1),
    (b) the last page changed since its last selection (``ceil(S / page_size)`` differs),
    (c) ``reselect_every`` steps passed since it (select at step 0, reuse at 1..N-1, select at
    N; ``None``: no age limit), or (d) with ``drift``: the cosine of its group's query heads
    concatenated [G*D] (float32) to the stored one is below ``drift`` (NaN counts as drifted).
    Otherwise its stored pages are kept (the last page is in them: crossing re-selects).
    ``per_head`` rows of one KV head re-select together."""
    Hq, D = q.shape
    Hkv, S, _ = k.shape
    G = Hq // Hkv
    n = -(-S // v.page_size)
    qc = q.float().reshape(Hkv, G * D)
    if state is None or S != state.S + 1:
        step = 0
        need = torch.ones(Hkv, dtype=torch.bool)
    else:
        step = state.step + 1
        need = torch.full((Hkv,), n != state.pages, dtype=torch.bool)
        if v.reselect_every is not None:
            need |= (step - state.at) >= v.reselect_every
        if v.drift is not None:
            cos = (qc * state.q).sum(1) / (qc.norm(dim=1) * state.q.norm(dim=1))
            need |= ~(cos >= v.drift)  # NaN: drifted
    if bool(need.all()):
        mask = select_mask(v, q, k, sm_scale)
        return mask, ReuseState(S, step, n, torch.full((Hkv,), step), qc.clone(), mask), need
    if not bool(need.any()):
        return state.mask, replace(state, S=S, step=step), need
    rows = need.repeat_interleave(G) if v.gqa_mode == "per_head" else need
    mask = torch.where(rows[:, None], select_mask(v, q, k, sm_scale), state.mask)
    at = torch.where(need, step, state.at)
    qs = torch.where(need[:, None], qc, state.q)
    return mask, ReuseState(S, step, n, at, qs, mask), need


@dataclass
class SuiteHook:
    """Settings attached to every attention module by :func:`enable`: the variant and an
    optional recorder ``on_step(layer, q [Hq, D], k [Hkv, S, D], sel [R, n] | None)``.

    Selection reuse keeps its per-layer :class:`ReuseState` here; ``selections`` / ``steps``
    count (sparse layer, KV head) selections made and decode steps run since :meth:`reset`
    (call it when a new generation starts; a prefill, or a key length that does not continue
    the last step's, resets a layer's state too)."""

    variant: Variant
    on_step: object = None
    state: dict = field(default_factory=dict)
    selections: int = 0
    steps: int = 0

    def reset(self) -> None:
        self.state.clear()
        self.selections = 0
        self.steps = 0


def suite_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: prefill and dense layers via SDPA, decode steps of
    sparse layers via :func:`select_mask` (or :func:`reuse_select`) + :func:`sparse_attention` (batch 1)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    hook: SuiteHook | None = getattr(module, "questkern_suite", None)
    layer = getattr(module, "layer_idx", 0)
    T = query.shape[2]
    if hook is None or T != 1:
        if hook is not None:
            hook.state.pop(layer, None)  # a prefill: the next decode step starts a sequence
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise NotImplementedError("questkern_suite attention runs batch 1 decode steps only")
    v = hook.variant
    D = query.shape[3]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
    q, k, vv = query[0, :, 0], key[0], value[0]
    sel = None
    tmask = None
    if not v.dense and layer not in v.dense_layers:
        Hkv = k.shape[0]
        if v.reuses:
            sel, hook.state[layer], need = reuse_select(v, hook.state.get(layer), q, k, scale)
            hook.selections += int(need.sum())
        else:
            sel = select_mask(v, q, k, scale)
            hook.selections += Hkv
        hook.steps += Hkv
        tmask = token_mask(sel, q.shape[0], v.page_size, k.shape[1])
    if hook.on_step is not None:
        hook.on_step(layer, q, k, sel)
    out = sparse_attention(q, k, vv, tmask, scale)
    return out.to(query.dtype)[None, None], None  # [1, 1, Hq, D]


def enable(model, hook: SuiteHook) -> SuiteHook:
    """Route ``model``'s attention through :func:`suite_attention` with ``hook``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, suite_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if model.config._attn_implementation != NAME:
        model.set_attn_implementation(NAME)
    from questkern.integrations.hf import attention_modules

    for m in attention_modules(model):
        m.questkern_suite = hook
    return hook

"""Varied-text quality suite (issue 16): RULER-style tasks on varied filler, end to end.

Tasks (in the style of RULER's generated tasks; filler from :mod:`questkern.quality.filler`):

* ``niah_single``  one needle "One of the special magic numbers for {key} is: {value}.";
  ask for it (answer: the 5-digit value);
* ``niah_multikey`` four needles with different keys; each question asks for one
  (every needle asked in turn, one question each; the other three are distractors);
* ``niah_multivalue`` four values for one key; ask for all (score: fraction found);
* ``vt``           variable tracking: a chain ``VAR A = 12345 ... VAR B = VAR A ...`` of
  four variables spread over the context; ask which variables hold the value (fraction);
* ``cwe``          common-word extraction: a numbered list of words where ten words occur
  far more often; ask for them (fraction).

How a prompt runs (CPU frugal): the haystack is prefilled **once**, densely; each
question is prefilled on top of it (dense, as Quest prefills), all but its last token.
From that cache (cropped back after each run) every variant decodes: the question's
last token and the answer go through real decode steps, so every answer token is
predicted by a sparse step. Exact tasks (``niah_*`` single values) are scored by greedy
decoding with early stop: the answer's tokens are fed while the argmax matches them, so
``correct`` is exactly "greedy generation reproduces the answer", and a wrong variant
stops at its first wrong token. Set tasks generate ``gen_tokens`` greedily. Rows count the
(sparse layer, KV head) selections made and decode steps run (``selections`` / ``steps``: below 1
with selection reuse, issue 19).
The dense baseline runs on the same prompts in the same run.

Head diagnostics: at the dense step that predicts the answer's first digit, every layer's
query and keys give each query head's dense attention mass on the needle's value tokens;
for each diagnostic variant, the selection from the same query and keys says whether the
head's selected pages hold the needle (fraction of the value tokens kept) and its recall.

``python -m questkern.quality.suite --help`` runs it and writes CSVs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from questkern.quality.filler import sentences
from questkern.quality.selection import (
    SuiteHook,
    Variant,
    attention_probs,
    enable,
    parse_variant,
    select_mask,
    token_mask,
)

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "vt", "cwe")
EXACT_TASKS = ("niah_single", "niah_multikey")

KEY_WORDS = (
    "apple",
    "harbor",
    "violin",
    "comet",
    "lantern",
    "pepper",
    "glacier",
    "saddle",
    "orchid",
    "falcon",
    "marble",
    "tunnel",
    "cactus",
    "anchor",
    "velvet",
    "meadow",
    "rocket",
    "walnut",
    "thistle",
    "beacon",
    "dolphin",
    "kettle",
    "prism",
    "canyon",
    "juniper",
    "magnet",
    "pigeon",
    "quartz",
    "raven",
    "spruce",
    "trumpet",
    "umbrella",
    "vortex",
    "whistle",
    "yogurt",
    "zephyr",
    "almond",
    "bison",
    "cobalt",
    "dagger",
    "ember",
    "fossil",
    "gazelle",
    "hammock",
    "igloo",
    "jasmine",
    "koala",
    "lemur",
    "mango",
    "nectar",
    "oyster",
    "parrot",
    "quiver",
    "ribbon",
    "sapphire",
    "tulip",
    "urchin",
    "vulture",
    "walrus",
    "yacht",
    "acorn",
    "badger",
    "cinnamon",
    "dynamo",
    "eclipse",
    "fjord",
    "garnet",
    "hornet",
    "ivory",
    "jigsaw",
    "kiwi",
    "lobster",
    "mosaic",
    "nutmeg",
    "onyx",
    "pelican",
    "quokka",
    "rhubarb",
    "scarab",
    "tornado",
)
CWE_WORDS = (
    "table",
    "river",
    "pencil",
    "cloud",
    "garden",
    "bottle",
    "window",
    "castle",
    "forest",
    "engine",
    "basket",
    "candle",
    "desert",
    "feather",
    "guitar",
    "helmet",
    "island",
    "jacket",
    "ladder",
    "mirror",
    "needle",
    "orange",
    "planet",
    "rabbit",
    "silver",
    "tiger",
    "valley",
    "wagon",
    "button",
    "carpet",
    "dragon",
    "finger",
    "hollow",
    "insect",
    "jungle",
    "kitten",
    "lemon",
    "monkey",
    "napkin",
    "pillow",
    "puzzle",
    "rocket",
    "saddle",
    "tomato",
    "turtle",
    "violet",
    "wallet",
    "zipper",
    "bridge",
    "coffee",
    "donkey",
    "elbow",
    "fabric",
    "goblet",
    "hammer",
    "kennel",
    "marble",
    "noodle",
    "parcel",
    "pocket",
    "radish",
    "shovel",
    "spider",
    "ticket",
    "tunnel",
    "velvet",
    "walnut",
    "anchor",
    "beaver",
    "cherry",
)

INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards.\n"
)
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
CWE_INTRO = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)


@dataclass
class Question:
    """One question asked after a haystack."""

    ids: list[int] = field(repr=False)  # question tokens (appended to the haystack)
    answer: list[str]  # expected items (one for exact tasks)
    answer_ids: list[int] | None = field(default=None, repr=False)  # exact: the expected continuation
    gen_tokens: int = 0  # set tasks: tokens generated greedily
    needle_tokens: list[int] = field(
        default_factory=list, repr=False
    )  # haystack positions of the answer's value tokens
    depth: float = 0.0  # relative position of the (first) answer needle

    @property
    def exact(self) -> bool:
        return self.answer_ids is not None


@dataclass
class Haystack:
    """One long context and the questions asked about it."""

    task: str
    context: int
    seed: int
    ids: list[int] = field(repr=False)
    questions: list[Question]

    @property
    def name(self) -> str:
        return f"{self.task}-{self.context}-s{self.seed}"


def _enc(tok, s: str) -> list[int]:
    return tok(s, add_special_tokens=False)["input_ids"]


def spread_depth(seed: int, j: int = 0, lo: float = 0.05, hi: float = 0.95) -> float:
    """Low-discrepancy needle depths over [lo, hi] (golden-ratio sequence over seeds)."""
    return lo + (hi - lo) * (((seed * 4 + j) * 0.6180339887498949 + 0.3) % 1.0)


def _number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _assemble(
    tok, intro: str, needles: list[tuple[float, list[str]]], budget: int, seed
) -> tuple[list[int], list[list[list[int]]]]:
    """Intro + varied filler with needles inserted at relative depths, at most ``budget`` tokens.

    needles: (depth, [piece, ...]); each piece is encoded separately so its token span is known.
    Returns (ids, spans): spans[i][j] = positions of needle i's piece j."""
    ids = _enc(tok, intro)
    need = sum(len(_enc(tok, " " + p if k == 0 else p)) for _, ps in needles for k, p in enumerate(ps))
    fill: list[list[int]] = []
    room = budget - len(ids) - need
    it = sentences(seed)
    total = 0
    while True:
        e = _enc(tok, " " + next(it))
        if total + len(e) > room:
            break
        fill.append(e)
        total += len(e)
    at = sorted(((round(d * len(fill)), i) for i, (d, _) in enumerate(needles)))
    spans: list[list[list[int]]] = [[] for _ in needles]
    j = 0
    for si in range(len(fill) + 1):
        while j < len(at) and at[j][0] == si:
            i = at[j][1]
            for k, piece in enumerate(needles[i][1]):
                e = _enc(tok, " " + piece if k == 0 else piece)
                spans[i].append(list(range(len(ids), len(ids) + len(e))))
                ids += e
            j += 1
        if si < len(fill):
            ids += fill[si]
    return ids, spans


def niah(
    tok, context: int, seed: int, num_needles: int = 1, num_questions: int = 1, task: str = "niah_single"
) -> Haystack:
    """Single- or multi-key needle retrieval (see module doc)."""
    rng = random.Random(f"{task}-{context}-{seed}")
    keys = rng.sample(KEY_WORDS, num_needles)
    vals = [_number(rng) for _ in keys]
    depths = [spread_depth(seed, j) for j in range(num_needles)]

    def qtext(k: str) -> str:
        return (
            f"\nWhat is the special magic number for {k} mentioned in the provided text? "
            f"The special magic number for {k} mentioned in the provided text is"
        )

    qlen = max(len(_enc(tok, qtext(k))) for k in keys)
    needles = [
        (d, [f"One of the special magic numbers for {k} is:", " " + v, "."]) for d, k, v in zip(depths, keys, vals)
    ]
    ids, spans = _assemble(tok, INTRO, needles, context - qlen, f"{task}-{context}-{seed}")
    asked = sorted(range(num_needles), key=lambda i: depths[i])
    if num_questions < num_needles:  # spread the asked needles over depth
        asked = [asked[round(j * (num_needles - 1) / max(1, num_questions - 1))] for j in range(num_questions)]
    qs = [
        Question(
            _enc(tok, qtext(keys[i])), [vals[i]], _enc(tok, " " + vals[i]), needle_tokens=spans[i][1], depth=depths[i]
        )
        for i in asked
    ]
    return Haystack(task, context, seed, ids, qs)


def multivalue(tok, context: int, seed: int, num_values: int = 4) -> Haystack:
    rng = random.Random(f"mv-{context}-{seed}")
    key = rng.choice(KEY_WORDS)
    vals = [_number(rng) for _ in range(num_values)]
    depths = [spread_depth(seed, j) for j in range(num_values)]
    q = (
        f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
        f"The special magic numbers for {key} mentioned in the provided text are"
    )
    qi = _enc(tok, q)
    needles = [(d, [f"One of the special magic numbers for {key} is:", " " + v, "."]) for d, v in zip(depths, vals)]
    ids, spans = _assemble(tok, INTRO, needles, context - len(qi), f"mv-{context}-{seed}")
    toks = sorted(t for s in spans for t in s[1])
    return Haystack(
        "niah_multivalue",
        context,
        seed,
        ids,
        [Question(qi, vals, None, gen_tokens=7 * num_values, needle_tokens=toks, depth=min(depths))],
    )


def variable_tracking(tok, context: int, seed: int, hops: int = 4) -> Haystack:
    rng = random.Random(f"vt-{context}-{seed}")
    names = ["".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(4)) for _ in range(hops)]
    val = _number(rng)
    depths = sorted(spread_depth(seed, j, 0.05, 0.9) for j in range(hops))
    needles = [(depths[0], [f"VAR {names[0]} =", " " + val, "."])]
    needles += [(depths[i], [f"VAR {names[i]} = VAR", " " + names[i - 1], "."]) for i in range(1, hops)]
    q = (
        f"\nQuestion: Find all variables that are assigned the value {val} in the text above. Answer: According to "
        f"the chain(s) of variable assignment in the text above, {hops} variables are assigned the value {val}, they are:"
    )
    qi = _enc(tok, q)
    ids, spans = _assemble(tok, VT_INTRO, needles, context - len(qi), f"vt-{context}-{seed}")
    toks = sorted(t for s in spans for t in s[0] + s[1])
    return Haystack(
        "vt", context, seed, ids, [Question(qi, names, None, gen_tokens=5 * hops, needle_tokens=toks, depth=depths[0])]
    )


def common_words(tok, context: int, seed: int, num_common: int = 10) -> Haystack:
    """Numbered word list; ``num_common`` words occur about 10x as often as the others."""
    rng = random.Random(f"cwe-{context}-{seed}")
    words = list(CWE_WORDS)
    rng.shuffle(words)
    common, rare = words[:num_common], words[num_common:]
    q = "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:"
    qi = _enc(tok, q)
    ids = _enc(tok, CWE_INTRO)
    per = len(_enc(tok, " 123. garden"))
    n = (context - len(qi) - len(ids)) // per
    n_common = max(num_common * 3, n * 10 * num_common // (10 * num_common + len(rare)))
    seq = [common[i % num_common] for i in range(n_common)]
    seq += [rare[i % len(rare)] for i in range(n - n_common)]
    rng.shuffle(seq)
    toks: list[int] = []
    for i, w in enumerate(seq):
        e_num, e_w = _enc(tok, f" {i + 1}."), _enc(tok, f" {w}")
        if len(ids) + len(e_num) + len(e_w) > context - len(qi):
            break
        ids += e_num
        if w in common:
            toks += range(len(ids), len(ids) + len(e_w))
        ids += e_w
    return Haystack(
        "cwe", context, seed, ids, [Question(qi, common, None, gen_tokens=30, needle_tokens=toks, depth=0.0)]
    )


def build(task: str, tok, context: int, seed: int) -> Haystack:
    """One haystack of ``task`` at about ``context`` tokens (never more, question included)."""
    if task == "niah_single":
        return niah(tok, context, seed)
    if task == "niah_multikey":
        return niah(tok, context, seed, num_needles=4, num_questions=4, task="niah_multikey")
    if task == "niah_multivalue":
        return multivalue(tok, context, seed)
    if task == "vt":
        return variable_tracking(tok, context, seed)
    if task == "cwe":
        return common_words(tok, context, seed)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def score_text(text: str, answer: list[str]) -> float:
    """Fraction of the expected items found in the generated text (whole words)."""
    import re

    found = set(re.findall(r"[A-Za-z]+|\d+", text))
    return sum(a in found for a in answer) / len(answer)


# --- running -------------------------------------------------------------------------------


def _crop(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra < 0:
        raise ValueError(f"cache holds {cache.get_seq_length()} tokens, fewer than {length}")
    if extra:
        cache.crop(-extra)


@torch.no_grad()
def _step(model, cache, tok: int, pos: int) -> torch.Tensor:
    return model(
        input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos]]), cache=cache, use_cache=True
    ).logits[0, -1]


@torch.no_grad()
def run_exact(
    model, cache, base: int, first: int, answer_ids: list[int], early_stop: bool = True
) -> tuple[int, list[int]]:
    """Greedy decoding checked against ``answer_ids``: returns (tokens matched before the first
    mismatch, greedy tokens). Feeds the answer's own tokens (== greedy while they match)."""
    tok, pos, n_ok, out, wrong = first, base, 0, [], False
    for a in answer_ids:
        pred = int(torch.argmax(_step(model, cache, tok, pos)))
        out.append(pred)
        if pred != a:
            wrong = True
            if early_stop:
                break
        elif not wrong:
            n_ok += 1
        tok, pos = a, pos + 1
    return n_ok, out


@torch.no_grad()
def run_greedy(model, cache, base: int, first: int, n: int) -> list[int]:
    tok, pos, out = first, base, []
    for _ in range(n):
        tok = int(torch.argmax(_step(model, cache, tok, pos)))
        out.append(tok)
        pos += 1
    return out


def first_digit_step(tokenizer, answer_ids: list[int]) -> int:
    """Index of the decode step that predicts the answer's first digit."""
    for i, t in enumerate(answer_ids):
        if any(c.isdigit() for c in tokenizer.decode([t])):
            return i
    return 0


class _DiagRecorder:
    """on_step callback of the dense run: at decode step ``at`` computes per layer and query
    head the dense mass on the needle tokens and, per diagnostic variant, the needle
    fraction kept and the recall of its selection."""

    def __init__(self, at: int, needle: list[int], variants: list[Variant], num_layers: int):
        self.at, self.needle, self.variants, self.L = at, torch.tensor(needle, dtype=torch.long), variants, num_layers
        self.step = -1
        self.rows: list[dict] = []

    def __call__(self, layer, q, k, sel):
        if layer == 0:
            self.step += 1
        if self.step != self.at:
            return
        Hq, D = q.shape
        Hkv, S, _ = k.shape
        scale = 1.0 / D**0.5
        p = attention_probs(q, k, scale)  # [Hq, S]
        mass = p[:, self.needle].sum(1)
        per = {}
        for v in self.variants:
            tm = token_mask(select_mask(v, q, k, scale), Hq, v.page_size, S)
            per[v.name] = (tm[:, self.needle].float().mean(1), (p * tm).sum(1))
        for h in range(Hq):
            r = {"layer": layer, "q_head": h, "kv_head": h // (Hq // Hkv), "needle_mass": float(mass[h])}
            for name, (kept, rec) in per.items():
                r[f"kept[{name}]"] = float(kept[h])
                r[f"recall[{name}]"] = float(rec[h])
            self.rows.append(r)


def run_haystack(
    model,
    tokenizer,
    hs: Haystack,
    variants: list[Variant],
    *,
    diag_variants: list[Variant] | tuple = (),
    skip_if_dense_wrong: bool = True,
    prefill_threads: int | None = None,
    log=print,
):
    """Runs one haystack: dense prefill once, then per question dense + every variant.

    Returns (rows, diag_rows): one row per (question, variant incl. dense); diagnostic rows
    per (question, layer, query head)."""
    from questkern.quality.capture import prefill

    t0 = time.time()
    L = model.config.num_hidden_layers
    dense = Variant(None)
    hook = enable(model, SuiteHook(dense))
    threads = torch.get_num_threads()
    if prefill_threads:
        torch.set_num_threads(prefill_threads)
    cache = prefill(model, hs.ids)
    t_pre = time.time() - t0
    torch.set_num_threads(1)  # decode steps: many small ops
    H = len(hs.ids)
    rows, diag = [], []
    try:
        for qi, qu in enumerate(hs.questions):
            _crop(cache, H)
            hook.variant, hook.on_step = dense, None
            with torch.no_grad():
                model(input_ids=torch.tensor([qu.ids[:-1]]), cache=cache, use_cache=True, logits_to_keep=1)
            base = H + len(qu.ids) - 1
            first = qu.ids[-1]
            at = first_digit_step(tokenizer, qu.answer_ids) if qu.exact else 0
            rec = _DiagRecorder(at, qu.needle_tokens, list(diag_variants), L) if diag_variants else None
            common = {
                "task": hs.task,
                "context": hs.context,
                "haystack": hs.name,
                "question": qi,
                "length": base + 1,
                "depth": round(qu.depth, 4),
                "expected": " ".join(qu.answer),
            }
            dense_ok = None
            for v in [dense] + list(variants):
                if v is not dense and skip_if_dense_wrong and dense_ok is not None and dense_ok < 1.0:
                    rows.append(
                        common
                        | _vcols(v)
                        | {
                            "score": 0.0,
                            "correct": 0,
                            "tokens_ok": 0,
                            "generated": "",
                            "skipped": 1,
                            "decode_s": 0.0,
                            "selections": 0,
                            "steps": 0,
                        }
                    )
                    continue
                _crop(cache, base)
                hook.variant = v
                hook.on_step = rec if v is dense else None
                hook.reset()  # a new generation: selection reuse starts over, counts from 0
                t1 = time.time()
                if qu.exact:
                    n_ok, out = run_exact(model, cache, base, first, qu.answer_ids, early_stop=v is not dense)
                    score = float(n_ok == len(qu.answer_ids))
                else:
                    out = run_greedy(model, cache, base, first, qu.gen_tokens)
                    n_ok = 0
                    score = score_text(tokenizer.decode(out), qu.answer)
                if v is dense:
                    dense_ok = score
                rows.append(
                    common
                    | _vcols(v)
                    | {
                        "score": score,
                        "correct": int(score == 1.0),
                        "tokens_ok": n_ok,
                        "generated": tokenizer.decode(out),
                        "skipped": 0,
                        "decode_s": round(time.time() - t1, 2),
                        "selections": hook.selections,
                        "steps": hook.steps,
                    }
                )
            if rec is not None:
                diag += [common | {"dense_correct": int(dense_ok == 1.0)} | r for r in rec.rows]
        hook.on_step = None
        hook.variant = dense
    finally:
        torch.set_num_threads(threads)
    ok = [r for r in rows if r["variant"] != "dense"]
    log(
        f"  {hs.name}: {H} tokens, prefill {t_pre:.0f}s, {len(hs.questions)} q, dense "
        f"{sum(r['score'] for r in rows if r['variant'] == 'dense'):.1f}, variants {sum(r['correct'] for r in ok)}/{len(ok)} "
        f"({time.time() - t0:.0f}s)"
    )
    return rows, diag


def _vcols(v: Variant) -> dict:
    return {
        "variant": v.name,
        "budget": v.budget,
        "page_size": None if v.dense else v.page_size,
        "gqa_mode": None if v.dense else v.gqa_mode,
        "aggregate": None if v.dense or v.gqa_mode == "per_head" else v.aggregate,
        "sub_page": v.sub_page,
        "sinks": v.sinks,
        "recent": v.recent,
        "rerank": v.rerank,
        "dense_layers": "-".join(map(str, v.dense_layers)),
        "reselect_every": v.reselect_every,
        "drift": v.drift,
    }


def study_variants(budget: int, retrieval_layers: tuple[int, ...] = (), rich: bool = True) -> list[Variant]:
    """The variants of the first comparison at one budget (no new kernels needed)."""
    b = Variant(budget)
    out = [b, b.with_(gqa_mode="per_head")]
    if rich:
        out += [
            b.with_(aggregate="max"),
            b.with_(aggregate="softmax"),
            b.with_(page_size=8),
            b.with_(page_size=8, gqa_mode="per_head"),
            b.with_(sub_page=4),
            b.with_(sinks=1, recent=64),
            b.with_(rerank=4),
            b.with_(gqa_mode="per_head", rerank=4),
        ]
        if retrieval_layers:
            out.append(b.with_(dense_layers=tuple(retrieval_layers)))
    return out


def main(argv=None) -> int:
    import argparse
    import sys

    import pandas as pd

    from questkern._io import write_csv_atomic
    from questkern.quality.model import load_model

    ap = argparse.ArgumentParser(prog="python -m questkern.quality.suite", description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="niah_single,niah_multikey")
    ap.add_argument("--contexts", default="4096,8192")
    ap.add_argument("--haystacks", type=int, default=20, help="haystacks per (task, context)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budgets", default="", help="context:budget,... e.g. 4096:512,4096:1024,8192:1024,8192:2048")
    ap.add_argument(
        "--rich-budgets",
        default="",
        help="budgets (per context as above) that run every variant; others run shared-sum and per_head",
    )
    ap.add_argument(
        "--retrieval-layers", default="", help="comma list: the dense layers of the 'dense by retrieval' variant"
    )
    ap.add_argument(
        "--variants",
        default="",
        help="context:label;... explicit variants (labels as in the CSVs), "
        "added to --budgets' lists, e.g. '8192:p16 b1024 shared-sum rerank2;8192:p16 b3072 shared-sum'",
    )
    ap.add_argument(
        "--diag", action="store_true", help="head diagnostics (every variant at every budget, on the dense run's step)"
    )
    ap.add_argument("--out", required=True, help="output prefix: writes PREFIX_accuracy.csv (and PREFIX_heads.csv)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    contexts = [int(c) for c in a.contexts.split(",")]
    budgets: dict[int, list[int]] = {c: [] for c in contexts}
    for item in filter(None, a.budgets.split(",")):
        c, b = item.split(":")
        budgets.setdefault(int(c), []).append(int(b))
    rich = {tuple(map(int, x.split(":"))) for x in filter(None, a.rich_budgets.split(","))}
    rl = tuple(int(x) for x in filter(None, a.retrieval_layers.split(",")))
    t0 = time.time()
    model, tok = load_model(threads=a.threads)
    print(f"model loaded in {time.time() - t0:.0f}s", file=sys.stderr)
    rows, diag = [], []
    vs: dict[int, list] = {}
    dv: dict[int, list] = {}
    for ctx in contexts:
        vs[ctx], dv[ctx] = [], []
        for b in budgets.get(ctx, []):
            vs[ctx] += study_variants(b, rl, rich=(ctx, b) in rich)
            dv[ctx] += [v for v in study_variants(b, rl, rich=True) if v.dense_layers == (0, 1)]
    for item in filter(None, a.variants.split(";")):
        c, label = item.split(":", 1)
        v = parse_variant(label)
        vs.setdefault(int(c), []).append(v)
        dv.setdefault(int(c), [])
        if v.dense_layers == (0, 1):
            dv[int(c)].append(v)
    contexts = sorted(set(contexts) | set(vs), reverse=True) if a.variants else contexts
    for s in range(a.first_seed, a.first_seed + a.haystacks):  # seeds outer: a cut-off run stays balanced
        for ctx in contexts:
            for task in a.tasks.split(","):
                hs = build(task, tok, ctx, s)
                r, d = run_haystack(
                    model,
                    tok,
                    hs,
                    vs[ctx],
                    diag_variants=dv[ctx] if a.diag else (),
                    prefill_threads=a.threads,
                    log=lambda m: print(m, file=sys.stderr, flush=True),
                )
                rows += r
                diag += d
                write_csv_atomic(f"{a.out}_accuracy.csv", pd.DataFrame(rows), float_format="%.6g")
                if diag:
                    write_csv_atomic(f"{a.out}_heads.csv", pd.DataFrame(diag), float_format="%.6g")
    print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

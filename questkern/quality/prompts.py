"""Long prompts of the quality study, built to a target token count.

* **passkey**: the standard needle test (Landmark Attention / Quest): a 5-digit key in
  repeated filler at a given relative depth, then "What is the pass key? The pass key
  is". The last ``tail`` tokens of the prompt are fed through decode steps (so the
  sparse attention answers, not the dense prefill), then the model generates.
* **text**: natural English prose with no task: the docstrings of Python standard
  library modules (always installed, deterministic for a Python version), read in a
  fixed module order from a per-prompt starting offset. The last ``tail`` tokens are
  teacher-forced through decode steps to collect queries.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import asdict, dataclass, field

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
PASSKEY_TAIL = 4  # " pass key is" of the question goes through decode steps
ANSWER_TOKENS = 6  # " " + five digits (SmolLM2's tokenizer splits digits)

TEXT_MODULES = [
    "collections",
    "functools",
    "itertools",
    "pathlib",
    "argparse",
    "json",
    "re",
    "string",
    "textwrap",
    "subprocess",
    "threading",
    "logging",
    "unittest",
    "typing",
    "dataclasses",
    "inspect",
    "os",
    "shutil",
    "tarfile",
    "zipfile",
    "email.message",
    "http.client",
    "urllib.request",
    "asyncio",
    "socket",
    "sqlite3",
    "csv",
    "datetime",
    "decimal",
    "fractions",
    "random",
    "statistics",
    "heapq",
    "bisect",
    "contextlib",
    "enum",
    "abc",
    "io",
    "pickle",
    "copy",
    "pprint",
    "difflib",
    "tempfile",
    "glob",
    "fnmatch",
    "calendar",
]


@dataclass
class Prompt:
    """One study prompt: token ids plus what the evaluation needs to know about them."""

    name: str
    kind: str  # "passkey" | "text"
    target: int  # requested context length in tokens
    ids: list[int] = field(repr=False)
    tail: int  # last tokens fed through decode steps
    gen_tokens: int  # tokens generated greedily after the tail (0 for text)
    depth: float | None = None  # passkey: relative position of the needle
    key: str | None = None  # passkey: the expected answer
    needle_span: tuple[int, int] | None = None  # passkey: token range [start, end) of the needle

    def info(self) -> dict:
        d = asdict(self)
        d.pop("ids")
        d["length"] = len(self.ids)
        return d


def passkey_prompt(tokenizer, target: int, depth: float, seed: int = 0) -> Prompt:
    """A passkey prompt of about ``target`` tokens (never more) with the key at ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    key = str(random.Random(f"{target}-{depth}-{seed}").randint(10000, 99999))
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    fixed = len(enc(INTRO)) + len(enc(NEEDLE.format(key=key))) + len(enc(QUESTION))
    per = len(enc(FILLER * 8)) / 8
    reps = max(2, int((target - fixed) / per))
    while True:
        before = int(round(reps * depth))
        pre = INTRO + FILLER * before
        text = pre + NEEDLE.format(key=key) + FILLER * (reps - before) + QUESTION
        ids = enc(text)
        if len(ids) <= target or reps <= 2:
            break
        reps -= 1
    start = len(enc(pre))
    span = (start, start + len(enc(NEEDLE.format(key=key))))
    return Prompt(
        f"passkey-{target}-d{depth:.2f}-s{seed}", "passkey", target, ids, PASSKEY_TAIL, ANSWER_TOKENS, depth, key, span
    )


def natural_text(n_chars: int, start: int = 0) -> str:
    """About ``n_chars`` characters of stdlib docstrings, modules in TEXT_MODULES order from ``start``."""
    import importlib

    parts: list[str] = []
    total = 0
    mods = TEXT_MODULES[start % len(TEXT_MODULES) :] + TEXT_MODULES[: start % len(TEXT_MODULES)]
    for name in mods * 4:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            doc = inspect.getdoc(obj)
            if doc and (inspect.isfunction(obj) or inspect.isclass(obj)):
                docs.append(f"{attr}: {doc}")
        for d in docs:
            if d:
                parts.append(d)
                total += len(d) + 2
                if total >= n_chars:
                    return "\n\n".join(parts)
    return "\n\n".join(parts)


def text_prompt(tokenizer, target: int, seed: int = 0, tail: int = 8) -> Prompt:
    """A natural-text prompt of exactly ``target`` tokens (when enough text exists)."""
    ids = tokenizer(natural_text(target * 6, start=seed * 7), add_special_tokens=False)["input_ids"]
    if len(ids) < target:
        raise ValueError(f"only {len(ids)} tokens of stdlib docstrings available, fewer than target={target}")
    return Prompt(f"text-{target}-s{seed}", "text", target, ids[:target], tail, 0)

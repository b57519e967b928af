"""Attention traces: post-RoPE queries at decode steps plus the keys/values they attend.

A trace is one prompt run through the model: dense prefill of all but the last
``tail`` tokens, then decode steps (the tail, then greedy generation), each recording
every layer's query. After the last step the cached keys/values (post-RoPE) are kept.
Step ``t``'s query sits at position ``prefix_len + t`` and attends keys
``[0, prefix_len + t]``.

Storage: one safetensors file per trace in the cache directory (default
``~/.cache/questkern/traces``, or ``$QUESTKERN_TRACE_DIR``), written atomically:

* ``q``  [T, L, Hq, D] bfloat16 — the queries of the T decode steps;
* ``k``, ``v`` [L, Hkv, S, D] bfloat16 — S = prefix_len + T cached tokens;
* metadata ``{"schema": "questkern.trace", "version": "1", "info": <json>}`` with the
  prompt description (kind, length, depth, needle span, ...) and the model.

bfloat16 is what a questkern paged cache stores; the study treats the bf16 keys as
the truth (softmax in float32 from bf16 q and k).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from questkern._io import atomic_target

SCHEMA = "questkern.trace"
VERSION = "1"


def default_trace_dir() -> Path:
    return Path(os.environ.get("QUESTKERN_TRACE_DIR") or Path.home() / ".cache" / "questkern" / "traces")


@dataclass
class Trace:
    """q [T, L, Hq, D], k/v [L, Hkv, S, D] (any float dtype), info dict."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    info: dict

    @property
    def prefix_len(self) -> int:
        return int(self.info["prefix_len"])

    @property
    def steps(self) -> int:
        return self.q.shape[0]

    @property
    def num_layers(self) -> int:
        return self.q.shape[1]

    def seq_len(self, step: int) -> int:
        """Keys visible to the query of decode step ``step``."""
        return self.prefix_len + step + 1

    def __post_init__(self):
        T, L, Hq, D = self.q.shape
        if self.k.dim() != 4 or self.k.shape[0] != L or self.k.shape[3] != D or self.v.shape != self.k.shape:
            raise ValueError(
                f"trace tensors disagree: q {tuple(self.q.shape)}, k {tuple(self.k.shape)}, v {tuple(self.v.shape)}"
            )
        if Hq % self.k.shape[1]:
            raise ValueError(f"trace: query heads {Hq} not a multiple of kv heads {self.k.shape[1]}")
        if self.k.shape[2] < self.prefix_len + T:
            raise ValueError(f"trace: {self.k.shape[2]} keys cached, need prefix_len + steps = {self.prefix_len + T}")


def save_trace(trace: Trace, path: Path) -> Path:
    """Write atomically (temp file in the same directory, fsync, os.replace)."""
    from safetensors.torch import save_file

    meta = {"schema": SCHEMA, "version": VERSION, "info": json.dumps(trace.info, sort_keys=True)}
    tensors = {
        "q": trace.q.to(torch.bfloat16).contiguous(),
        "k": trace.k.to(torch.bfloat16).contiguous(),
        "v": trace.v.to(torch.bfloat16).contiguous(),
    }
    with atomic_target(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def read_info(path: Path) -> dict:
    """The info dict of a trace file without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a questkern trace (schema {meta.get('schema')!r}, expected {SCHEMA!r})")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: trace version {meta.get('version')!r}, this questkern reads {VERSION!r}; "
            "regenerate with `questkern quality traces`"
        )
    return json.loads(meta["info"])


def load_trace(path: Path) -> Trace:
    from safetensors.torch import load_file

    info = read_info(path)
    t = load_file(str(path))
    return Trace(t["q"], t["k"], t["v"], info)


def list_traces(trace_dir: Path | None = None) -> list[Path]:
    d = Path(trace_dir) if trace_dir else default_trace_dir()
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def synthetic_traces(
    n: int = 2,
    seq_len: int = 2048,
    layers: int = 4,
    hq: int = 8,
    hkv: int = 2,
    d: int = 64,
    steps: int = 2,
    seed: int = 0,
) -> list[Trace]:
    """Random traces with some structure (channel offsets, a sink, a few aligned keys).

    Used only when no real trace is cached (the objective warns); recall numbers on
    them say little about a real model.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        S = seq_len + steps
        k = torch.randn(layers, hkv, S, d, generator=g)
        k += 2.0 * torch.randn(layers, hkv, 1, d, generator=g)  # per-channel offsets (outlier channels)
        k += torch.randn(layers, hkv, S, 1, generator=g).cumsum(2) * 0.05 * torch.randn(layers, hkv, 1, d, generator=g)
        v = torch.randn(layers, hkv, S, d, generator=g)
        q = torch.randn(steps, layers, hq, d, generator=g)
        hot = torch.randint(0, seq_len, (layers, hkv, 8), generator=g)  # keys the queries look for
        for l in range(layers):
            for h in range(hkv):
                k[l, h, hot[l, h]] += 3.0 * q[:, l, h * (hq // hkv)].mean(0)
        k[:, :, 0] += 4.0 * q.mean((0, 2))[:, None]  # attention sink at position 0
        info = {
            "name": f"synthetic-{i}",
            "kind": "synthetic",
            "length": seq_len,
            "prefix_len": seq_len,
            "target": seq_len,
            "model": "synthetic",
        }
        out.append(Trace(q, k, v, info))
    return out


def load_traces(
    trace_dir: Path | None = None,
    *,
    kinds: tuple[str, ...] | None = None,
    max_len: int | None = None,
    synthetic_fallback: bool = True,
) -> list[Trace]:
    """All cached traces (optionally filtered); synthetic ones with a warning if none."""
    paths = list_traces(trace_dir)
    keep = []
    for p in paths:
        info = read_info(p)
        if kinds and info.get("kind") not in kinds:
            continue
        if max_len and info.get("length", 0) > max_len:
            continue
        keep.append(p)
    if not keep:
        if not synthetic_fallback:
            raise FileNotFoundError(f"no traces in {trace_dir or default_trace_dir()}; run `questkern quality traces`")
        warnings.warn(
            f"questkern.quality: no cached traces in {trace_dir or default_trace_dir()} "
            "(run `questkern quality traces`); using synthetic traces",
            stacklevel=2,
        )
        return synthetic_traces()
    return [load_trace(p) for p in keep]

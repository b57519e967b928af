"""Decoder shapes for model-level benchmarks (``questkern bench --model``, ``questkern generate``).

A :class:`ModelShape` is what one GPU runs per token: the layer count, the widths of the
projections and MLP, and the attention layout. A tensor-parallel preset is one GPU's
shard: heads, MLP width and vocabulary divided by the TP degree, the hidden size whole;
the all-reduces between shards are not modelled (one GPU).

Presets (``--model NAME``)::

    llama3-8b       32 layers, hidden 4096, 32/8 heads, d 128, MLP 14336, vocab 128256
    qwen2.5-7b      28 layers, hidden 3584, 28/4 heads, d 128, MLP 18944, vocab 152064
    llama3-70b-tp8  80 layers, hidden 8192, 8/1 heads per GPU, MLP 28672/8, vocab 128256/8
    tiny            2 layers, hidden 256, 4/2 heads, d 64, MLP 512, vocab 1024 (CPU interpreter)

A custom shape: ``custom:layers=32,hidden=4096,heads=32/8,head_dim=128,mlp=14336,vocab=128256``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    q_heads: int  # query heads on this GPU
    kv_heads: int  # KV heads on this GPU
    head_dim: int
    mlp: int  # MLP (intermediate) width on this GPU
    vocab: int  # lm_head rows on this GPU
    rope_theta: float = 500000.0
    tp: int = 1  # tensor-parallel degree this shard belongs to (1 = the whole model)

    def __post_init__(self):
        for f in ("layers", "hidden", "q_heads", "kv_heads", "head_dim", "mlp", "vocab", "tp"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"model shape {self.name!r}: {f} must be a positive int, got {v!r}")
        if self.q_heads % self.kv_heads:
            raise ValueError(
                f"model shape {self.name!r}: q_heads = {self.q_heads} must be a multiple of kv_heads = {self.kv_heads}"
            )

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    def weight_bytes(self, elem: int = 2) -> int:
        """Bytes of one token step's weights (embedding row excluded: one row is read)."""
        d, hq, hkv, hd = self.hidden, self.q_heads, self.kv_heads, self.head_dim
        per_layer = d * (hq + 2 * hkv) * hd + hq * hd * d + 3 * d * self.mlp + 2 * d
        return elem * (self.layers * per_layer + d * self.vocab + d)

    def kv_bytes(self, batch: int, seq_len: int, elem: int = 2) -> int:
        """K and V of every layer at ``seq_len`` tokens per sequence."""
        return 2 * elem * self.layers * batch * seq_len * self.kv_heads * self.head_dim

    def describe(self) -> str:
        tp = f" (one GPU of TP{self.tp})" if self.tp > 1 else ""
        return (
            f"{self.name}{tp}: {self.layers} layers, hidden {self.hidden}, heads {self.q_heads}/{self.kv_heads}, "
            f"d {self.head_dim}, MLP {self.mlp}, vocab {self.vocab}"
        )


PRESETS: dict[str, ModelShape] = {
    "llama3-8b": ModelShape("llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256),
    "qwen2.5-7b": ModelShape("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, rope_theta=1000000.0),
    "llama3-70b-tp8": ModelShape("llama3-70b-tp8", 80, 8192, 64 // 8, 8 // 8, 128, 28672 // 8, 128256 // 8, tp=8),
    "tiny": ModelShape("tiny", 2, 256, 4, 2, 64, 512, 1024, rope_theta=10000.0),
}

_CUSTOM_KEYS = {"layers", "hidden", "heads", "head_dim", "mlp", "vocab", "rope_theta", "tp"}


def parse_model(text: str) -> ModelShape:
    """A preset name or ``custom:key=value,...`` (keys: layers, hidden, heads=Q/KV, head_dim,
    mlp, vocab, optional rope_theta, tp). Raises ValueError naming what is wrong."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    if not text.startswith("custom:"):
        raise ValueError(
            f"model must be one of {sorted(PRESETS)} or 'custom:layers=..,hidden=..,heads=Q/KV,"
            f"head_dim=..,mlp=..,vocab=..', got {text!r}"
        )
    fields: dict[str, str] = {}
    for part in text[len("custom:") :].split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"custom model: expected key=value, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in _CUSTOM_KEYS:
            raise ValueError(f"custom model: unknown key {k!r}; expected {sorted(_CUSTOM_KEYS)}")
        fields[k] = v
    missing = {"layers", "hidden", "heads", "head_dim", "mlp", "vocab"} - set(fields)
    if missing:
        raise ValueError(f"custom model: missing {sorted(missing)}")
    m = re.fullmatch(r"(\d+)/(\d+)", fields["heads"])
    if not m:
        raise ValueError(f"custom model: heads must be Q/KV like 32/8, got {fields['heads']!r}")

    def _int(k: str) -> int:
        try:
            return int(fields[k])
        except ValueError:
            raise ValueError(f"custom model: {k} must be an integer, got {fields[k]!r}") from None

    shape = ModelShape(
        "custom",
        _int("layers"),
        _int("hidden"),
        int(m.group(1)),
        int(m.group(2)),
        _int("head_dim"),
        _int("mlp"),
        _int("vocab"),
        tp=_int("tp") if "tp" in fields else 1,
    )
    if "rope_theta" in fields:
        try:
            shape = replace(shape, rope_theta=float(fields["rope_theta"]))
        except ValueError:
            raise ValueError(f"custom model: rope_theta must be a number, got {fields['rope_theta']!r}") from None
    return shape


__all__ = ["ModelShape", "PRESETS", "parse_model"]

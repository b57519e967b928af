"""Normalize GPU names once, so the command line, torch and the tables agree.

``torch.cuda.get_device_name()`` strings vary by form factor and memory
("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", ...). Tables are keyed
by the full normalized name (``nvidia-h100-80gb-hbm3``: lower case, runs of
non-alphanumerics to ``-``); families (``h100``) group the variants so that
``--gpu h100`` on the command line matches any H100.
"""

from __future__ import annotations

import re

# family alias -> regex over the normalized key; first match wins, so order specific first
FAMILIES: list[tuple[str, str]] = [
    ("gh200", r"gh200"),
    ("h200", r"\bh200\b|-h200-|h200$"),
    ("h100", r"h100|h800"),
    ("a100", r"a100|a800"),
    ("l40s", r"l40s"),
    ("l40", r"l40\b|l40-|l40$"),
    ("l4", r"(^|-)l4($|-)"),
    ("a10g", r"a10g"),
    ("a10", r"(^|-)a10($|-)"),
    ("4090", r"4090"),
    ("3090", r"3090"),
    ("b200", r"b200"),
    ("v100", r"v100"),
    ("t4", r"(^|-)t4($|-)"),
]

FAMILY_NAMES = [f for f, _ in FAMILIES]


def normalize_gpu_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"GPU name must be a non-empty string, got {name!r}")
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")


def gpu_family(name_or_key: str) -> str | None:
    """Family alias ('h100', 'a100', ...) of a device name or key, or None if unknown."""
    key = normalize_gpu_name(name_or_key)
    for fam, pat in FAMILIES:
        if re.search(pat, key):
            return fam
    return None


def current_gpu_key(device=None) -> str:
    """Normalized key of the current CUDA device, or 'cpu-interpreter' without one."""
    import torch

    if not torch.cuda.is_available():
        return "cpu-interpreter"
    return normalize_gpu_name(torch.cuda.get_device_name(device))

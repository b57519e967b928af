"""Normalize GPU names once, so the command line, torch and the tables agree.

``torch.cuda.get_device_name()`` strings vary by form factor and memory
("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", ...). Tables are keyed
by the full normalized name (``nvidia-h100-80gb-hbm3``: lower case, runs of
non-alphanumerics to ``-``), because the variants differ in SM count and bandwidth and
so in their best configs. Families (``h100``) group the variants so that ``--gpu h100``
on the command line matches any H100; a family never selects another variant's table.

Without a CUDA device the key is ``cpu-interpreter`` (family ``cpu``): kernels then run
in the Triton interpreter and timings mean nothing.
"""

from __future__ import annotations

import re

CPU_KEY = "cpu-interpreter"

# family alias -> regex over the normalized key; first match wins, so specific first.
# (e.g. gh200 before h200, h200 before h100; the 'l4' pattern must not match 'l40s').
FAMILIES: list[tuple[str, str]] = [
    ("cpu", r"^cpu(-interpreter)?$"),
    ("gh200", r"gh200"),
    ("h200", r"(^|-)h200($|-)"),
    ("h100", r"(^|-)h100($|-)"),
    ("h800", r"(^|-)h800($|-)"),
    ("h20", r"(^|-)h20($|-)"),
    ("b200", r"(^|-)b200($|-)"),
    ("a100", r"(^|-)a100($|-)"),
    ("a800", r"(^|-)a800($|-)"),
    ("l40s", r"(^|-)l40s($|-)"),
    ("l40", r"(^|-)l40($|-)"),
    ("l4", r"(^|-)l4($|-)"),
    ("a10g", r"(^|-)a10g($|-)"),
    ("a10", r"(^|-)a10($|-)"),
    ("a40", r"(^|-)a40($|-)"),
    ("a6000", r"rtx-a6000|(^|-)a6000($|-)"),
    ("rtx6000ada", r"rtx-6000-ada"),
    ("5090", r"rtx-5090"),
    ("4090", r"rtx-4090"),
    ("3090", r"rtx-3090"),
    ("v100", r"(^|-)v100($|-)"),
    ("t4", r"(^|-)t4($|-)"),
    ("mi300x", r"mi300x"),
    ("mi250", r"mi250"),
]

FAMILY_NAMES = [f for f, _ in FAMILIES]

# spellings accepted by --gpu besides the family names themselves
ALIASES = {
    "rtx4090": "4090",
    "geforce-rtx-4090": "4090",
    "rtx-4090": "4090",
    "rtx3090": "3090",
    "rtx-3090": "3090",
    "rtx5090": "5090",
    "rtx-5090": "5090",
    "cpu-interpreter": "cpu",
    "interpreter": "cpu",
}


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


def current_gpu_name(device=None) -> str:
    """``torch.cuda.get_device_name`` of ``device``, or 'cpu-interpreter' without CUDA."""
    import torch

    if device is not None and getattr(device, "type", "cuda") != "cuda":
        return CPU_KEY
    if not torch.cuda.is_available():
        return CPU_KEY
    return torch.cuda.get_device_name(device)


def current_gpu_key(device=None) -> str:
    """Normalized key of the current CUDA device, or 'cpu-interpreter' without one."""
    return normalize_gpu_name(current_gpu_name(device))


def check_gpu_arg(gpu: str, detected_name: str) -> str:
    """Check ``--gpu`` against the detected device; return the detected device's key.

    ``gpu`` may be a family alias (``h100``, ``4090``, ``cpu``), which matches any
    variant of that family, or a full key (``nvidia-h100-80gb-hbm3``) or device name as
    torch reports it, which must match the detected device exactly. Raises ``ValueError`` naming
    both otherwise, and for an alias that names no known family.
    """
    if not isinstance(gpu, str) or not gpu.strip():
        raise ValueError(f"--gpu must name a GPU (e.g. {', '.join(FAMILY_NAMES[1:6])}), got {gpu!r}")
    detected_key = normalize_gpu_name(detected_name)
    detected_fam = gpu_family(detected_key)
    want = normalize_gpu_name(gpu)
    if want == detected_key:
        return detected_key
    want_fam = ALIASES.get(want, want if want in FAMILY_NAMES else None)
    if want_fam is None:  # not an alias: a full key or device name must match exactly
        if gpu_family(want) is None:
            raise ValueError(
                f"--gpu {gpu!r} is not a known GPU family or key; known families: {', '.join(FAMILY_NAMES)} "
                f"(the detected device is {detected_name!r}, family {detected_fam or 'unknown'})"
            )
        raise ValueError(
            f"--gpu {gpu!r} (key {want}) does not match the detected device {detected_name!r} "
            f"(key {detected_key}); pass --gpu {detected_fam or detected_key}, or plan only with --dry-run"
        )
    if want_fam != detected_fam:
        raise ValueError(
            f"--gpu {gpu!r} (family {want_fam}) does not match the detected device {detected_name!r} "
            f"(key {detected_key}, family {detected_fam or 'unknown'}); run on a {want_fam} GPU, "
            f"pass --gpu {detected_fam or detected_key}, or plan only with --dry-run"
        )
    return detected_key

"""Paths and expectations of the committed synthetic report fixtures (tests/fixtures/report)."""

from pathlib import Path

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "report"
DATA = FIX / "data"
PROFILES = FIX / "profiles"

# The example report shows GPU A (one GPU per report: GPU B's rows are left out). Every plot it must contain:
GPU = "fixture-gpu-a"
OTHER_GPU = "fixture-gpu-b"
EXPECTED_PLOTS = [
    "summary-fixture-gpu-a",
    "speedup-fixture-gpu-a-1-32-8-128-bf16",
    "speedup-fixture-gpu-a-1-32-32-128-bf16",
    "recall-synthetic-32768",
    "recall-synthetic-8192",
    "quality-attention-recall",
    "latency-fixture-gpu-a-1-32-8-128-bf16",
    "latency-fixture-gpu-a-1-32-32-128-bf16",
    "bandwidth-fixture-gpu-a-1-32-8-128-bf16",
    "bandwidth-fixture-gpu-a-1-32-32-128-bf16",
    "breakdown-fixture-gpu-a-1-32-8-128-bf16-16-2048-shared",
    "breakdown-fixture-gpu-a-1-32-32-128-bf16-16-2048-shared",
    "profile-fixture-gpu-a",
]

"""Paths and expectations of the committed synthetic report fixtures (tests/fixtures/report)."""

from pathlib import Path

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "report"
DATA = FIX / "data"
PROFILES = FIX / "profiles"

# Every plot the fixture report must contain (two GPUs; GPU B has only the MHA shape).
EXPECTED_PLOTS = [
    "latency-fixture-gpu-a-1-32-8-128-bf16", "latency-fixture-gpu-a-1-32-32-128-bf16",
    "latency-fixture-gpu-b-1-32-32-128-bf16",
    "speedup-fixture-gpu-a-1-32-8-128-bf16", "speedup-fixture-gpu-a-1-32-32-128-bf16",
    "speedup-fixture-gpu-b-1-32-32-128-bf16",
    "bandwidth-fixture-gpu-a-1-32-8-128-bf16", "bandwidth-fixture-gpu-a-1-32-32-128-bf16",
    "bandwidth-fixture-gpu-b-1-32-32-128-bf16",
    "breakdown-fixture-gpu-a-1-32-8-128-bf16-16-2048-shared", "breakdown-fixture-gpu-a-1-32-32-128-bf16-16-2048-shared",
    "breakdown-fixture-gpu-b-1-32-32-128-bf16-16-2048-shared",
    "profile-fixture-gpu-a",
    "recall-synthetic-8192", "recall-synthetic-32768",
    "quality-attention-recall",
]

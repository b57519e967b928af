"""scripts/demo.sh, the main job, without a GPU: the whole pipeline at a toy size through the interpreter
(tune -> show-config picks the entry -> bench --check -> report), a verdict and the next commands (~1-2 min)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from questkern.report import read_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_pipeline_and_ends_with_a_verdict(tmp_path):
    env = dict(os.environ, QK_SKIP_SETUP="1", QK_PYTHON=sys.executable, TMPDIR=str(tmp_path), TRITON_INTERPRET="1")
    env.pop("QUESTKERN_TUNING_DIR", None)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "== 1/4 tune" in out and "plan: 2 buckets x 3 trials each" in out
    assert re.search(r"^chosen: +\S+/tables/cpu-interpreter\.json$", out, re.M) and "picked: yes" in out
    assert len(re.findall(r"^    check PASS: selection exact: yes; .* <= 0\.05", out, re.M)) == 4
    assert "check: 4 of 4 cases PASS" in out
    assert "VERDICT: PASS" in out and "Next, on a machine with an NVIDIA GPU" in out
    assert "questkern tune --gpu h100" in out and "questkern bench --check" in out
    assert "Warning" not in out and "nan" not in out  # nothing a user must read past
    (run,) = tmp_path.glob("questkern-demo.*")
    page = (run / "demo.html").read_text()
    manifest = read_manifest(page)
    assert manifest["interpreter"] and manifest["sections"][0] == "summary" and manifest["plots"]
    assert "Triton interpreter on CPU: timings mean nothing" in page and "CUDA-graph replays" not in page
    # the demo writes under its temporary folder only
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before

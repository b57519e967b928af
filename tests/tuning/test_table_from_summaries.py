"""scripts/table_from_summaries.py: a run summary's verified winners become the entries the
tuner would have written, merged by the tuner's rule (a faster existing entry is kept)."""

import json
import subprocess
import sys
from pathlib import Path

from questkern.configs.keys import EntryKey
from questkern.tuning.space import Bucket, OpSpace
from questkern.configs.table import atomic_write_json, load_table, make_entry, new_table

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "table_from_summaries.py"
DECODE = {"pages_per_block": 2, "num_splits": 8, "num_warps": 4, "num_stages": 2, "combine_warps": 4, "fuse_combine": False}


def _bucket(seq_len, latency, verified=True, default=None):
    g = {"page_size": 16, "budget": 2048, "config": DECODE, "latency_us": latency, "default_latency_us": 20.0,
         "verified": verified}
    if default is not None:
        g["default_config"] = default
    return {"study": f"s{seq_len}", "n_evaluated": 7,
            "bucket": {"op": "sparse_decode", "dtype": "bfloat16", "head_dim": 128, "num_q_heads": 32, "num_kv_heads": 8,
                       "seq_len": seq_len, "batch": 1, "page_sizes": [16], "budgets": [2048], "gqa_mode": "shared",
                       "aggregate": "sum"},
            "groups": [g]}


def test_winners_merge_into_the_table_and_faster_existing_entries_stay(tmp_path):
    table = tmp_path / "gpu-x.json"
    doc = new_table("gpu-x", "GPU X")
    key = EntryKey.for_call("sparse_decode", dtype="bfloat16", head_dim=128, group=4, page_size=16, seq_len=32768,
                            batch=1, budget=2048, gqa_mode="shared")
    doc["entries"].append(make_entry(key, DECODE, 5.0, 20.0, trials=3))
    atomic_write_json(table, doc)
    versions = {"torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0", "questkern": "0.1.0"}
    summary = {"gpu_key": "gpu-x", "versions": versions, "date": "2099-01-01T00:00:00+00:00",
               "buckets": [_bucket(32768, 9.0), _bucket(131072, 12.0), _bucket(8192, 1.0, verified=False),
                           _bucket(4096, 3.0, default=dict(DECODE, num_splits=3))]}
    (tmp_path / "run.json").write_text(json.dumps(summary))
    # the summary does not record every default config: without the SM count it cannot be re-derived
    r = subprocess.run([sys.executable, str(SCRIPT), str(table), str(tmp_path / "run.json")], capture_output=True, text=True)
    assert r.returncode != 0 and "--num-sms" in r.stderr and load_table(table)["entries"] == doc["entries"]
    subprocess.run([sys.executable, str(SCRIPT), "--num-sms", "132", str(table), str(tmp_path / "run.json")], check=True)
    out = load_table(table)
    by_seq = {e["seq_bucket"]: e for e in out["entries"]}
    assert set(by_seq) == {12, 15, 17}  # the unverified 8K winner is not taken
    assert by_seq[15]["latency_us"] == 5.0  # the existing faster entry is kept
    assert by_seq[17]["latency_us"] == 12.0 and by_seq[17]["study"] == "s131072" and by_seq[17]["trials"] == 7
    assert by_seq[17]["default_config"] is not None
    # the default the tuner would have written: the heuristic as a point of the bucket's space
    space = OpSpace(Bucket.from_dict(summary["buckets"][1]["bucket"]), num_sms=132)
    assert by_seq[17]["default_config"] == space.candidate(space.default_params(16, 2048)).config.to_dict()
    assert by_seq[12]["default_config"] == dict(DECODE, num_splits=3)  # recorded: taken as is
    assert by_seq[17]["date"] == summary["date"]  # when it was measured
    assert out["versions"] == versions  # the GPU run's versions, not this machine's


def test_a_summary_for_another_gpu_is_refused(tmp_path):
    table = tmp_path / "gpu-x.json"
    atomic_write_json(table, new_table("gpu-x", "GPU X"))
    (tmp_path / "run.json").write_text(json.dumps({"gpu_key": "gpu-y", "versions": {}, "date": "", "buckets": []}))
    r = subprocess.run([sys.executable, str(SCRIPT), str(table), str(tmp_path / "run.json")], capture_output=True, text=True)
    assert r.returncode != 0 and "gpu-y" in r.stderr

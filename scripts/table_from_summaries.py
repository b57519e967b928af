"""Merge the winners recorded in ``questkern tune`` run summaries into a lookup table.

For a GPU run whose table file did not come back but whose summaries (``--summary``
JSON) did: each verified winner becomes the entry the tuner would have written (same
key, config, latency, default latency, trial count and study name; the default config
is the heuristic's, which is what the tuner enqueues first), merged with the tuner's own
rule (an existing faster entry is kept). The table keeps the torch/Triton/CUDA versions
of the summaries (the GPU's), not this machine's.

    python scripts/table_from_summaries.py questkern/tuning/tables/<gpu-key>.json RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from questkern.tuning.keys import EntryKey  # noqa: E402
from questkern.tuning.runtime import heuristic_config  # noqa: E402
from questkern.tuning.schema import validate_table  # noqa: E402
from questkern.tuning.table import atomic_write_json, load_table, make_entry, merge_entries  # noqa: E402


def entries_of(summary: dict) -> list[dict]:
    out = []
    for b in summary["buckets"]:
        bk = b["bucket"]
        group = bk["num_q_heads"] // bk["num_kv_heads"]
        for g in b.get("groups") or []:
            if not g.get("verified", True):
                continue
            op = bk["op"]
            key = EntryKey.for_call(op, dtype=bk["dtype"], head_dim=bk["head_dim"], group=group, page_size=g["page_size"],
                                    seq_len=bk["seq_len"], batch=bk["batch"], budget=g.get("budget"),
                                    gqa_mode=bk.get("gqa_mode"))
            default = heuristic_config(op, head_dim=bk["head_dim"], page_size=g["page_size"], seq_len=bk["seq_len"])
            out.append(make_entry(key, g["config"], g["latency_us"], g["default_latency_us"], trials=b["n_evaluated"],
                                  default_config=default.to_dict(), seq_len=bk["seq_len"], batch=bk["batch"],
                                  num_q_heads=bk["num_q_heads"], num_kv_heads=bk["num_kv_heads"], study=b["study"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("summaries", type=Path, nargs="+")
    args = ap.parse_args()
    doc = load_table(args.table)
    for path in args.summaries:
        summary = json.loads(path.read_text())
        if summary["gpu_key"] != doc["gpu_key"]:
            raise SystemExit(f"{path} is for {summary['gpu_key']}, the table for {doc['gpu_key']}")
        for a in merge_entries(doc, entries_of(summary)):
            print(f"{path.name}: {a.action:14s} {a.key.describe()} ({a.new_latency_us:.2f} us)")
        doc["versions"] = summary["versions"]
        doc["updated"] = max(doc["updated"], summary["date"])
    validate_table(doc, where=str(args.table))
    atomic_write_json(args.table, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

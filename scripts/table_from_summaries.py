"""Merge the winners recorded in ``questkern tune`` run summaries into a lookup table.

For a GPU run whose table file did not come back but whose summaries (``--summary``
JSON) did: each verified winner becomes the entry the tuner would have written, built
the tuner's way (``Bucket.entry_key``; the default config from the summary, or for
summaries written before they recorded it, re-derived as the tuner derives it:
``OpSpace.default_params`` on a device with ``--num-sms`` SMs), dated by the run and
merged with the tuner's rule (an existing faster entry is kept). The table keeps the
torch/Triton/CUDA versions of the summaries (the GPU's), not this machine's.

    python scripts/table_from_summaries.py [--num-sms 132] questkern/tuning/tables/<gpu-key>.json RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from questkern.configs.schema import validate_table  # noqa: E402
from questkern.tuning.space import Bucket, OpSpace  # noqa: E402
from questkern.configs.table import atomic_write_json, load_table, make_entry, merge_entries  # noqa: E402


def entries_of(summary: dict, num_sms: int | None = None) -> list[dict]:
    out = []
    for b in summary["buckets"]:
        bucket = Bucket.from_dict(b["bucket"])
        for g in b.get("groups") or []:
            if not g.get("verified", True):
                continue
            default = g.get("default_config")
            if default is None:
                if num_sms is None:
                    raise SystemExit(
                        f"{b['study']}: the summary does not record the default config; "
                        "pass --num-sms (the tuned GPU's SM count) to re-derive it as the tuner does"
                    )
                space = OpSpace(bucket, num_sms=num_sms)
                default = space.candidate(space.default_params(g["page_size"], g.get("budget"))).config.to_dict()
            e = make_entry(
                bucket.entry_key(g["page_size"], g.get("budget")),
                g["config"],
                g["latency_us"],
                g["default_latency_us"],
                trials=b["n_evaluated"],
                default_config=default,
                seq_len=bucket.seq_len,
                batch=bucket.batch,
                num_q_heads=bucket.num_q_heads,
                num_kv_heads=bucket.num_kv_heads,
                study=b["study"],
            )
            e["date"] = summary["date"]  # when it was measured, not when it was merged
            out.append(e)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--num-sms",
        type=int,
        default=None,
        help="SM count of the tuned GPU, for summaries that do not record their default config",
    )
    ap.add_argument("table", type=Path)
    ap.add_argument("summaries", type=Path, nargs="+")
    args = ap.parse_args()
    doc = load_table(args.table)
    for path in args.summaries:
        summary = json.loads(path.read_text())
        if summary["gpu_key"] != doc["gpu_key"]:
            raise SystemExit(f"{path} is for {summary['gpu_key']}, the table for {doc['gpu_key']}")
        for a in merge_entries(doc, entries_of(summary, args.num_sms)):
            print(f"{path.name}: {a.action:14s} {a.key.describe()} ({a.new_latency_us:.2f} us)")
        doc["versions"] = summary["versions"]
        doc["updated"] = max(doc["updated"], summary["date"])
    validate_table(doc, where=str(args.table))
    atomic_write_json(args.table, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

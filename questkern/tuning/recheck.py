"""Re-time a tuning table against the heuristic default, every entry in one run.

A table's entries come from many tuning runs (each measured its own default). This
module answers, on the GPU it runs on and in one process: for each entry, how fast is
the entry's config and how fast is the *current* heuristic default
(:meth:`questkern.tuning.space.OpSpace.default_params`) of the same bucket, timed back to
back (``rounds`` alternating measurements, the low median of each, as the tuner's
verification does), both checked against the float32 reference first. The ratio
``default_us / table_us`` is what the table buys over the heuristic; its geometric mean
over the entries is the table's speedup measured in one run.

It also finds stale entries: a config that now fails its check (a kernel changed), a
config whose fields this questkern does not know, one the heuristic now beats, or an
entry whose recorded default is no longer what the heuristic chooses.

The run is resumable: the summary JSON is rewritten after every entry and a rerun with
the same ``--summary`` skips the entries it already holds. ``update_table`` writes the
measured latencies back (and, where the heuristic was faster, the heuristic's config:
the tuner's rule "the faster of the best and the default"); it only runs when asked.

    questkern recheck --summary tuning/runs/<gpu-key>-recheck.json          # this GPU's shipped table
    questkern recheck --ops select --max-seq 32k --rounds 5
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from questkern import config as C
from questkern.configs.keys import BUDGET_OPS
from questkern.tuning.observer import geomean
from questkern.tuning.runner import Runner, Timer, WorkloadPool, default_timer
from questkern.configs.schema import entry_key
from questkern.tuning.space import Bucket, Candidate, OpSpace
from questkern.configs.table import (
    atomic_write_json,
    current_versions,
    now_iso,
    read_json,
)

STALE_MARGIN = 1.03  # the heuristic beats an entry's config by more than 3%: the entry is stale
SHAPE_FIELDS = ("seq_len", "batch", "num_q_heads", "num_kv_heads")


def entry_id(e: dict) -> str:
    """A stable, readable id of a table entry (its key), for summaries and resume."""
    k = entry_key(e)
    return "|".join(f"{name}={getattr(k, name)}" for name in k.__dataclass_fields__)


def table_digest(doc: dict) -> str:
    """sha256 of a table's entries (what a recheck measured; ``updated`` has one-second resolution)."""
    return hashlib.sha256(json.dumps(doc["entries"], sort_keys=True).encode()).hexdigest()


def same_table(summary: dict, doc: dict) -> bool:
    """Whether ``summary`` rechecked this version of table ``doc`` (by digest; summaries
    written before the digest was recorded: by the table's ``updated`` stamp)."""
    if "table_digest" in summary:
        return summary["table_digest"] == table_digest(doc)
    return summary.get("table_updated") == doc.get("updated")


def entry_bucket(e: dict) -> Bucket:
    """The bucket an entry was tuned at (its recorded shape); ValueError when the entry
    does not record it (tables written before entries carried their shape)."""
    missing = [f for f in SHAPE_FIELDS if f not in e]
    if missing:
        raise ValueError(f"the entry does not record its shape ({', '.join(missing)} missing)")
    aggregate = "max" if str(e.get("study") or "").endswith("-max") else "sum"
    budgets = (e["budget"],) if e["op"] in BUDGET_OPS else ()
    return Bucket(e["op"], e["dtype"], e["head_dim"], e["num_q_heads"], e["num_kv_heads"], e["seq_len"], e["batch"],
                  (e["page_size"],), budgets, e.get("gqa_mode") or "shared", aggregate)


def _shape_order(e: dict) -> tuple:
    """Entries of one shape run together, so each shape's inputs are built once."""
    return (e["dtype"], e["head_dim"], e.get("num_q_heads", 0), e.get("num_kv_heads", 0), e.get("seq_len", 0),
            e.get("batch", 0), e["page_size"], e["op"], e.get("budget") or 0)


@dataclass
class Pair:
    """One entry's table config and heuristic default, timed back to back."""

    table_us: float | None
    default_us: float | None
    table_fail: str | None = None
    default_fail: str | None = None


def time_pair(runner: Runner, table: Candidate, default: Candidate, rounds: int) -> Pair:
    """``rounds`` alternating measurements of both (just one candidate when they are the
    same config); the low median of each. A candidate that fails once is out."""
    same = table.config == default.config
    times: dict[str, list[float]] = {"table": [], "default": []}
    fails: dict[str, str | None] = {"table": None, "default": None}
    for _ in range(rounds):
        for name, cand in (("table", table),) if same else (("table", table), ("default", default)):
            if fails[name]:
                continue
            out = runner.evaluate(cand)
            if out.ok:
                times[name].append(out.latency_us)
            else:
                fails[name] = out.fail_reason
    if same:
        times["default"], fails["default"] = times["table"], fails["table"]

    def low(name):
        return statistics.median_low(times[name]) if times[name] and not fails[name] else None

    return Pair(low("table"), low("default"), fails["table"], fails["default"])


def _heuristic_changed(e: dict, today) -> bool | None:
    """Whether the entry recorded another heuristic default than ``today``'s config (as
    configs: a field added since, at its default value, is no change); None if unrecorded."""
    stored = e.get("default_config")
    if stored is None:
        return None
    try:
        return C.CONFIG_TYPES[e["op"]].from_dict(stored) != today
    except (ValueError, TypeError):
        return True


def recheck_entry(e: dict, pool: WorkloadPool, timer: Timer, num_sms: int, rounds: int) -> dict:
    """Measure one entry; returns its summary row (never raises for a bad entry)."""
    row = {"id": entry_id(e), "op": e["op"], "dtype": e["dtype"], "head_dim": e["head_dim"], "group": e["group"],
           "page_size": e["page_size"], "budget": e.get("budget"), "gqa_mode": e.get("gqa_mode"),
           **{f: e.get(f) for f in SHAPE_FIELDS}, "config": e["config"],
           "stored_latency_us": e.get("latency_us"), "stored_default_latency_us": e.get("default_latency_us"),
           "table_us": None, "default_us": None, "speedup": None, "same_config": None, "heuristic_changed": None,
           "default_config": None, "error": None, "table_fail": None, "default_fail": None}
    try:
        bucket = entry_bucket(e)
        space = OpSpace(bucket, num_sms=num_sms)
        default = space.candidate(space.default_params())
        table = Candidate(C.CONFIG_TYPES[e["op"]].from_dict(e["config"]), e["page_size"], default.budget, {})
    except (ValueError, TypeError, KeyError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["default_config"] = default.config.to_dict()
    row["same_config"] = table.config == default.config
    row["heuristic_changed"] = _heuristic_changed(e, default.config)
    pair = time_pair(Runner(bucket, pool, timer), table, default, rounds)
    row.update(table_us=pair.table_us, default_us=pair.default_us, table_fail=pair.table_fail,
               default_fail=pair.default_fail)
    if pair.table_us and pair.default_us:
        row["speedup"] = pair.default_us / pair.table_us
    return row


def _geomean(xs) -> float | None:
    """The tuner's geometric mean (:func:`questkern.tuning.observer.geomean`), None instead
    of NaN when nothing was measured (the summary is JSON, which has no NaN)."""
    g = geomean(xs)
    return None if math.isnan(g) else g


def summarize(rows: list[dict]) -> dict:
    """Geometric-mean speedup of the table over the heuristic (overall and per op), and
    the entries that need attention."""
    ok = [r for r in rows if r["speedup"]]
    per_op = {}
    for op in dict.fromkeys(r["op"] for r in rows):
        mine = [r for r in ok if r["op"] == op]
        per_op[op] = {"entries": len(mine), "geomean_speedup": _geomean(r["speedup"] for r in mine),
                      "same_as_default": sum(bool(r["same_config"]) for r in mine)}
    return {"entries": len(rows), "measured": len(ok), "geomean_speedup": _geomean(r["speedup"] for r in ok),
            "min_speedup": min((r["speedup"] for r in ok), default=None),
            "max_speedup": max((r["speedup"] for r in ok), default=None),
            "same_as_default": sum(bool(r["same_config"]) for r in ok), "per_op": per_op,
            "stale": [r["id"] for r in ok if r["speedup"] < 1 / STALE_MARGIN],
            "heuristic_changed": [r["id"] for r in rows if r["heuristic_changed"]],
            "failed": [r["id"] for r in rows if r["error"] or r["table_fail"] or r["default_fail"]]}


def select_entries(doc: dict, ops=None, max_seq: int | None = None, max_batch: int | None = None) -> list[dict]:
    out = [e for e in doc["entries"] if (not ops or e["op"] in ops)
           and (max_seq is None or e.get("seq_len", 0) <= max_seq) and (max_batch is None or e.get("batch", 0) <= max_batch)]
    return sorted(out, key=_shape_order)


def recheck(doc: dict, *, table_path: Path | None, out: Path | None, device: torch.device, num_sms: int,
            timer: Timer | None = None, rounds: int = 3, ops=None, max_seq: int | None = None,
            max_batch: int | None = None, max_time: float | None = None, seed: int = 0, log=print) -> dict:
    """Re-time the selected entries of table ``doc`` on ``device``; the summary document
    (resumed from ``out`` when it holds a recheck of the same table on the same GPU)."""
    from questkern.configs.gpus import current_gpu_name

    entries = select_entries(doc, ops, max_seq, max_batch)
    summary = {"gpu_key": doc["gpu_key"], "device_name": current_gpu_name(device), "versions": current_versions(),
               "table": str(table_path) if table_path else None, "table_updated": doc.get("updated"),
               "table_digest": table_digest(doc), "num_sms": num_sms, "rounds": rounds, "started": now_iso(), "complete": False, "rows": []}
    if out is not None and Path(out).exists():
        old = read_json(Path(out))
        if not same_table(old, doc) or (old.get("gpu_key"), old.get("num_sms"), old.get("rounds")) != \
                (summary["gpu_key"], summary["num_sms"], summary["rounds"]):
            raise ValueError(f"{out} holds a recheck of another table, GPU or --rounds; choose another --summary")
        summary["rows"], summary["started"] = old.get("rows", []), old.get("started", summary["started"])
    done = {r["id"] for r in summary["rows"]}
    todo = [e for e in entries if entry_id(e) not in done]
    log(f"recheck of {len(entries)} entries of {table_path or doc['gpu_key']}: {len(done & {entry_id(e) for e in entries})} "
        f"already measured, {len(todo)} to go ({rounds} alternating rounds each)")
    timer = timer or default_timer(device, 100, 25)
    pool = WorkloadPool(device, seed=seed)
    deadline = time.monotonic() + max_time if max_time else None
    try:
        for i, e in enumerate(todo, 1):
            if deadline is not None and time.monotonic() > deadline:
                log(f"stopped by --max-time after {i - 1} entries: rerun the same command to continue")
                break
            row = recheck_entry(e, pool, timer, num_sms, rounds)
            summary["rows"].append(row)
            log(format_row(row, i, len(todo)))
            if out is not None:
                atomic_write_json(Path(out), _finish(summary, entries))
    finally:
        pool.clear()
    summary = _finish(summary, entries)
    if out is not None:
        atomic_write_json(Path(out), summary)
    return summary


def _finish(summary: dict, entries: list[dict]) -> dict:
    wanted = {entry_id(e) for e in entries}
    mine = [r for r in summary["rows"] if r["id"] in wanted]
    summary["complete"] = wanted <= {r["id"] for r in summary["rows"]}
    summary["finished"] = now_iso()
    summary["summary"] = summarize(mine)
    return summary


def _us(x) -> str:
    return f"{x:9.2f}" if x else "        -"


def format_row(r: dict, i: int, n: int) -> str:
    shape = (f"{r['op']:<13} {r['dtype'][:4]} d{r['head_dim']} {r.get('num_q_heads')}/{r.get('num_kv_heads')} "
             f"s{r.get('seq_len')} b{r.get('batch')} p{r['page_size']}" + (f" k{r['budget']}" if r["budget"] else ""))
    if r["error"]:
        return f"[{i}/{n}] {shape}: not measured: {r['error']}"
    tail = ("same config as the heuristic" if r["same_config"] else
            f"{r['speedup']:.3f}x" if r["speedup"] else
            f"FAILED: {r['table_fail'] or r['default_fail']}")
    if r["speedup"] and r["speedup"] < 1 / STALE_MARGIN:
        tail += "  STALE: the heuristic is faster"
    return f"[{i}/{n}] {shape}: table {_us(r['table_us'])} us  heuristic {_us(r['default_us'])} us  {tail}"


def summary_lines(summary: dict) -> list[str]:
    s = summary["summary"]
    g = s["geomean_speedup"]
    lines = [f"table vs heuristic default on {summary['device_name']}, one run, {summary['rounds']} alternating rounds: "
             f"geometric mean {g:.3f}x over {s['measured']} entries (min {s['min_speedup']:.3f}x, max "
             f"{s['max_speedup']:.3f}x; {s['same_as_default']} entries hold the heuristic's own config)"
             if g else f"no entry could be measured ({s['entries']} selected)"]
    for op, p in s["per_op"].items():
        if p["geomean_speedup"]:
            lines.append(f"  {op:<13} {p['geomean_speedup']:.3f}x over {p['entries']} entries "
                         f"({p['same_as_default']} the heuristic's config)")
    if s["stale"]:
        lines.append(f"{len(s['stale'])} stale entries (the heuristic is more than {100 * (STALE_MARGIN - 1):.0f}% faster): "
                     "rerun `questkern tune` for them, or `questkern recheck --update`")
    if s["heuristic_changed"]:
        lines.append(f"{len(s['heuristic_changed'])} entries were tuned against another heuristic default than today's")
    if s["failed"]:
        lines.append(f"{len(s['failed'])} entries failed or could not be measured (see the summary's rows)")
    if not summary["complete"]:
        lines.append("INCOMPLETE: rerun the same command to measure the rest")
    return lines


def summary_problem(summary) -> str | None:
    """Why ``summary`` is not a recheck summary ``--apply`` can use (a JSON path and what was
    expected), or None. Checks what ``update_table`` reads: no KeyError/TypeError later."""
    if not isinstance(summary, dict):
        return f"$: expected a JSON object, got {type(summary).__name__}"
    if not isinstance(summary.get("gpu_key"), str) or not summary["gpu_key"]:
        return "$.gpu_key: expected the GPU key string"
    rows = summary.get("rows")
    if not isinstance(rows, list):
        return "$.rows: expected a list of rows"
    num = (int, float)
    for i, r in enumerate(rows):
        where = f"$.rows[{i}]"
        if not isinstance(r, dict):
            return f"{where}: expected an object, got {type(r).__name__}"
        if not isinstance(r.get("id"), str):
            return f"{where}.id: expected an entry id string"
        for f in ("error", "table_fail"):
            if r.get(f) is not None and not isinstance(r[f], str):
                return f"{where}.{f}: expected null or a message string"
        for f in ("table_us", "default_us"):
            v = r.get(f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, num) or not v > 0):
                return f"{where}.{f}: expected null or a positive number of microseconds, got {v!r}"
        if r.get("table_us") and r.get("default_us") and not isinstance(r.get("default_config"), dict):
            return f"{where}.default_config: expected the heuristic's config (an object) with its measurement"
    return None


def apply_rows(doc: dict, rows: list[dict]) -> tuple[list[str], int, list[str]]:
    """``update_table``'s work: returns (notes, entries changed, ids of rows that match no
    entry). ``doc["updated"]`` moves only when an entry changed."""
    ids = {entry_id(e) for e in doc["entries"]}
    unmatched = [r["id"] for r in rows if r["id"] not in ids]
    notes = _update_entries(doc, rows)
    changed = sum(1 for e in doc["entries"] if e.get("_changed"))
    for e in doc["entries"]:
        e.pop("_changed", None)
    if changed:
        doc["updated"] = now_iso()
    return notes, changed, unmatched


def update_table(doc: dict, rows: list[dict]) -> list[str]:
    """Write measured latencies into ``doc`` (in place): ``latency_us``, ``default_latency_us``,
    ``default_config`` and ``date``; where the heuristic was faster its config replaces the
    entry's (the tuner keeps the faster of the best and the default). Entries whose own
    config failed its check are left alone and reported. Returns what changed."""
    return apply_rows(doc, rows)[0]


def _update_entries(doc: dict, rows: list[dict]) -> list[str]:
    by_id = {r["id"]: r for r in rows}
    notes = []
    for e in doc["entries"]:
        r = by_id.get(entry_id(e))
        if r is None or r["error"]:
            continue
        if r["table_fail"]:
            notes.append(f"{r['id']}: its config fails now ({r['table_fail']}); left as is: retune it")
            continue
        if not (r["table_us"] and r["default_us"]):
            continue
        e["default_config"] = dict(r["default_config"])
        e["default_latency_us"] = round(r["default_us"], 3)
        if r["default_us"] < r["table_us"]:
            notes.append(f"{r['id']}: the heuristic ({r['default_us']:.2f} us) beat the entry's config "
                         f"({r['table_us']:.2f} us): the entry now holds the heuristic's config")
            e["config"] = dict(r["default_config"])
            e["latency_us"] = round(r["default_us"], 3)
        else:
            e["latency_us"] = round(r["table_us"], 3)
        e["date"] = now_iso()
        e["_changed"] = True
    return notes

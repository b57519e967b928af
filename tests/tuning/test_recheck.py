"""Recheck: a table's entries and the heuristic defaults timed back to back in one run,
on the CPU interpreter at a tiny size (kernels really run and are checked; the clock is
injected), plus resume, stale and failing entries, --update and the command line."""

from __future__ import annotations

import json

import pytest
from tuning_helpers import write_doc

from questkern.cli import main
from questkern.tuning import recheck as R
from questkern.configs.gpus import CPU_KEY
from questkern.configs.keys import EntryKey
from questkern.tuning.space import Bucket, OpSpace
from questkern.configs.table import load_table, make_entry

SHAPE = dict(seq_len=128, batch=1, num_q_heads=2, num_kv_heads=1)
FAST_SELECT = {"chunk_pages": 16, "block_d": 16, "num_warps": 2, "num_stages": 1, "merge_warps": 1, "topk": "radix",
               "fused_merge": False, "tiles_per_program": 1}
FAST_DECODE = {"pages_per_block": 2, "num_splits": 2, "num_warps": 2, "num_stages": 1, "combine_warps": 1,
               "fuse_combine": False}


def default_config(op: str) -> dict:
    b = Bucket(op, "bfloat16", 32, 2, 1, 128, 1, (16,), (32,))
    space = OpSpace(b, num_sms=4)
    return space.candidate(space.default_params()).config.to_dict()


def tiny_entry(op: str, config: dict | None = None, **over) -> dict:
    key = EntryKey.for_call(op, dtype="bfloat16", head_dim=32, group=2, page_size=16, seq_len=128, batch=1,
                            budget=32 if op in ("select", "sparse_decode") else None, gqa_mode="shared")
    e = make_entry(key, config or default_config(op), 5.0, 6.0, trials=3, default_config=default_config(op),
                   study=f"cpu:{op}:x-sum", **SHAPE)
    e.update(over)
    return e


class Clock:
    """Injected timer: the heuristic's config takes 10 us, any other ``other`` us."""

    def __init__(self, other=8.0):
        self.other, self.calls = other, []

    def __call__(self, fn, info):
        self.calls.append((info.op, info.config.to_dict()))
        return 10.0 if info.config.to_dict() == default_config(info.op) else self.other


def run(doc, tmp_path, clock, **kw):
    import torch

    return R.recheck(doc, table_path=None, device=torch.device("cpu"), num_sms=4, timer=clock, log=lambda s: None,
                     **{"out": tmp_path / "recheck.json", **kw})


def table(*entries):
    return {"gpu_key": CPU_KEY, "updated": "2026-11-26T00:00:00+00:00", "entries": list(entries)}


def test_each_entry_and_the_heuristic_are_timed_back_to_back(tmp_path):
    doc = table(tiny_entry("select", FAST_SELECT), tiny_entry("sparse_decode", FAST_DECODE), tiny_entry("dense_decode"))
    clock = Clock(other=8.0)
    s = run(doc, tmp_path, clock, rounds=2)
    rows = {r["op"]: r for r in s["rows"]}
    assert s["complete"] and len(rows) == 3
    assert rows["select"]["table_us"] == 8.0 and rows["select"]["default_us"] == 10.0
    assert rows["select"]["speedup"] == pytest.approx(1.25) and rows["select"]["same_config"] is False
    # the same config is timed once per round and its ratio is exactly 1
    assert rows["dense_decode"]["same_config"] and rows["dense_decode"]["speedup"] == 1.0
    ops = [op for op, _ in clock.calls]
    assert ops.count("select") == 4 and ops.count("sparse_decode") == 4 and ops.count("dense_decode") == 2
    # alternating: table, default, table, default
    sel = [c == FAST_SELECT for op, c in clock.calls if op == "select"]
    assert sel == [True, False, True, False]
    summ = s["summary"]
    assert summ["geomean_speedup"] == pytest.approx((1.25 * 1.25 * 1.0) ** (1 / 3))
    assert summ["per_op"]["select"]["geomean_speedup"] == pytest.approx(1.25)
    assert summ["same_as_default"] == 1 and summ["stale"] == [] and summ["failed"] == []
    lines = R.summary_lines(s)
    assert "geometric mean 1.160x over 3 entries" in lines[0]
    assert json.loads((tmp_path / "recheck.json").read_text())["summary"] == json.loads(json.dumps(summ))


def test_entries_the_heuristic_now_beats_are_stale(tmp_path):
    s = run(table(tiny_entry("select", FAST_SELECT)), tmp_path, Clock(other=10.5), rounds=1)
    (r,) = s["rows"]
    assert r["speedup"] == pytest.approx(10 / 10.5) and s["summary"]["stale"] == [r["id"]]
    assert "STALE" in R.format_row(r, 1, 1) and any("1 stale entries" in x for x in R.summary_lines(s))


def test_entries_this_questkern_cannot_run_are_reported_not_measured(tmp_path):
    invalid = tiny_entry("sparse_decode", {**FAST_DECODE, "pages_per_block": 3})  # not a power of two
    unknown = tiny_entry("select", {**FAST_SELECT, "warp_specialize": True})
    no_shape = tiny_entry("dense_decode")
    del no_shape["num_q_heads"]
    s = run(table(invalid, unknown, no_shape), tmp_path, Clock(), rounds=1)
    rows = {r["op"]: r for r in s["rows"]}
    assert "pages_per_block must be a power of two, got 3" in rows["sparse_decode"]["error"]
    assert "unknown field(s) ['warp_specialize']" in rows["select"]["error"]
    assert "does not record its shape (num_q_heads missing)" in rows["dense_decode"]["error"]
    assert all(r["table_us"] is None and r["speedup"] is None for r in rows.values())
    assert len(s["summary"]["failed"]) == 3 and s["summary"]["geomean_speedup"] is None
    assert "not measured" in R.format_row(rows["select"], 1, 3)


class FailingTuned(Clock):
    """The entry's own config fails (as a config whose kernel changed would); the heuristic runs."""

    def __call__(self, fn, info):
        if info.config.to_dict() != default_config(info.op):
            raise RuntimeError("mismatch stand-in")
        return super().__call__(fn, info)


def test_a_config_that_fails_now_is_out_and_the_heuristic_still_measured(tmp_path):
    s = run(table(tiny_entry("sparse_decode", FAST_DECODE)), tmp_path, FailingTuned(), rounds=3)
    (r,) = s["rows"]
    assert "mismatch stand-in" in r["table_fail"] and r["table_us"] is None and r["default_us"] == 10.0
    assert r["speedup"] is None and s["summary"]["failed"] == [r["id"]]
    assert "FAILED: RuntimeError: mismatch stand-in" in R.format_row(r, 1, 1)


def test_an_interrupted_recheck_resumes_and_a_foreign_summary_is_refused(tmp_path):
    doc = table(tiny_entry("select", FAST_SELECT), tiny_entry("dense_decode"))
    first = run(doc, tmp_path, Clock(), rounds=1, max_time=1e-9)
    assert not first["complete"] and first["rows"] == []
    assert "INCOMPLETE" in R.summary_lines(first)[-1]
    clock = Clock()
    again = run(doc, tmp_path, clock, rounds=1, ops=["select"])
    assert again["complete"] and [r["op"] for r in again["rows"]] == ["select"]
    rest = run(doc, tmp_path, Clock(), rounds=1)
    assert rest["complete"] and sorted(r["op"] for r in rest["rows"]) == ["dense_decode", "select"]
    with pytest.raises(ValueError, match="another table, GPU or --rounds"):
        run(doc, tmp_path, Clock(), rounds=2)


def test_filters_and_order():
    big = tiny_entry("select", seq_len=4096, batch=8)
    doc = table(big, tiny_entry("dense_decode"), tiny_entry("select"))
    assert [e["op"] for e in R.select_entries(doc, ops=["select"])] == ["select", "select"]
    assert R.select_entries(doc, max_seq=1024) == R.select_entries(doc, max_batch=1) != []
    assert big not in R.select_entries(doc, max_seq=1024)


def test_update_writes_measurements_and_keeps_the_faster_config(tmp_path):
    slower = tiny_entry("select", FAST_SELECT)
    faster = tiny_entry("sparse_decode", FAST_DECODE)
    failing = tiny_entry("dense_decode", FAST_DECODE)
    doc = table(slower, faster, failing)

    def timer(fn, info):  # select's tuned config is now slower than the heuristic, decode's faster, dense's fails
        d = info.config.to_dict() == default_config(info.op)
        if info.op == "dense_decode" and not d:
            raise RuntimeError("mismatch stand-in")
        return {"select": 10.0 if d else 12.0, "sparse_decode": 10.0 if d else 7.0}.get(info.op, 10.0)

    s = run(doc, tmp_path, timer, rounds=1)
    notes = R.update_table(doc, s["rows"])
    sel, dec, den = doc["entries"]
    assert sel["config"] == default_config("select") and sel["latency_us"] == 10.0 and sel["default_latency_us"] == 10.0
    assert dec["config"] == FAST_DECODE and dec["latency_us"] == 7.0 and dec["default_latency_us"] == 10.0
    assert den["config"] == FAST_DECODE and den["latency_us"] == 5.0  # left alone, reported
    assert any("the heuristic (10.00 us) beat the entry's config" in n for n in notes)
    assert any("its config fails now" in n for n in notes)


def test_cli_end_to_end_on_the_interpreter(dirs, capsys):
    path = write_doc(dirs["env"], [tiny_entry("select", FAST_SELECT), tiny_entry("sparse_decode")], gpu_key=CPU_KEY)
    summary = dirs["data"] / "r.json"
    assert main(["recheck", "--rounds", "1", "--summary", str(summary), "--update"]) == 0
    out = capsys.readouterr().out
    assert "the timings mean nothing" in out and f"recheck of 2 entries of {path}" in out
    assert "table vs heuristic default on cpu-interpreter, one run" in out and f"updated {path}" in out
    assert json.loads(summary.read_text())["complete"] is True
    assert all(e["date"] != "" for e in load_table(path)["entries"])


def test_cli_errors_name_what_is_wrong(dirs, capsys):
    assert main(["recheck"]) == 2
    assert "no tuning table for cpu-interpreter (cpu-interpreter.json)" in capsys.readouterr().err
    other = write_doc(dirs["env"], [tiny_entry("select")])  # an H100 table
    assert main(["recheck", "--table", str(other)]) == 2
    assert "holds the table of 'nvidia-h100-80gb-hbm3', but this device is 'cpu-interpreter' (a table can only" in capsys.readouterr().err
    bad = dirs["env"] / "broken.json"
    bad.write_text("{")
    assert main(["recheck", "--table", str(bad)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_apply_a_summary_later_without_a_device_and_refuse_a_changed_table(dirs, capsys):
    """--apply: an H100 recheck's rows applied on this CPU machine; a table changed since is refused."""
    e_sel, e_dec = tiny_entry("select", FAST_SELECT), tiny_entry("sparse_decode", FAST_DECODE)
    path = write_doc(dirs["env"], [e_sel, e_dec])  # an H100 table: no H100 here
    doc = load_table(path)
    summary = {"gpu_key": doc["gpu_key"], "table_updated": doc["updated"], "table_digest": R.table_digest(doc),
               "complete": True, "rows": [
        {"id": R.entry_id(e_sel), "error": None, "table_fail": None, "table_us": 12.0, "default_us": 10.0,
         "default_config": default_config("select")},
        {"id": R.entry_id(e_dec), "error": None, "table_fail": None, "table_us": 7.0, "default_us": 10.0,
         "default_config": default_config("sparse_decode")}]}
    f = dirs["data"] / "s.json"
    f.write_text(json.dumps(summary))
    assert main(["recheck", "--apply", str(f)]) == 0
    assert "the heuristic (10.00 us) beat the entry's config (12.00 us)" in capsys.readouterr().out
    sel, dec = load_table(path)["entries"]
    assert sel["config"] == default_config("select") and dec["config"] == FAST_DECODE and dec["latency_us"] == 7.0
    assert main(["recheck", "--apply", str(f)]) == 2  # the table's 'updated' moved on: recheck again
    assert "changed since the recheck" in capsys.readouterr().err
    f.write_text("[]")
    assert main(["recheck", "--apply", str(f)]) == 2
    assert "is not a recheck summary" in capsys.readouterr().err


def test_same_table_by_digest_or_for_older_summaries_by_updated_stamp():
    doc = table(tiny_entry("select"))
    assert R.same_table({"table_digest": R.table_digest(doc)}, doc)
    changed = {**doc, "entries": [tiny_entry("select", FAST_SELECT)]}
    assert not R.same_table({"table_digest": R.table_digest(doc), "table_updated": doc["updated"]}, changed)
    assert R.same_table({"table_updated": doc["updated"]}, changed)  # no digest recorded: the stamp decides


def test_heuristic_changed_compares_configs_not_dicts():
    from questkern import config as C

    today = C.CONFIG_TYPES["select"].from_dict(default_config("select"))
    older = {k: v for k, v in default_config("select").items() if k not in ("fused_merge", "tiles_per_program")}
    assert R._heuristic_changed(tiny_entry("select", default_config=older), today) is False  # fields added since
    assert R._heuristic_changed(tiny_entry("select", default_config={**older, "num_warps": 16}), today) is True
    assert R._heuristic_changed(tiny_entry("select", default_config={"gone": 1}), today) is True
    assert R._heuristic_changed(tiny_entry("select", default_config=None), today) is None


def test_apply_refuses_a_table_of_another_gpu(dirs, capsys):
    cpu_table = write_doc(dirs["env"], [tiny_entry("select")], gpu_key=CPU_KEY)
    f = dirs["data"] / "s.json"
    f.write_text(json.dumps({"gpu_key": "nvidia-h100-80gb-hbm3", "table_updated": "x", "complete": True, "rows": []}))
    assert main(["recheck", "--apply", str(f), "--table", str(cpu_table)]) == 2
    err = capsys.readouterr().err
    assert "holds the table of 'cpu-interpreter', but --apply" in err and "rechecked a table of 'nvidia-h100-80gb-hbm3'" in err


@pytest.mark.parametrize("flag,value", [("--max-time", "-5"), ("--max-time", "soon"), ("--rounds", "0"),
                                        ("--max-seq", "lots"), ("--ops", "select,warp")])
def test_bad_flags_are_clear_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["recheck", flag, value])
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def _apply_setup(dirs):
    e_sel = tiny_entry("select", FAST_SELECT)
    path = write_doc(dirs["env"], [e_sel])
    doc = load_table(path)
    base = {"gpu_key": doc["gpu_key"], "table_updated": doc["updated"], "table_digest": R.table_digest(doc),
            "complete": True}
    row = {"id": R.entry_id(e_sel), "error": None, "table_fail": None, "table_us": 12.0, "default_us": 10.0,
           "default_config": default_config("select")}
    return path, base, row


@pytest.mark.parametrize("mutate,expect", [
    (lambda s, r: s.pop("rows"), r"\$.rows: expected a list"),
    (lambda s, r: s.update(rows={"a": 1}), r"\$.rows: expected a list"),
    (lambda s, r: s.update(rows=[5]), r"\$.rows\[0\]: expected an object, got int"),
    (lambda s, r: r.pop("id"), r"\$.rows\[0\].id: expected an entry id"),
    (lambda s, r: r.update(table_us="fast"), r"\$.rows\[0\].table_us: expected null or a positive number"),
    (lambda s, r: r.pop("default_config"), r"\$.rows\[0\].default_config: expected the heuristic's config"),
    (lambda s, r: s.update(gpu_key=7), r"\$.gpu_key: expected the GPU key"),
])
def test_apply_a_malformed_summary_is_one_line_error(dirs, capsys, mutate, expect):
    import re

    path, summary, row = _apply_setup(dirs)
    summary["rows"] = [row]
    mutate(summary, row)
    before = path.read_text()
    f = dirs["data"] / "s.json"
    f.write_text(json.dumps(summary))
    assert main(["recheck", "--apply", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("questkern recheck: error: --apply") and "is not a recheck summary" in err
    assert re.search(expect, err) and "Traceback" not in err
    assert path.read_text() == before


def test_apply_rows_matching_no_entry_change_nothing_and_say_so(dirs, capsys):
    path, summary, row = _apply_setup(dirs)
    summary["rows"] = [{**row, "id": "op=select|nothing=here"}]
    before = path.read_text()
    f = dirs["data"] / "s.json"
    f.write_text(json.dumps(summary))
    assert main(["recheck", "--apply", str(f)]) == 1
    out, err = capsys.readouterr()
    assert "1 row(s) match no entry" in out and "the table is untouched" in out
    assert "none of its 1 rows changed an entry" in err and "updated" not in out.split("untouched")[-1]
    assert path.read_text() == before  # the timestamp did not move


def test_apply_a_missing_or_directory_summary(dirs, capsys):
    assert main(["recheck", "--apply", str(dirs["data"] / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["recheck", "--apply", str(dirs["data"])]) == 2
    assert "is a directory" in capsys.readouterr().err

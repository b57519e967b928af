"""Tables as data: schema validation, round trip, atomic writes, merge rules."""

from __future__ import annotations

import json
import os

import pytest

from questkern.configs import paths, table
from questkern.configs.schema import TableError, schema_errors, validate_table
from questkern.configs.table import load_table, write_table

from tuning_helpers import GPU, GPU_NAME, entry, write_doc


def test_round_trip(tmp_path):
    entries = [entry("select", seq=8192), entry("sparse_decode", seq=32768, batch=8),
               entry("dense_decode", seq=131072, budget=None, gqa_mode=None), entry("metadata")]
    res = write_table(tmp_path, GPU, GPU_NAME, entries)
    assert res.path == tmp_path / f"{GPU}.json"
    doc = load_table(res.path)
    assert doc["entries"] == entries
    assert doc["gpu_key"] == GPU and doc["device_name"] == GPU_NAME and doc["gpu_family"] == "h100"
    assert set(doc["versions"]) == {"torch", "triton", "cuda", "questkern"}
    # keys are normalized per op: dense_decode and metadata carry no budget, metadata no group
    assert [(e["op"], e["budget"], e["gqa_mode"], e["group"]) for e in doc["entries"]] == [
        ("select", 2048, "shared", 4), ("sparse_decode", 2048, "shared", 4), ("dense_decode", None, None, 4),
        ("metadata", None, None, 1)]


def test_shipped_schema_file_is_valid_json_and_package_data():
    from questkern.configs.schema import SCHEMA_PATH

    assert json.loads(SCHEMA_PATH.read_text())["$defs"]["entry"]


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d.pop("entries"), "missing required field 'entries'"),
    (lambda d: d.update(schema_version=2), r"\$\.schema_version: expected 1"),
    (lambda d: d.update(gpu_key="NVIDIA H100"), r"\$\.gpu_key: 'NVIDIA H100' does not match"),
    (lambda d: d["entries"][0].update(op="topk"), r"\$\.entries\[0\]\.op: expected one of"),
    (lambda d: d["entries"][0].update(head_dim="128"), r"\$\.entries\[0\]\.head_dim: expected integer"),
    (lambda d: d["entries"][0].update(latency_us=float("nan")), r"latency_us: expected number"),
    (lambda d: d["entries"][0].update(extra=1), r"\$\.entries\[0\]: unexpected field 'extra'"),
    (lambda d: d["entries"][0]["config"].update(num_warps=3), r"num_warps must be one of"),
    (lambda d: d["entries"][0]["config"].update(tile=3), r"unknown field\(s\) \['tile'\]"),
    (lambda d: d["entries"].append(dict(d["entries"][0])), r"\$\.entries\[1\]: same key as \$\.entries\[0\]"),
    (lambda d: d["versions"].update(triton="x"), r"\$\.versions\.triton"),
])
def test_validation_errors_name_the_path(mutate, expect):
    doc = table.new_table(GPU, GPU_NAME)
    doc["entries"] = [entry()]
    validate_table(doc)  # valid before the mutation
    mutate(doc)
    with pytest.raises(TableError, match=expect):
        validate_table(doc)


def test_schema_subset_rejects_unknown_keywords(monkeypatch):
    from questkern.configs import schema

    monkeypatch.setattr(schema, "load_schema", lambda: {"type": "object", "oneOf": []})
    with pytest.raises(ValueError, match="unsupported keyword"):
        schema_errors({})


def test_atomic_write_failure_leaves_old_file(tmp_path, monkeypatch):
    path = write_doc(tmp_path, [entry(latency=10.0)])
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(table.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_table(tmp_path, GPU, GPU_NAME, [entry(seq=8192)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind


def test_atomic_write_failure_while_serializing(tmp_path, monkeypatch):
    path = write_doc(tmp_path, [entry(latency=10.0)])
    before = path.read_bytes()

    def half_then_fail(doc, f, **kw):
        f.write('{"schema_version": 1, "entr')
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(table.json, "dump", half_then_fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        table.atomic_write_json(path, {"x": 1})
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


def test_merge_keeps_faster_existing_entry_unless_forced(tmp_path):
    write_table(tmp_path, GPU, GPU_NAME, [entry(seq=32768, latency=10.0), entry(seq=8192, latency=5.0)])
    slower = entry(seq=32768, latency=12.0, config={"chunk_pages": 16, "block_d": 16, "num_warps": 2,
                                                     "num_stages": 1, "merge_warps": 1})
    faster = entry(seq=8192, latency=4.0)
    new = entry(seq=131072, latency=20.0)
    res = write_table(tmp_path, GPU, GPU_NAME, [slower, faster, new])
    assert [a.action for a in res.actions] == ["kept-existing", "replaced", "added"]
    doc = load_table(res.path)
    by_seq = {e["seq_bucket"]: e["latency_us"] for e in doc["entries"]}
    assert by_seq == {15: 10.0, 13: 4.0, 17: 20.0}
    res = write_table(tmp_path, GPU, GPU_NAME, [slower], force=True)
    assert [a.action for a in res.actions] == ["forced"]
    e = [e for e in load_table(res.path)["entries"] if e["seq_bucket"] == 15][0]
    assert e["latency_us"] == 12.0 and e["config"]["chunk_pages"] == 16


def test_merge_refuses_other_triton_major_unless_forced(tmp_path):
    path = write_doc(tmp_path, [entry(latency=1.0)], triton="2.1.0")
    with pytest.raises(TableError, match="Triton 2.1.0.*another major.*--force"):
        write_table(tmp_path, GPU, GPU_NAME, [entry(seq=8192)])
    res = write_table(tmp_path, GPU, GPU_NAME, [entry(seq=8192)], force=True)
    assert res.backup is not None and res.backup.exists()  # the old table is kept aside, not lost
    assert json.loads(res.backup.read_text())["versions"]["triton"] == "2.1.0"
    assert [e["seq_bucket"] for e in load_table(path)["entries"]] == [13]


def test_merge_into_corrupt_file_needs_force(tmp_path):
    path = paths.table_path(tmp_path, GPU)
    path.write_text("{oops")
    with pytest.raises(TableError, match="not valid JSON.*--force"):
        write_table(tmp_path, GPU, GPU_NAME, [entry()])
    assert path.read_text() == "{oops"
    res = write_table(tmp_path, GPU, GPU_NAME, [entry()], force=True)
    assert res.backup.read_text() == "{oops" and load_table(path)["entries"]


def test_written_file_is_fsynced_json(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(table.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_table(tmp_path, GPU, GPU_NAME, [entry()])
    assert len(synced) >= 1


def test_pareto_file_merge(tmp_path):
    pt = {"page_size": 16, "budget": 2048, "latency_us": 10.0, "quality": 0.9, "config": {"num_warps": 2}, "trial": 3}
    f1 = {"study": "s1", "bucket": {}, "objectives": ["latency_us", "quality"], "points": [pt]}
    f2 = {"study": "s2", "bucket": {}, "objectives": ["latency_us", "quality"], "points": []}
    p = table.write_pareto(tmp_path, GPU, [f1])
    table.write_pareto(tmp_path, GPU, [f2, {**f1, "points": [{**pt, "trial": 9}]}])
    doc = json.loads(p.read_text())
    assert [f["study"] for f in doc["fronts"]] == ["s1", "s2"]
    assert doc["fronts"][0]["points"][0]["trial"] == 9
    assert p.name == f"{GPU}.pareto.json"

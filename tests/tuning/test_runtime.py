"""Runtime lookup: exact and nearest buckets, source precedence, caching, and every
fallback warning exactly once and returning the heuristic."""

from __future__ import annotations

import warnings

import pytest
import torch

from questkern import config as C
from questkern.configs import runtime
from questkern.configs.gpus import CPU_KEY
from questkern.configs.runtime import TuningTableWarning, explain_config, resolve_config

from tuning_helpers import GPU, entry, write_doc

CALL = dict(device=torch.device("cpu"), dtype=torch.bfloat16, head_dim=128, group=4, page_size=16, batch=1)
HEURISTIC_SELECT = C.default_select_config(-(-32768 // 16), 128)


def lookup(op="select", seq=32768, gpu_key=GPU, **kw):
    args = {**CALL, **kw}
    return resolve_config(op, seq_len=seq, gpu_key=gpu_key, **args)


def no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_exact_entry(dirs):
    write_doc(dirs["shipped"], [entry(seq=32768, latency=9.0)])
    cfg, src = no_warnings(lookup)
    assert cfg == C.SelectConfig(chunk_pages=128, block_d=32, num_warps=4, num_stages=1, merge_warps=2)
    assert src.startswith("table nvidia-h100-80gb-hbm3.json") and src.endswith("(exact)")


def test_seq_in_the_same_bucket_is_exact(dirs):
    write_doc(dirs["shipped"], [entry(seq=32768)])
    r = explain_config("select", seq_len=20000, gpu_key=GPU, **CALL)  # (2^14, 2^15] -> bucket 15
    assert r.distance == 0 and r.entry is not None


def test_nearest_bucket_by_log_distance(dirs):
    a = entry(seq=8192, config={"chunk_pages": 16, "block_d": 16, "num_warps": 2, "num_stages": 1, "merge_warps": 1})
    b = entry(seq=65536, config={"chunk_pages": 64, "block_d": 64, "num_warps": 8, "num_stages": 1, "merge_warps": 8})
    write_doc(dirs["shipped"], [a, b])
    r = explain_config("select", seq_len=32768, gpu_key=GPU, **CALL)
    assert r.entry["seq_bucket"] == 16 and r.distance == 1
    assert r.config.chunk_pages == 64 and "nearest, distance 1" in r.source
    r = explain_config("select", seq_len=4096, gpu_key=GPU, **CALL)
    assert r.entry["seq_bucket"] == 13 and r.distance == 1


def test_nearest_counts_batch_too(dirs):
    far_batch = entry(seq=32768, batch=1)
    near = entry(seq=16384, batch=8, config={"chunk_pages": 32, "block_d": 32, "num_warps": 2, "num_stages": 1,
                                              "merge_warps": 1})
    write_doc(dirs["shipped"], [far_batch, near])
    r = explain_config("select", seq_len=32768, gpu_key=GPU, **{**CALL, "batch": 8})
    assert (r.entry["seq_bucket"], r.entry["batch_bucket"], r.distance) == (14, 3, 1)


def test_tie_prefers_the_longer_sequence_bucket(dirs):
    write_doc(dirs["shipped"], [entry(seq=8192), entry(seq=131072, config={"chunk_pages": 256, "block_d": 64,
                                                                          "num_warps": 8, "num_stages": 1, "merge_warps": 4})])
    r = explain_config("select", seq_len=32768, gpu_key=GPU, **CALL)
    assert r.distance == 2 and r.entry["seq_bucket"] == 17


def test_budget_and_gqa_mode(dirs):
    e1 = entry(budget=1024, config={"chunk_pages": 16, "block_d": 16, "num_warps": 2, "num_stages": 1, "merge_warps": 1})
    e4 = entry(budget=4096, config={"chunk_pages": 32, "block_d": 16, "num_warps": 2, "num_stages": 1, "merge_warps": 1})
    write_doc(dirs["shipped"], [e1, e4])
    assert explain_config("select", seq_len=32768, budget=4096, gpu_key=GPU, **CALL).config.chunk_pages == 32
    assert explain_config("select", seq_len=32768, budget=1024, gpu_key=GPU, **CALL).config.chunk_pages == 16
    # no budget given: both qualify at distance 0; equally far from 2048 -> the larger budget
    r = explain_config("select", seq_len=32768, gpu_key=GPU, **CALL)
    assert r.distance == 0 and r.config.chunk_pages == 32
    # another GQA mode is not a candidate
    with pytest.warns(TuningTableWarning, match="no entry for select"):
        cfg, src = lookup(gqa_mode="per_head")
    assert cfg == HEURISTIC_SELECT and src.startswith("heuristic")


@pytest.mark.parametrize("field,value", [("page_size", 32), ("head_dim", 64), ("group", 1), ("dtype", torch.float16)])
def test_exact_fields_must_match(dirs, field, value):
    write_doc(dirs["shipped"], [entry()])
    with pytest.warns(TuningTableWarning, match="no entry for select"):
        cfg, src = lookup(**{field: value})
    assert src.startswith("heuristic (no entry for select")


def test_env_dir_hides_the_same_entry_in_shipped_and_merges_the_rest(dirs):
    write_doc(dirs["shipped"], [entry(seq=32768, latency=5.0), entry(seq=8192)])
    override = entry(seq=32768, config={"chunk_pages": 512, "block_d": 16, "num_warps": 16, "num_stages": 1,
                                        "merge_warps": 1})
    write_doc(dirs["env"], [override])
    assert lookup()[0].chunk_pages == 512
    r = explain_config("select", seq_len=8192, gpu_key=GPU, **CALL)
    assert r.distance == 0 and r.path.parent == dirs["shipped"]
    assert [s.status for s in r.tables.sources] == ["loaded", "missing", "loaded"]


def test_user_cache_dir_is_read(dirs):
    write_doc(dirs["cache"], [entry()])
    assert lookup()[1].startswith("table")


def test_parse_is_cached_until_clear(dirs, monkeypatch):
    from questkern.configs import table

    path = write_doc(dirs["shipped"], [entry()])
    calls = []
    real = table.load_table
    monkeypatch.setattr(table, "load_table", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        lookup()
    assert len(calls) == 1
    path.unlink()
    assert lookup()[1].startswith("table")  # still the cached parse
    runtime.clear_cache()
    with pytest.warns(TuningTableWarning):
        assert lookup()[1].startswith("heuristic")


def _fallback_once(expect, **kw):
    """First lookup warns (matching ``expect``) and returns the heuristic; later ones are silent."""
    with pytest.warns(TuningTableWarning, match=expect) as rec:
        cfg, src = lookup(**kw)
    assert len(rec) == 1
    assert cfg == HEURISTIC_SELECT and src.startswith("heuristic")
    cfg2, _ = no_warnings(lambda: lookup(**kw))
    assert cfg2 == HEURISTIC_SELECT
    no_warnings(lambda: lookup("dense_decode", **kw))  # same reason, another op: still one warning


def test_unknown_gpu_warns_once(dirs):
    _fallback_once("no tuning table for GPU acme-gpu-9000", gpu_key="acme-gpu-9000")


def test_other_triton_major_warns_once(dirs):
    write_doc(dirs["shipped"], [entry()], triton="2.3.1")
    _fallback_once("tuned with Triton 2.3.1.*another major version")


def test_corrupt_file_warns_once(dirs):
    (dirs["shipped"] / f"{GPU}.json").write_text('{"schema_version": 1, "entries": [')
    _fallback_once("not valid JSON")


def test_schema_invalid_file_warns_once(dirs):
    bad = entry()
    bad["latency_us"] = -3.0
    write_doc(dirs["shipped"], [bad])
    _fallback_once(r"not a valid questkern tuning table: \$\.entries\[0\]\.latency_us: must be > 0")


def test_invalid_config_field_is_rejected(dirs):
    bad = entry(config={"chunk_pages": 100, "block_d": 32, "num_warps": 4, "num_stages": 1, "merge_warps": 2})
    write_doc(dirs["shipped"], [bad])
    _fallback_once("chunk_pages must be a power of two")


def test_bad_file_in_one_source_does_not_hide_another(dirs):
    (dirs["env"] / f"{GPU}.json").write_text("garbage")
    write_doc(dirs["shipped"], [entry()])
    with pytest.warns(TuningTableWarning, match="not valid JSON"):
        cfg, src = lookup()
    assert src.startswith("table")


def test_cpu_interpreter_without_table_is_silent(dirs):
    cfg, src = no_warnings(lambda: resolve_config("select", seq_len=32768, **CALL))
    assert cfg == HEURISTIC_SELECT and src == "heuristic (no table for the CPU interpreter)"


def test_bad_op_is_an_error(dirs):
    with pytest.raises(ValueError, match="op must be one of"):
        lookup("topk")


def test_questdecode_plan_uses_the_table(dirs):
    import questkern

    sel = {"chunk_pages": 16, "block_d": 32, "num_warps": 2, "num_stages": 1, "merge_warps": 1}
    dec = {"pages_per_block": 2, "num_splits": 2, "num_warps": 2, "num_stages": 1, "combine_warps": 1}
    write_doc(dirs["env"], [entry("select", seq=64, group=2, head_dim=32, config=sel),
                            entry("sparse_decode", seq=64, group=2, head_dim=32, config=dec),
                            entry("metadata", seq=64, head_dim=32, config={"num_warps": 1})], gpu_key=CPU_KEY)
    cache = questkern.PagedKVCache(1, 64, 1, 32, page_size=16, dtype=torch.bfloat16)
    plan = no_warnings(lambda: (
        cache.append(torch.randn(1, 64, 1, 32).to(torch.bfloat16), torch.randn(1, 64, 1, 32).to(torch.bfloat16)),
        questkern.QuestDecode(32).plan(cache, num_q_heads=2))[1])
    assert plan.select_config == C.SelectConfig(**sel) and plan.decode_config == C.DecodeConfig(**dec)
    assert plan.sources["select"].startswith("table cpu-interpreter.json")
    assert plan.sources["sparse_decode"].startswith("table cpu-interpreter.json")


def test_entry_violating_a_kernel_constraint_falls_back_with_one_warning(dirs):
    """pages_per_block x page_size < 16 passes the schema but not tl.dot: at load time one
    warning naming the file and the entry, and the calls it would serve get the heuristic
    (before: plan() took it and run() failed with a message naming no file)."""
    import questkern

    bad = {"pages_per_block": 1, "num_splits": 2, "num_warps": 2, "num_stages": 1, "combine_warps": 1}
    sel = {"chunk_pages": 16, "block_d": 32, "num_warps": 2, "num_stages": 1, "merge_warps": 1}
    path = write_doc(dirs["env"], [entry("sparse_decode", seq=64, page=8, group=2, head_dim=32, config=bad),
                                   entry("select", seq=64, page=8, group=2, head_dim=32, config=sel)],
                     gpu_key=CPU_KEY)
    cache = questkern.PagedKVCache(1, 64, 1, 32, page_size=8, dtype=torch.bfloat16, device="cpu")
    with pytest.warns(TuningTableWarning) as rec:  # the table is read on the first lookup (the append's)
        cache.append(torch.randn(1, 64, 1, 32).bfloat16(), torch.randn(1, 64, 1, 32).bfloat16())
        plan = questkern.QuestDecode(32).plan(cache, num_q_heads=2)
    msgs = [str(w.message) for w in rec if "kernel constraint" in str(w.message)]
    assert len(msgs) == 1 and str(path) in msgs[0] and "entry 0 [sparse_decode bfloat16 d32 group 2 page 8" in msgs[0]
    assert "pages_per_block * page_size = 1 x 8 = 8 tokens" in msgs[0]
    assert plan.decode_config == C.default_decode_config(8, 32)
    assert plan.sources["sparse_decode"].startswith("heuristic (tuning table") and str(path) in plan.sources["sparse_decode"]
    assert plan.select_config == C.SelectConfig(**sel)  # the valid entry of the same file is still used
    no_warnings(lambda: questkern.QuestDecode(32).plan(cache, num_q_heads=2))  # warned once
    w = questkern.QuestDecode(32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w.plan(cache, num_q_heads=2)
    w.run(torch.randn(1, 2, 32).bfloat16())

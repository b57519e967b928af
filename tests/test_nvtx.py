"""NVTX annotation: names, the on/off switch, and the ranges every decode step opens."""

import os
import subprocess
import sys

import pytest
import torch

import questkern
from questkern import _nvtx as nvtx
from questkern._nvtx import annotate, check_range_name, record_ranges, set_nvtx_enabled, trial_range


def _tiny_cache(seq=40, hkv=1, d=32, page=8):
    cache = questkern.PagedKVCache(1, seq + 4, hkv, d, page_size=page, dtype=torch.float16, device="cpu")
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, seq, hkv, d, generator=g).half()  # [B, T, Hkv, D]
    cache.append(k, torch.randn(1, seq, hkv, d, generator=g).half())
    return cache


@pytest.mark.parametrize(
    "bad", ["questkern/select", "questkern.select/inner", "select", "questkern.", "questkern.a b", ""]
)
def test_bad_names_rejected_even_when_disabled(bad):
    set_nvtx_enabled(False)
    try:
        with pytest.raises(ValueError):
            annotate(bad)
    finally:
        set_nvtx_enabled(True)


def test_name_rules():
    for name in nvtx.RANGE_NAMES:
        assert check_range_name(name) == name
        assert "/" not in name
    with pytest.raises(TypeError):
        check_range_name(3)


def test_idle_annotate_is_the_shared_null_context():
    # no NVTX tool is attached in the test process: nothing to do, nothing allocated
    assert not nvtx.nvtx_enabled()
    assert annotate("questkern.select", batch=1) is nvtx._NULL
    with record_ranges():
        assert annotate("questkern.select", batch=1) is not nvtx._NULL


def test_set_nvtx_enabled_checks_type():
    with pytest.raises(TypeError):
        set_nvtx_enabled(0)
    set_nvtx_enabled(False)
    assert not nvtx.nvtx_switched_on()
    set_nvtx_enabled(True)
    assert nvtx.nvtx_switched_on()


@pytest.mark.parametrize(
    "value,expected,warns",
    [("0", False, False), ("off", False, False), ("1", True, False), ("yes", True, False), ("maybe", True, True)],
)
def test_env_switch(value, expected, warns):
    code = (
        "import warnings; warnings.simplefilter('always');"
        "from questkern import _nvtx as nvtx; print(nvtx.nvtx_switched_on())"
    )
    env = {**os.environ, "QUESTKERN_NVTX": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)
    assert ("QUESTKERN_NVTX" in out.stderr) == warns


def test_quest_step_opens_select_then_sparse_decode():
    cache = _tiny_cache()
    w = questkern.QuestDecode(16, gqa_mode="shared")
    w.plan(cache, num_q_heads=2)
    q = torch.randn(1, 2, 32).half()  # [B, Hq, D]
    with record_ranges() as events:
        w.run(q)
    names = [e.name for e in events]
    assert names[0] == "questkern.select" and "questkern.sparse_decode" in names
    assert names.index("questkern.select") < names.index("questkern.sparse_decode")
    assert "questkern.dense_decode" not in names
    sel = events[0].payload
    assert sel["batch"] == 1 and sel["k"] == 2  # budget 16 / page 8


def test_dense_decode_and_metadata_ranges():
    cache = _tiny_cache()
    w = questkern.QuestDecode(None)
    w.plan(cache, num_q_heads=2, max_seq_len=44)
    with record_ranges() as events:
        cache.append_decode(torch.randn(1, 1, 32).half(), torch.randn(1, 1, 32).half())
        w.run(torch.randn(1, 2, 32).half())
    names = [e.name for e in events]
    assert names[0] == "questkern.metadata" and events[0].payload["op"] == "append"
    assert "questkern.dense_decode" in names and "questkern.select" not in names


def test_recording_does_not_depend_on_nvtx_switch():
    set_nvtx_enabled(False)
    try:
        with record_ranges() as events:
            with annotate("questkern.combine"):
                pass
        assert [e.name for e in events] == ["questkern.combine"]
    finally:
        set_nvtx_enabled(True)


def test_trial_range_carries_trial_number():
    with record_ranges() as events:
        with trial_range(7, op=3):
            pass
    assert events[0].name == "questkern.trial" and events[0].payload == {"trial": 7, "op": 3}
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            trial_range(bad)


def test_torch_profiler_sees_the_same_ranges():
    from torch.profiler import ProfilerActivity, profile

    cache = _tiny_cache()
    w = questkern.QuestDecode(16)
    w.plan(cache, num_q_heads=2)
    q = torch.randn(1, 2, 32).half()
    with profile(activities=[ProfilerActivity.CPU]) as prof, nvtx.torch_ranges():
        w.run(q)
    keys = {e.key for e in prof.key_averages()}
    assert {"questkern.select", "questkern.sparse_decode"} <= keys
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # off again outside torch_ranges()
        w.run(q)
    assert not any(e.key.startswith("questkern.") for e in prof.key_averages())

"""summary.csv from Nsight Compute CSV exports and from torch.profiler Chrome traces."""

import math
from pathlib import Path

import pytest

from questkern.profiling.summary import (
    SUMMARY_COLUMNS,
    filter_trace,
    kernel_op,
    step_breakdown,
    summarize_ncu,
    summarize_torch_trace,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "profiling"


def test_ncu_raw_csv_units_and_groups():
    s = summarize_ncu((FIX / "ncu_raw.csv").read_text(), steps=3)
    assert list(s.columns) == SUMMARY_COLUMNS
    assert set(s["op"]) == {"metadata", "select", "sparse_decode", "combine"}
    dec = s[s["kernel"] == "_decode_split_kernel"].iloc[0]
    assert dec["calls"] == 3
    assert dec["duration_us"] == pytest.approx(9.57)  # median of 9.48, 9.57, 9.67 (usecond)
    # Mbyte + Kbyte over the median duration
    assert dec["dram_gbps"] == pytest.approx((16.78e6 + 540.67e3) / 9.57e-6 / 1e9, rel=1e-6)
    assert dec["grid_size"] == 1024  # "1,024": thousands separator
    assert dec["registers_per_thread"] == 128 and dec["achieved_occupancy_pct"] == pytest.approx(22.7)
    assert dec["per_step_us"] == pytest.approx(9.57)
    assert s.attrs["missing_metrics"] == []


def test_ncu_nanoseconds_and_dense_mode():
    text = (
        '"ID","Kernel Name","gpu__time_duration.sum"\n"","","nsecond"\n'
        '"0","_decode_split_kernel","12,000"\n"1","_decode_split_kernel","14,000"\n'
    )
    s = summarize_ncu(text, steps=2, mode="dense")
    assert s["op"].tolist() == ["dense_decode"]
    assert s["duration_us"].iloc[0] == pytest.approx(13.0)
    assert math.isnan(s["dram_gbps"].iloc[0])
    assert "dram_read" in s.attrs["missing_metrics"]


def test_ncu_nvtx_column_names_the_op():
    text = (
        '"ID","Kernel Name","NVTX","gpu__time_duration.sum"\n"","","","usecond"\n'
        '"0","_combine_kernel","questkern:questkern.sparse_decode/questkern.combine","2.0"\n'
    )
    assert summarize_ncu(text, steps=1)["op"].tolist() == ["combine"]


@pytest.mark.parametrize(
    "text,msg",
    [
        ("==PROF== nothing\n", "empty"),
        ('"ID","Name"\n"0","x"\n', "Kernel Name"),
        ('"ID","Kernel Name"\n"","" \n"0","k"\n', "gpu__time_duration"),
    ],
)
def test_ncu_bad_exports(text, msg):
    with pytest.raises(ValueError, match=msg):
        summarize_ncu(text, steps=1)


def test_kernel_op_names():
    assert kernel_op("_select_tile_kernel") == "select"
    # every Triton kernel of the package is named (a new kernel must not land in "other")
    import questkern.ops.decode.kernel as dk
    import questkern.ops.metadata.kernel as mk
    import questkern.ops.select.kernel as sk
    import questkern.ops.select.adaptive as ak

    for mod in (dk, mk, sk, ak):
        for name in dir(mod):
            if name.endswith("_kernel") and name.startswith("_") and hasattr(getattr(mod, name), "run"):
                assert kernel_op(name) != "other", name
    assert kernel_op("_decode_split_kernel", "quest") == "sparse_decode"
    assert kernel_op("_decode_split_kernel(float*)", "dense") == "dense_decode"
    assert kernel_op("ampere_sgemm") == "other"


def _ev(name, ts, dur, cat="user_annotation", pid=1, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": pid, "tid": tid}


def test_torch_trace_filter_and_exclusive_time():
    trace = {
        "traceEvents": [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "python"}},
            _ev("questkern.sparse_decode", 100, 50),
            _ev("questkern.combine", 130, 10),
            _ev("aten::empty", 105, 2, "cpu_op"),
            _ev("aten::outside", 300, 5, "cpu_op"),
            _ev("questkern.sparse_decode", 1000, 30, "gpu_user_annotation", pid=0, tid=7),
            _ev("_decode_split_kernel", 1001, 20, "kernel", pid=0, tid=7),
            _ev("_combine_kernel", 1022, 5, "kernel", pid=0, tid=7),
            _ev("_stray_kernel", 2000, 5, "kernel", pid=0, tid=7),
        ]
    }
    f = filter_trace(trace)
    names = [e["name"] for e in f["traceEvents"]]
    assert "aten::outside" not in names and "_stray_kernel" not in names
    assert "aten::empty" in names and "_combine_kernel" in names and "process_name" in names
    s = summarize_torch_trace(f, steps=1)
    cpu = s[(s["kind"] == "range") & (s["basis"] == "cpu")].set_index("op")
    assert cpu.loc["sparse_decode", "duration_us"] == 50 and cpu.loc["sparse_decode", "exclusive_us"] == 40
    assert cpu.loc["combine", "exclusive_us"] == 10
    kern = s[s["kind"] == "kernel"].set_index("kernel")
    assert kern.loc["_decode_split_kernel", "op"] == "sparse_decode"  # from the enclosing GPU range
    b = step_breakdown(s)
    assert b["source"].unique().tolist() == ["kernels"]
    assert b.set_index("op")["per_step_us"].to_dict() == {"sparse_decode": 25.0}


def test_breakdown_from_ranges_when_no_kernels():
    s = summarize_torch_trace(
        {"traceEvents": [_ev("questkern.select", 0, 30), _ev("questkern.select", 100, 10)]}, steps=2
    )
    b = step_breakdown(s)
    assert b["basis"].tolist() == ["cpu"] and b["per_step_us"].tolist() == [20.0]

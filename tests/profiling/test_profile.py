"""`questkern profile`: command assembly, the ncu path (with a stand-in ncu), the
torch.profiler fallback on CPU (a tiny workload through the Triton interpreter)."""

import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest

from questkern.cli import build_parser
from questkern.cli.profile import shape_from_args
from questkern.profiling import ncu as N
from questkern.profiling.runner import check_name, run_profile, workload_argv

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "profiling"
TINY = [
    "--seq",
    "48",
    "--batch",
    "1",
    "--heads",
    "2/1",
    "--head-dim",
    "32",
    "--page-size",
    "8",
    "--budget",
    "16",
    "--steps",
    "2",
    "--warmup",
    "1",
]


def tiny_shape(**kw):
    args = build_parser().parse_args(["profile", *TINY])
    return {**shape_from_args(args), **kw}


def test_nvtx_filter_strings():
    assert N.nvtx_include_filters(["questkern.select", "questkern.sparse_decode"]) == [
        "questkern@questkern.select/",
        "questkern@questkern.sparse_decode/",
    ]
    with pytest.raises(ValueError):
        N.nvtx_include_filters(["questkern.a/b"])
    with pytest.raises(ValueError):
        N.nvtx_include_filters([])
    with pytest.raises(ValueError):
        N.nvtx_include_filters(["questkern.select"], domain="a@b")


def test_profiled_ranges():
    assert N.profiled_ranges("quest") == [
        "questkern.select",
        "questkern.sparse_decode",
        "questkern.combine",
        "questkern.metadata",
    ]
    assert N.profiled_ranges("dense", append=False) == ["questkern.dense_decode", "questkern.combine"]
    with pytest.raises(ValueError):
        N.profiled_ranges("sparse")


def test_ncu_command_shape():
    wl = ["python", "-m", "questkern.profiling.workload", "--seq", "64"]
    cmd = N.ncu_command("/opt/ncu", wl, "out/profile", ["questkern.select", "questkern.sparse_decode"])
    assert cmd[:2] == ["/opt/ncu", "--nvtx"]
    assert cmd[-len(wl) :] == wl
    inc = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--nvtx-include"]
    assert inc == ["questkern@questkern.select/", "questkern@questkern.sparse_decode/"]
    secs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--section"]
    assert {"SpeedOfLight", "Occupancy", "LaunchStats", "SpeedOfLight_RooflineChart"} <= set(secs)
    assert cmd[cmd.index("--export") + 1] == "out/profile"
    assert N.ncu_csv_command("ncu", "r.ncu-rep") == ["ncu", "--import", "r.ncu-rep", "--csv", "--page", "raw"]
    assert N.nsys_command("nsys", wl, "t")[:3] == ["nsys", "profile", "--trace=cuda,nvtx"]


def test_diagnose_ncu():
    assert "ERR_NVGPUCTRPERM" in N.diagnose_ncu(1, "==ERROR== ERR_NVGPUCTRPERM - no permission")
    assert "NVTX filter" in N.diagnose_ncu(0, "==WARNING== No kernels were profiled.")
    assert "status 3" in N.diagnose_ncu(3, "boom")
    assert N.diagnose_ncu(0, "==PROF== Disconnected") is None


def test_shape_flags_are_bench_flags_with_one_value():
    shape = tiny_shape()
    assert shape["seq_len"] == 48 and (shape["q_heads"], shape["kv_heads"]) == (2, 1) and shape["dtype"] == "bf16"
    args = build_parser().parse_args(["profile", "--seq", "8k,32k"])
    with pytest.raises(SystemExit, match="--seq takes one value"):
        shape_from_args(args)
    default = shape_from_args(build_parser().parse_args(["profile"]))
    assert (default["seq_len"], default["q_heads"], default["head_dim"], default["budget"], default["page_size"]) == (
        32768,
        32,
        128,
        2048,
        16,
    )
    argv = workload_argv(shape, python="py")
    assert argv[:3] == ["py", "-m", "questkern.profiling.workload"]
    assert argv[argv.index("--heads") + 1] == "2/1"


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x y", "-lead"])
def test_profile_name_checked(bad):
    with pytest.raises(ValueError, match="--name"):
        check_name(bad)


def test_dry_run_writes_nothing(tmp_path, capsys):
    res = run_profile(tiny_shape(), name="dry", root=tmp_path, dry_run=True)
    assert res.tool == "none" and not any(tmp_path.iterdir())
    out = capsys.readouterr().out
    assert "ncu command:" in out and "--nvtx-include questkern@questkern.select/" in out and "nsys command:" in out


def _check_fallback_dir(d: Path, reason: str):
    summary = pd.read_csv(d / "summary.csv")
    assert set(summary["op"]) >= {"select", "sparse_decode", "metadata"}
    assert (summary["tool"] == "torch.profiler").all() and (summary["calls"] == 2).all()
    trace = json.loads((d / "trace.json").read_text())
    ranged = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert any(e["name"] == "questkern.select" for e in ranged)
    cmd = (d / "command.txt").read_text()
    assert "--nvtx-include questkern@questkern.select/" in cmd and "nsys profile" in cmd and "--torch-trace" in cmd
    assert reason in cmd
    meta = json.loads((d / "meta.json").read_text())
    assert meta["tool"] == "torch.profiler" and reason in meta["fallback_reason"]
    assert meta["shape"]["seq_len"] == 48 and meta["plan"]["k_pages"] == 2


def test_fallback_without_cuda_runs_torch_profiler(tmp_path, capsys):
    res = run_profile(tiny_shape(), name="tiny", root=tmp_path)
    assert res.tool == "torch.profiler" and "no CUDA device" in res.reason
    assert res.out_dir.parent == tmp_path / "cpu-interpreter" and res.out_dir.name.endswith("-tiny")
    assert "using the PyTorch profiler" in capsys.readouterr().out
    _check_fallback_dir(res.out_dir, "no CUDA device")
    # a second run never reuses the folder
    assert run_profile(tiny_shape(steps=1, warmup=0), name="tiny", root=tmp_path, tool="torch").out_dir != res.out_dir


def test_tool_ncu_without_gpu_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="--tool ncu: no CUDA device"):
        run_profile(tiny_shape(), name="x", root=tmp_path, tool="ncu")
    assert not any(tmp_path.iterdir())


FAKE_NCU = """#!{python}
import json, pathlib, sys
args = sys.argv[1:]
if "--import" in args:
    sys.stdout.write(pathlib.Path({fixture!r}).read_text()); sys.exit(0)
pathlib.Path({log!r}).write_text(json.dumps(args))
if {fail!r}:
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    sys.exit(1)
pathlib.Path(args[args.index("--export") + 1] + ".ncu-rep").write_bytes(b"stand-in report")
print("==PROF== Disconnected")
"""


def _fake_ncu(tmp_path, fail=False):
    path = tmp_path / "ncu"
    path.write_text(
        FAKE_NCU.format(
            python=sys.executable, fixture=str(FIX / "ncu_raw.csv"), log=str(tmp_path / "ncu-args.json"), fail=fail
        )
    )
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def pretend_gpu(monkeypatch):
    """run_profile's GPU checks, as on a CUDA machine (the stand-in ncu never runs the workload)."""
    import torch

    import questkern.configs.gpus as gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpus, "current_gpu_key", lambda device=None: "fixture-gpu-a")


def test_ncu_path_with_stand_in_ncu(tmp_path, pretend_gpu):
    ncu = _fake_ncu(tmp_path)
    res = run_profile(tiny_shape(), name="ncu-run", root=tmp_path / "profiles", ncu=ncu)
    d = res.out_dir
    assert res.tool == "ncu" and d.parent.name == "fixture-gpu-a"
    args = json.loads((tmp_path / "ncu-args.json").read_text())
    assert args[0] == "--nvtx" and "questkern@questkern.select/" in args
    wl = args[args.index(sys.executable) :]
    assert wl[1:3] == ["-m", "questkern.profiling.workload"] and "--meta" in wl
    assert {"profile.ncu-rep", "raw.csv", "ncu.log", "summary.csv", "command.txt", "meta.json"} <= {
        p.name for p in d.iterdir()
    }
    s = pd.read_csv(d / "summary.csv")
    assert (s["tool"] == "ncu").all() and set(s["op"]) == {"metadata", "select", "sparse_decode", "combine"}
    lines = (d / "command.txt").read_text().splitlines()
    ncu_line = next(ln for ln in lines if " --nvtx " in ln and ln.split("=")[0] != "#")
    assert shlex.split(ncu_line)[-len(wl) :] == wl  # the recorded line is the command that ran
    assert any(ln.startswith(shlex.quote(ncu) + " --import") for ln in lines)


def test_ncu_without_counter_access_falls_back(tmp_path, pretend_gpu):

    ncu = _fake_ncu(tmp_path, fail=True)
    # the fallback workload really runs (on the CPU, in a subprocess): torch there sees no GPU
    res = run_profile(tiny_shape(), name="noperm", root=tmp_path / "profiles", ncu=ncu)
    assert res.tool == "torch.profiler" and "ERR_NVGPUCTRPERM" in res.reason
    assert "ERR_NVGPUCTRPERM" in (res.out_dir / "ncu.log").read_text()
    _check_fallback_dir(res.out_dir, "ERR_NVGPUCTRPERM")

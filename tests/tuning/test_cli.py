"""``questkern tune`` and ``questkern show-config`` from the command line (CPU interpreter)."""

from __future__ import annotations

import json

import pytest
import torch

from questkern.cli import build_parser, main
from questkern.configs import paths
from questkern.configs.gpus import CPU_KEY
from questkern.configs.table import load_table

from tuning_helpers import entry, write_doc

TINY = ["--seq", "64", "--batch", "1", "--heads", "2/1", "--head-dim", "32", "--page-size", "16", "--budget", "32"]


def parse(*argv):
    return build_parser().parse_args(["tune", "--gpu", "cpu", *argv])


@pytest.mark.parametrize("text,want", [("32k", [32768]), ("32768", [32768]), ("8k,32k,128k", [8192, 32768, 131072]),
                                       ("1m", [1048576]), (" 4K ", [4096])])
def test_seq_parsing(text, want):
    assert parse("--seq", text).seq == want


@pytest.mark.parametrize("text,expect", [("32q", "expected a size like 32k or 32768, got '32q'"),
                                          ("0", "size must be > 0"), ("1.5k", "expected a size like"),
                                          ("8k,x", "got 'x'"), (",", "comma-separated list of sizes")])
def test_bad_seq_is_a_clear_error(text, expect, capsys):
    with pytest.raises(SystemExit) as e:
        parse("--seq", text)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seq" in err and expect in err


@pytest.mark.parametrize("flag,value,expect", [("--ops", "select,topk", "expected a comma-separated subset of"),
                                               ("--fix", "num_stages", "expected NAME=VALUE"),
                                               ("--trials", "0", "expected a positive integer"),
                                               ("--timeout", "-5", "expected a positive number of seconds"),
                                               ("--sampler", "cmaes", "invalid choice"),
                                               ("--dtype", "fp8", "dtype must be one of")])
def test_other_bad_flags(flag, value, expect, capsys):
    with pytest.raises(SystemExit):
        parse("--seq", "32k", flag, value)
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expect in err


def test_fix_values():
    assert parse("--seq", "1k", "--fix", "num_stages=2, fuse_combine=False,topk=radix").fix == {
        "num_stages": 2, "fuse_combine": False, "topk": "radix"}


def test_dtype_list():
    import torch

    assert parse("--seq", "1k", "--dtype", "bf16,fp16").dtype == [torch.bfloat16, torch.float16]
    assert parse("--seq", "1k").dtype == [torch.bfloat16]


def test_gpu_mismatch_is_an_error_naming_both(dirs, capsys):
    assert main(["tune", "--gpu", "h100", "--seq", "32k"]) == 2
    err = capsys.readouterr().err
    assert "--gpu 'h100' (family h100) does not match the detected device 'cpu-interpreter'" in err


def test_dry_run_plans_for_another_gpu(dirs, capsys):
    assert main(["tune", "--gpu", "h100", "--seq", "8k,32k", "--batch", "1,8", "--heads", "32/8", "--dry-run",
                 "--out", str(dirs["env"])]) == 0
    out = capsys.readouterr().out
    assert "dry run: --gpu 'h100'" in out and "20 buckets" in out  # 5 ops x 2 seqs x 2 batches
    assert "h100:select:bfloat16:d128:h32-8:s32768:b8:p16:k2048:shared-sum" in out
    assert "h100:quest_step:bfloat16:d128:h32-8:s32768:b8:p16:k2048:shared-sum" in out
    assert not list(dirs["env"].iterdir()) and not list(dirs["data"].iterdir())  # nothing run, nothing written


def test_tune_on_cpu_at_real_sizes_asks_for_yes(dirs, capsys):
    """What the GPU-mismatch message suggests (--gpu cpu) at a real size: the estimate, a refusal
    without --yes naming a toy size, and nothing run or written."""
    assert main(["tune", "--gpu", "cpu", "--seq", "32k", "--out", str(dirs["env"])]) == 2
    out, err = capsys.readouterr()
    assert "plan: 18 buckets x 40 trials each; estimated" in out and " h in the Triton interpreter" in out
    assert "Pass --yes to run anyway" in err and "questkern tune --gpu cpu --seq 1000" in err
    assert not list(dirs["env"].iterdir()) and not list(dirs["data"].iterdir())


def test_tune_estimate_follows_trials_timeout_and_max_time():
    from questkern.cli.tune import estimate_seconds
    from questkern.tuning.tuner import TuneSpec

    def est(on_gpu=True, **kw):
        spec = TuneSpec(gpu_key="g", device_name="g", seqs=(32768,), batches=(1,), heads=((32, 8),), head_dims=(128,),
                        dtypes=(torch.bfloat16,), page_sizes=(16,), budgets=(2048,), ops=("select",), **kw)
        return estimate_seconds(spec, spec.buckets()[0], on_gpu)

    assert est(n_trials=80) > est(n_trials=40) > est(n_trials=40, verify_rounds=0) > 0
    assert est(n_trials=None, timeout=30.0, verify_rounds=0) == 30.0
    assert est(n_trials=40, max_time=10.0) == 10.0
    assert est(False, n_trials=40) > 100 * est(True, n_trials=40)  # the interpreter at 32K


def test_tune_cli_end_to_end_with_real_timing(dirs, capsys):
    argv = ["tune", "--gpu", "cpu", *TINY, "--ops", "metadata", "--trials", "2", "--verify-rounds", "0",
            "--storage", f"sqlite:///{dirs['data'] / 's.db'}", "--out", str(dirs["env"]),
            "--summary", str(dirs["data"] / "summary.json")]
    (dirs["data"] / "summary.json").write_text("mine")
    assert main(argv) == 2  # an existing summary is refused before any work
    assert "summary.json exists; pass --replace-summary" in capsys.readouterr().err
    assert not list(dirs["env"].iterdir()) and (dirs["data"] / "summary.json").read_text() == "mine"
    argv.append("--replace-summary")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "geometric mean speedup over the heuristic default" in out and "the timings mean nothing" in out
    assert "plan: 1 buckets x 2 trials each; estimated " in out and "in the Triton interpreter" in out
    (e,) = load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"]
    assert e["op"] == "metadata" and e["trials"] == 2 and e["latency_us"] > 0
    summary = json.loads((dirs["data"] / "summary.json").read_text())
    assert summary["buckets"][0]["n_evaluated"] == 2 and summary["gpu_key"] == CPU_KEY
    # the summary holds what the table entry holds (scripts/table_from_summaries.py rebuilds entries from it)
    (g,) = summary["buckets"][0]["groups"]
    assert g["config"] == e["config"] and g["default_config"] == e["default_config"] is not None

    # show-config now reports the entry, its file and the bucket distance
    assert main(["show-config", "--op", "metadata", "--seq", "100", "--batch", "2", "--heads", "2/1",
                 "--head-dim", "32", "--page-size", "16"]) == 0
    out = capsys.readouterr().out
    assert f"chosen:    {paths.table_path(dirs['env'], CPU_KEY)}" in out
    assert "entry seq 2^6 batch 2^0 (nearest, distance 2)" in out
    assert "$QUESTKERN_TUNING_DIR" in out and "loaded" in out


def test_show_config_heuristic_reason_and_json(dirs, capsys):
    write_doc(dirs["shipped"], [entry("select", seq=32768, batch=8)])
    assert main(["show-config", "--op", "select", "--seq", "32k", "--batch", "8", "--heads", "32/8",
                 "--gpu", "nvidia-h100-80gb-hbm3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["distance"] == 0 and d["source"].endswith("(exact)") and d["config"]["chunk_pages"] == 128
    assert main(["show-config", "--op", "select", "--seq", "32k", "--page-size", "32",
                 "--gpu", "nvidia-h100-80gb-hbm3"]) == 0
    out = capsys.readouterr().out
    assert "chosen:    heuristic (no entry for select bfloat16 d128 group 4 page 32 in" in out
    assert main(["show-config", "--op", "dense_decode", "--seq", "32k", "--gpu", "NVIDIA L4"]) == 0
    assert "heuristic (no tuning table for GPU nvidia-l4 (family l4))" in capsys.readouterr().out


def test_show_config_gpu_family_alias_finds_the_one_table_of_that_family(dirs, capsys):
    path = write_doc(dirs["shipped"], [entry("sparse_decode", seq=32768, batch=1)])  # nvidia-h100-80gb-hbm3.json
    assert main(["show-config", "--op", "sparse_decode", "--seq", "32k", "--heads", "32/8", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "gpu key:   nvidia-h100-80gb-hbm3" in out and f"chosen:    {path}" in out
    # an alias that names no table's family keeps its own key: the heuristic, with the reason
    assert main(["show-config", "--op", "sparse_decode", "--seq", "32k", "--gpu", "a100"]) == 0
    assert "chosen:    heuristic (no tuning table for GPU a100" in capsys.readouterr().out
    # two tables of the family: the user must say which
    write_doc(dirs["env"], [entry("sparse_decode")], gpu_key="nvidia-h100-nvl")
    assert main(["show-config", "--op", "sparse_decode", "--seq", "32k", "--gpu", "h100"]) == 2
    assert "matches the tables of nvidia-h100-80gb-hbm3, nvidia-h100-nvl: pass one of these keys" in capsys.readouterr().err


# ---------------------------------------------------------------- every path checked before any trial


def _tune_argv(dirs, *extra):
    return ["tune", "--gpu", "cpu", *TINY, "--ops", "metadata", "--trials", "1", "--verify-rounds", "0", *extra]


@pytest.mark.parametrize("make,flags,expect", [
    (lambda d: (d / "f").write_text("x"), lambda d: ["--out", str(d / "f")], "--out {d}/f: is a file, expected a directory"),
    (lambda d: (d / "f").write_text("x"), lambda d: ["--out", str(d / "f" / "sub")], "cannot be created, {d}/f is a file"),
    (lambda d: (d / "f.json").write_text("{}"), lambda d: ["--storage", f"sqlite:///{d}/f.json"], "is not an SQLite database"),
    (lambda d: (d / "db").mkdir(), lambda d: ["--storage", f"sqlite:///{d}/db"], "is a directory, expected an SQLite database"),
    (lambda d: (d / "f").write_text("x"), lambda d: ["--storage", f"sqlite:///{d}/f/s.db"], "cannot be created, {d}/f is a file"),
    (lambda d: (d / "sub").mkdir(), lambda d: ["--summary", str(d / "sub")], "--summary {d}/sub: is a directory"),
    (lambda d: (d / "f").write_text("x"), lambda d: ["--log-dir", str(d / "f")], "--log-dir {d}/f: is a file"),
])
def test_bad_paths_are_refused_before_any_trial(dirs, capsys, make, flags, expect):
    d = dirs["data"]
    make(d)
    argv = _tune_argv(dirs, "--out", str(dirs["env"]), "--storage", "inmemory", *flags(d))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("questkern tune: error: ") and expect.format(d=d) in err
    assert "Traceback" not in err and "trial" not in out.lower()
    assert not list(dirs["env"].iterdir())


def test_a_table_of_another_gpu_or_a_corrupt_one_in_out_is_refused_up_front(dirs, capsys):
    write_doc(dirs["env"], [entry()], gpu_key="nvidia-h100-80gb-hbm3")
    (dirs["env"] / "nvidia-h100-80gb-hbm3.json").rename(dirs["env"] / f"{CPU_KEY}.json")  # copied under this GPU's name
    argv = _tune_argv(dirs, "--out", str(dirs["env"]), "--storage", "inmemory")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"holds the table of GPU 'nvidia-h100-80gb-hbm3', not '{CPU_KEY}'" in err and "trial" not in out.lower()
    (dirs["env"] / f"{CPU_KEY}.json").write_text("{")
    assert main(argv) == 2
    assert "is not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,expect", [("--page-size", "12", "page size must be among 8,16,32,64"),
                                               ("--head-dim", "48", "head dim must be among 32,64,128,256")])
def test_unsupported_page_size_or_head_dim_is_a_flag_error(flag, value, expect, capsys):
    with pytest.raises(SystemExit) as e:
        parse("--seq", "1k", flag, value)
    assert e.value.code == 2 and expect in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "  "])
def test_show_config_refuses_an_empty_gpu(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["show-config", "--op", "select", "--seq", "1k", "--gpu", value])
    assert e.value.code == 2 and "argument --gpu: expected a GPU key" in capsys.readouterr().err

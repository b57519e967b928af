"""The benchmark's case runner on CPU (interpreter): correctness checks pass, bytes add up."""

import argparse
import csv
from pathlib import Path

import pytest
import torch

from questkern.bench.core import Case, case_bytes, run_case
from questkern._timing import bound_us
from questkern.cli import main


def test_run_case_checks_pass_on_cpu():
    case = Case(2, 4, 2, 64, torch.bfloat16, 200, 16, 64)
    rows, checks = run_case(case, torch.device("cpu"), check=True, rep_ms=1)
    assert {r["op"] for r in rows} == {"select", "topk_torch", "sparse_decode", "quest_step", "dense_decode", "sdpa"}
    assert checks["select_exact"] is True
    assert checks["quest_maxerr"] < 5e-2 and checks["dense_vs_sdpa_maxerr"] < 5e-2


@pytest.mark.parametrize("path", ["fused", "classic"])
def test_compare_paths_times_both_steps_and_checks_both(path):
    case = Case(2, 8, 2, 64, torch.bfloat16, 300, 16, 64)
    rows, checks = run_case(case, torch.device("cpu"), check=True, rep_ms=1, path=path, compare_paths=True)
    other = "classic" if path == "fused" else "fused"
    by_op = {r["op"]: r for r in rows}
    assert f"quest_step_{other}" in by_op
    assert by_op["quest_step"]["config_source"].endswith(f"path={path}")
    assert by_op[f"quest_step_{other}"]["config_source"].endswith(f"path={other}")
    assert checks["step_select_exact"] is True and checks[f"{other}_select_exact"] is True
    assert checks["quest_maxerr"] < 5e-2 and checks[f"{other}_maxerr"] < 5e-2


def test_fp8_metadata_case_checks_pass_and_halves_select_bytes():
    case = Case(1, 4, 1, 64, torch.bfloat16, 300, 16, 64, meta_dtype=torch.float8_e5m2)
    rows, checks = run_case(case, torch.device("cpu"), check=True, rep_ms=1)
    assert checks["select_exact"] is True and checks["quest_maxerr"] < 5e-2
    assert {r["meta_dtype"] for r in rows} == {"fp8_e5m2"}
    assert case_bytes(case, 1)["select"] * 2 - case_bytes(case, 2)["select"] == 4 * 64 * 2  # the query's bytes


def test_case_bytes():
    case = Case(1, 32, 8, 128, torch.bfloat16, 32768, 16, 2048)
    b = case_bytes(case, 2)
    kv = 32768 * 8 * 128 * 2 * 2
    assert b["sdpa"] - b["dense_decode"] == 0 and b["sdpa"] > kv
    assert b["select"] >= 2048 * 8 * 128 * 2 * 2  # metadata of every page, kmin and kmax
    assert abs(b["sparse_decode"] - kv / 16) < 1e5  # 2048 of 32768 tokens


def test_bench_cli_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = main(
        [
            "bench",
            "--seq",
            "100",
            "--batch",
            "1",
            "--heads",
            "2/1",
            "--head-dim",
            "64",
            "--budget",
            "32",
            "--out",
            str(out),
            "--rep-ms",
            "1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "meaningless" in text or "mean nothing" in text
    rows = list(csv.DictReader(open(out)))
    assert {r["op"] for r in rows} >= {"select", "quest_step", "sdpa"}
    # sizes given on the command line are kept on CPU (only the others fall back to the toy size),
    # and the command column is the one that ran, also when main() is called from Python
    assert {(r["seq_len"], r["batch"], r["q_heads"], r["kv_heads"], r["head_dim"]) for r in rows} == {
        ("100", "1", "2", "1", "64")
    }
    assert rows[0]["command"].startswith("questkern bench --seq 100 --batch 1 --heads 2/1")
    need = {
        "gpu",
        "torch",
        "triton",
        "op",
        "batch",
        "q_heads",
        "kv_heads",
        "head_dim",
        "dtype",
        "seq_len",
        "page_size",
        "budget",
        "median_us",
        "gbps",
        "speedup_vs_sdpa",
    }
    assert need <= set(rows[0])


def test_bench_cli_meta_dtype_list(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = main(
        [
            "bench",
            "--seq",
            "100",
            "--batch",
            "1",
            "--heads",
            "2/1",
            "--head-dim",
            "64",
            "--budget",
            "32",
            "--meta-dtype",
            "kv,fp8",
            "--check",
            "--out",
            str(out),
            "--rep-ms",
            "1",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out)))
    assert {r["meta_dtype"] for r in rows} == {"", "fp8_e5m2"}
    assert "meta=fp8_e5m2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--meta-dtype", "fp8_e4m3"])


def test_bench_cli_mixed_adds_to_given_seqs_and_alone_replaces_them(tmp_path):
    common = ["--heads", "2/1", "--head-dim", "64", "--budget", "32", "--rep-ms", "1"]
    both, alone = tmp_path / "both.csv", tmp_path / "alone.csv"
    assert main(["bench", "--seq", "100", "--batch", "1", "--mixed", "3:40-120", "--out", str(both), *common]) == 0
    rows = list(csv.DictReader(open(both)))
    assert [(r["batch"], r["lens"]) for r in rows][:: len(rows) // 2] == [("3", "mixed"), ("1", "")]  # mixed first
    assert main(["bench", "--mixed", "3:40-120", "--out", str(alone), *common]) == 0
    assert {(r["batch"], r["lens"]) for r in csv.DictReader(open(alone))} == {("3", "mixed")}
    # the bound columns are there (NaN without a GPU: no copy bandwidth to bound by)
    assert {"floor_us", "bound_us", "bound_speedup_vs_sdpa"} <= set(rows[0])
    assert rows[0]["bound_us"] == "nan"


def test_bound_us_is_floor_plus_bytes_at_copy_bandwidth():
    # 67.1 MB (the MHA 32K step) at 3000 GB/s = 22.4 us, plus a 4.8 us floor
    assert bound_us(67_125_248, 3000.0, 4.8) == pytest.approx(4.8 + 22.375, abs=1e-3)


@pytest.mark.parametrize("spec", ["32", "0:4k-8k", "32:8k-4k", "x:4k-8k", "32:4k", "32:4q-8k"])
def test_bench_cli_rejects_a_bad_mixed_spec(spec, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--mixed", spec])
    err = capsys.readouterr().err
    assert "--mixed" in err and ("B:LO-HI" in err or "LO <= HI" in err or "size" in err)


def test_bench_vs_heuristic_times_the_table_and_the_heuristic_in_one_run(tmp_path, monkeypatch, capsys):
    """With a tuning table in $QUESTKERN_TUNING_DIR whose configs differ from the heuristic,
    --vs-heuristic times the step and the dense decode both ways; the ratio is theirs."""
    from questkern.configs import paths, runtime
    from questkern.configs.gpus import CPU_KEY
    from questkern.configs.keys import EntryKey
    from questkern.configs.table import atomic_write_json, make_entry, new_table

    tuned = {
        "select": {
            "chunk_pages": 16,
            "block_d": 32,
            "num_warps": 2,
            "num_stages": 1,
            "merge_warps": 1,
            "topk": "radix",
            "fused_merge": False,
            "tiles_per_program": 1,
        },
        "sparse_decode": {
            "pages_per_block": 1,
            "num_splits": 2,
            "num_warps": 2,
            "num_stages": 1,
            "combine_warps": 1,
            "fuse_combine": True,
        },
        "dense_decode": {
            "pages_per_block": 2,
            "num_splits": 3,
            "num_warps": 2,
            "num_stages": 1,
            "combine_warps": 2,
            "fuse_combine": False,
        },
    }
    doc = new_table(CPU_KEY, CPU_KEY)
    for op, cfg in tuned.items():
        key = EntryKey.for_call(
            op,
            dtype="bfloat16",
            head_dim=64,
            group=2,
            page_size=16,
            seq_len=100,
            batch=1,
            budget=32 if op != "dense_decode" else None,
            gqa_mode="shared",
        )
        doc["entries"].append(
            make_entry(key, cfg, 1.0, 2.0, trials=1, seq_len=100, batch=1, num_q_heads=2, num_kv_heads=1)
        )
    atomic_write_json(paths.table_path(tmp_path, CPU_KEY), doc)
    monkeypatch.setenv(paths.ENV_TUNING_DIR, str(tmp_path))
    runtime.clear_cache()
    try:
        out = tmp_path / "bench.csv"
        assert (
            main(
                [
                    "bench",
                    "--seq",
                    "100",
                    "--batch",
                    "1",
                    "--heads",
                    "2/1",
                    "--head-dim",
                    "64",
                    "--budget",
                    "32",
                    "--vs-heuristic",
                    "--check",
                    "--out",
                    str(out),
                    "--rep-ms",
                    "1",
                ]
            )
            == 0
        )
    finally:
        runtime.clear_cache()
    text = capsys.readouterr().out
    assert (
        "heuristic selection exact: yes" in text
        and "check PASS" in text
        and "tuning table vs heuristic configs, this run" in text
    )
    rows = {r["op"]: r for r in csv.DictReader(open(out))}
    assert "quest_step_heuristic" in rows and "dense_decode_heuristic" in rows
    assert "select=table" in rows["quest_step"]["config_source"]
    assert rows["quest_step_heuristic"]["config_source"].startswith("heuristic")
    assert rows["quest_step"]["splits"] == "2" and rows["dense_decode"]["splits"] == "3"  # the table's
    for op in ("quest_step", "dense_decode"):
        want = float(rows[f"{op}_heuristic"]["median_us"]) / float(rows[op]["median_us"])
        assert float(rows[op]["speedup_vs_heuristic"]) == pytest.approx(want, rel=1e-3)
    assert rows["select"]["speedup_vs_heuristic"] == "nan"
    assert rows["quest_step_heuristic"]["speedup_vs_heuristic"] == rows["quest_step"]["speedup_vs_heuristic"]


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["--rep-ms", "-5"], "argument --rep-ms: expected a positive integer"),
        (["--rep-ms", "0"], "argument --rep-ms: expected a positive integer"),
        (["--page-size", "12"], "argument --page-size: page size must be among 8,16,32,64"),
        (["--head-dim", "48"], "argument --head-dim: head dim must be among 32,64,128,256"),
        (["--dense-layers", "-1"], "argument --dense-layers: expected an integer >= 0"),
    ],
)
def test_bench_bad_flags_are_argparse_errors(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["dir", "under-file"])
def test_bench_out_is_checked_before_the_first_case(tmp_path, capsys, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path if where == "dir" else tmp_path / "f" / "bench.csv"
    rc = main(
        [
            "bench",
            "--seq",
            "100",
            "--batch",
            "1",
            "--heads",
            "2/1",
            "--head-dim",
            "64",
            "--budget",
            "32",
            "--out",
            str(out),
            "--rep-ms",
            "1",
        ]
    )
    assert rc == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("questkern bench: error: --out ") and "[1/" not in captured.out
    assert ("is a directory" if where == "dir" else "is a file, not a directory") in captured.err


def test_bench_never_overwrites_by_default(tmp_path, monkeypatch, capsys):
    """Without --out every run writes a new timestamped CSV; an existing --out is refused before any
    work unless --force (layer mode and --model alike)."""
    from questkern.cli.bench import resolve_out
    from questkern.configs.gpus import current_gpu_key

    monkeypatch.chdir(tmp_path)
    tiny = ["--seq", "100", "--batch", "1", "--heads", "2/1", "--head-dim", "64", "--budget", "32", "--rep-ms", "1"]
    assert main(["bench", *tiny, "--check"]) == 0
    text = capsys.readouterr().out
    assert "check PASS: selection exact: yes; Quest output vs float32 reference max error" in text
    assert "check: 1 of 1 cases PASS" in text and "quest vs sdpa" not in text and "nan" not in text.split("\n")[1]
    (first,) = (tmp_path / "reports" / "data" / current_gpu_key()).glob("bench-*.csv")
    before = first.read_bytes()
    assert main(["bench", *tiny]) == 0
    assert len(list(first.parent.glob("bench-*.csv"))) == 2 and first.read_bytes() == before
    capsys.readouterr()
    for extra in ([], ["--model", "tiny"]):
        assert main(["bench", *tiny, *extra, "--out", str(first)]) == 2
        assert "exists; pass --force" in capsys.readouterr().err
        assert first.read_bytes() == before
    ns = argparse.Namespace(out=None, force=False, model=object())
    assert resolve_out(ns, "g").parent == Path("reports/data/g") and resolve_out(ns, "g").name.startswith(
        "bench_model-"
    )
    assert main(["bench", *tiny, "--out", str(first), "--force"]) == 0
    assert first.read_bytes() != before

"""Trace files, the study tables, the tuner objective and the CLI, on small synthetic traces."""

from __future__ import annotations

import json
import os
import warnings

import pandas as pd
import pytest
import torch

from questkern.quality import objective
from questkern.quality.objective import clear_cache
from questkern.quality.study import FIXED_BUDGETS, KEY_NAMES, run_study
from questkern.quality.traces import Trace, list_traces, load_trace, read_info, save_trace, synthetic_traces


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    for t in synthetic_traces(n=2, seq_len=300, layers=3, hq=4, hkv=2, d=32, steps=2, seed=5):
        save_trace(t, d / f"{t.info['name']}.safetensors")
    return d


@pytest.fixture(scope="module")
def study(trace_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    run_study(trace_dir, out, page_sizes=(16, 32), dense_layers=1, log=lambda s: None)
    return out


def test_trace_roundtrip_is_bf16_and_atomic(tmp_path):
    t = synthetic_traces(n=1, seq_len=64, layers=2, hq=2, hkv=1, d=32, steps=3)[0]
    path = save_trace(t, tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode, not mkstemp's 0600
    back = load_trace(path)
    assert back.q.dtype == torch.bfloat16 and torch.equal(back.k, t.k.to(torch.bfloat16))
    assert back.info == json.loads(json.dumps(t.info)) and back.seq_len(2) == 64 + 3
    assert read_info(path)["kind"] == "synthetic" and list_traces(tmp_path) == [path]


def test_trace_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={"schema": "other"})
    with pytest.raises(ValueError, match="not a questkern trace"):
        read_info(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="keys cached"):
        Trace(torch.zeros(3, 1, 2, 32), torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32), {"prefix_len": 9})


def test_study_tables(study):
    r = pd.read_csv(study / "quality_recall.csv")
    assert list(r.columns[: len(KEY_NAMES)]) == list(KEY_NAMES)
    assert {"recall_mean", "recall_p10", "err_mean", "tokens_mean", "read_frac_mean", "samples"} <= set(r.columns)
    assert set(r["policy"]) == {"fixed", "prop", "adaptive", "oracle"}
    base = r[(r.gqa_mode == "shared") & (r["aggregate"] == "sum") & (r.meta == "fp32")]
    for _, g in base[base.policy == "fixed"].groupby("page_size"):
        rec = g.sort_values("param")["recall_mean"].to_numpy()
        assert (rec[1:] >= rec[:-1] - 1e-6).all() and abs(rec[-1] - 1) < 1e-5  # 2048 tokens covers 300
    ad = base[base.policy == "adaptive"].sort_values(["temperature", "param"])
    assert (
        ad.groupby(["page_size", "temperature"])["tokens_mean"].diff().dropna() >= 0
    ).all()  # higher threshold, more pages
    assert set(ad["temperature"]) == {1.0, 2.0, 4.0, 8.0}
    fp32 = base.set_index(["page_size", "policy", "param"])["recall_mean"]
    bf16 = r[(r.meta == "bf16")].set_index(["page_size", "policy", "param"])["recall_mean"]
    pd.testing.assert_series_equal(fp32.sort_index(), bf16.sort_index(), check_names=False)  # bf16 keys: exact
    orc = r[r.policy == "oracle"].set_index(["page_size", "param"])["recall_mean"]
    fx = base[base.policy == "fixed"].set_index(["page_size", "param"])["recall_mean"]
    assert (orc.loc[fx.index] >= fx - 1e-6).all()
    layers = pd.read_csv(study / "quality_layers.csv")
    assert set(layers["layer"]) == {0, 1, 2} and set(layers["head"]) == {0, 1, 2, 3}
    ans = json.loads((study / "quality_answers.json").read_text())
    assert ans["schema"] == "questkern.quality_answers" and ans["budget_for_target"]


def test_objective_is_the_study_recall(trace_dir, study):
    clear_cache()
    r = pd.read_csv(study / "quality_recall.csv")
    row = r[(r.policy == "fixed") & (r.gqa_mode == "per_head") & (r.page_size == 16) & (r.param == 64)]
    # the study averages per context bucket; both synthetic traces share one bucket
    got = objective(16, 64, "per_head", trace_dir=trace_dir, dense_layers=1)
    assert got == pytest.approx(float(row["recall_mean"].iloc[0]), rel=1e-5)
    vals = [objective(16, b, "shared", "max", trace_dir=trace_dir, dense_layers=1) for b in FIXED_BUDGETS]
    assert all(b >= a - 1e-9 for a, b in zip(vals, vals[1:])) and vals[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="page_size"):
        objective(12, 64, "shared")


def test_objective_falls_back_to_synthetic_with_warning(tmp_path):
    clear_cache()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        v = objective(16, 128, "shared", trace_dir=tmp_path)
    assert 0 < v < 1 and any("synthetic" in str(x.message) for x in w)
    clear_cache()


def test_cli_study_and_figures(trace_dir, tmp_path):
    from questkern.cli import main
    from questkern.quality.figures import quality_figures

    assert (
        main(
            [
                "quality",
                "study",
                "--trace-dir",
                str(trace_dir),
                "--out-dir",
                str(tmp_path),
                "--page-sizes",
                "16",
                "--dense-layers",
                "1",
            ]
        )
        == 0
    )
    assert (tmp_path / "quality_recall.csv").exists()
    figs = quality_figures(tmp_path)
    assert [t for t, _ in figs] == [
        "Recall vs budget",
        "Fixed vs adaptive budget",
        "GQA modes and metadata",
        "Recall per layer and head",
    ]
    assert all(len(f.data) > 0 for _, f in figs)


def test_cli_quality_never_overwrites(trace_dir, tmp_path, monkeypatch, capsys):
    """An --out-dir whose outputs exist is refused (nothing changed) unless --force; without --out-dir
    every run writes a new timestamped folder."""
    from questkern.cli import main

    args = ["quality", "study", "--trace-dir", str(trace_dir), "--page-sizes", "16", "--dense-layers", "1"]
    (tmp_path / "quality_recall.csv").write_text("mine\n")
    assert main([*args, "--out-dir", str(tmp_path)]) == 2
    assert "quality_recall.csv exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "quality_recall.csv").read_text() == "mine\n" and not (tmp_path / "quality_layers.csv").exists()
    assert main([*args, "--out-dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "quality_recall.csv").read_text() != "mine\n"
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0 and main(args) == 0
    runs = sorted((tmp_path / "reports" / "data").glob("quality-*"))
    assert len(runs) == 2 and all((r / "quality_recall.csv").exists() for r in runs)
    with pytest.raises(SystemExit):
        main([*args, "--page-sizes", "12"])  # a page size no kernel takes

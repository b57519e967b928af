"""`questkern report` from small committed fixtures: sections, plots, ratios per GPU, inputs."""

import json
import re

import optuna
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from questkern.cli import main
from questkern.report import gather, read_manifest, render
from questkern.report import figures as F
from questkern.report.data import ReportDataError, load_bench

from report_fixtures import DATA, EXPECTED_PLOTS, GPU, OTHER_GPU, PROFILES


def test_fixture_report_plots_and_sections(fixture_report):
    path, manifest = fixture_report
    assert manifest["plots"] == EXPECTED_PLOTS
    # the summary first, then sections in order of importance; the environment last
    assert manifest["sections"] == [
        "summary",
        "speedup",
        "tuning",
        "quality",
        "latency",
        "bandwidth",
        "breakdown",
        "mixed",
        "environment",
    ]
    assert manifest["main"] == "summary-fixture-gpu-a"  # the summary's figure
    assert manifest["gpus"] == [GPU] and not manifest["interpreter"]


def test_report_is_self_contained(fixture_report):
    page = fixture_report[0].read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()[:2000]) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]+src=", page) and "<link" not in page
    assert "cdn.plot.ly" not in page.split("</head>")[1]  # the body loads nothing from a CDN
    for pid in EXPECTED_PLOTS:
        assert page.count(f'id="{pid}"') == 1
    assert "Synthetic fixture data" in page  # fixture numbers are labelled as such


def test_environment_table(fixture_report):
    page = fixture_report[0].read_text(encoding="utf-8")
    env = page.split('id="environment"')[1].split("</table>")[0]
    for cell in ("fixture-gpu-a", "000.00", "3.6.0", "2.11.0", "profile 20260101T000000Z-decode-32k"):
        assert f"<td>{cell}</td>" in env, cell  # versions kept as text ("000.00", not 0.0)


def test_every_figure_titled_with_units():
    bench = load_bench([DATA / "fixture-gpu-a" / "bench.csv", DATA / "fixture-gpu-b" / "bench.csv"])
    plots = F.latency_plots(bench) + F.speedup_plots(bench) + F.bandwidth_plots(bench) + F.step_breakdown_plots(bench)
    assert plots
    for p in plots:
        lay = p.fig.layout
        assert lay.title.text and lay.xaxis.title.text and lay.yaxis.title.text
        assert "(" in lay.yaxis.title.text, p.id  # a unit in parentheses
        gpus = {g for g in ("GPU A", "GPU B") if g in lay.title.text}
        assert len(gpus) == 1, p.id  # one GPU per figure
    with pytest.raises(ValueError, match="no title"):
        F.check_figure(F.Plot("x", "", go.Figure(go.Scatter(x=[1], y=[1]))))
    with pytest.raises(ValueError, match="axis y"):
        F.check_figure(F.Plot("x", "t", go.Figure(go.Scatter(x=[1], y=[1]), layout=dict(title="t", xaxis_title="s"))))


def test_ratios_never_mix_gpus():
    bench = load_bench([DATA / "fixture-gpu-a" / "bench.csv", DATA / "fixture-gpu-b" / "bench.csv"])
    tab = F.speedup_table(bench)
    for gpu in ("fixture-gpu-a", "fixture-gpu-b"):
        raw = pd.read_csv(DATA / gpu / "bench.csv")
        raw = raw[(raw["q_heads"] == 32) & (raw["kv_heads"] == 32) & (raw["seq_len"] == 32768)].set_index("op")
        row = tab[(tab["gpu"] == gpu) & (tab["kv_heads"] == 32) & (tab["seq_len"] == 32768)].iloc[0]
        assert row["speedup_vs_dense"] == pytest.approx(
            raw.loc["dense_decode", "median_us"] / raw.loc["quest_step", "median_us"]
        )
        assert row["speedup_vs_sdpa"] == pytest.approx(
            raw.loc["sdpa", "median_us"] / raw.loc["quest_step", "median_us"]
        )
        assert row["byte_bound"] == pytest.approx(raw.loc["dense_decode", "bytes"] / raw.loc["quest_step", "bytes"])
    # the two GPUs measured the same case with different times: the ratios differ
    a, b = (
        tab[(tab["gpu"] == g) & (tab["kv_heads"] == 32) & (tab["seq_len"] == 32768)].iloc[0]
        for g in ("fixture-gpu-a", "fixture-gpu-b")
    )
    assert a["speedup_vs_dense"] != pytest.approx(b["speedup_vs_dense"])
    assert a["byte_bound"] == pytest.approx(b["byte_bound"])  # bytes do not depend on the GPU


def test_latest_run_wins(tmp_path):
    raw = pd.read_csv(DATA / "fixture-gpu-b" / "bench.csv", dtype=str)
    newer = raw.copy()
    newer["timestamp"] = "2026-02-01T00:00:00+00:00"
    newer["median_us"] = "1.0"
    raw.to_csv(tmp_path / "old.csv", index=False)
    newer.to_csv(tmp_path / "new.csv", index=False)
    bench = load_bench([tmp_path / "new.csv", tmp_path / "old.csv"])
    assert len(bench) == len(raw) and (bench["median_us"] == 1.0).all()


@pytest.mark.parametrize("column, value", [("meta_dtype", "fp8_e5m2"), ("sub_page_size", "16")])
def test_narrow_metadata_rows_are_left_out(tmp_path, column, value):
    """A later fp8-metadata (or hierarchical-pages) run of the same cases must not replace the default rows."""
    raw = pd.read_csv(DATA / "fixture-gpu-b" / "bench.csv", dtype=str)
    fp8 = raw.copy()
    fp8["timestamp"] = "2026-02-01T00:00:00+00:00"
    fp8["median_us"] = "1.0"
    fp8[column] = value
    raw.to_csv(tmp_path / "default.csv", index=False)
    fp8.to_csv(tmp_path / "fp8.csv", index=False)
    bench = load_bench([tmp_path / "default.csv", tmp_path / "fp8.csv"])
    assert len(bench) == len(raw) and (bench["median_us"] != 1.0).all()


def test_bad_bench_csv_names_the_file(tmp_path):
    bad = tmp_path / "bench.csv"
    bad.write_text("gpu,op,seq_len\nx,select,8\n")
    with pytest.raises(ReportDataError, match=r"bench.csv.*median_us"):
        load_bench([bad])
    bad.write_text("gpu,op,seq_len,median_us\nx,select,8,-1\n")
    with pytest.raises(ReportDataError, match="positive"):
        load_bench([bad])


def test_bench_only_report_tolerates_absence(tmp_path):
    inputs = gather([DATA / "fixture-gpu-b"], [tmp_path / "none"], [tmp_path / "none"])
    page, manifest = render(inputs, title="t")
    assert "quality" not in manifest["sections"] and "profile-fixture-gpu-a" not in manifest["plots"]
    assert "No tuning table of this GPU found" in page and "No Optuna study given" in page
    assert "No profile of this GPU (profiles/fixture-gpu-b/" in page


def _study(storage: str) -> None:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    study = optuna.create_study(study_name="select-h100", storage=storage, directions=["minimize", "maximize"])
    study.set_metric_names(["latency_us", "recall"])
    dist = {"num_warps": CategoricalDistribution([2, 4, 8]), "chunk_pages": IntDistribution(8, 64, log=True)}
    for i, (w, c) in enumerate([(2, 8), (4, 16), (8, 32), (4, 64), (2, 32), (8, 8), (4, 8), (2, 64)]):
        lat = 10.0 + 3 * (w == 8) + 0.05 * c + 0.3 * i % 2
        rec = 0.8 + 0.002 * c
        study.add_trial(
            optuna.trial.create_trial(params={"num_warps": w, "chunk_pages": c}, distributions=dist, values=[lat, rec])
        )


def test_tuning_sections_from_table_and_study(tmp_path):
    from questkern.configs.keys import EntryKey
    from questkern.configs.table import make_entry, new_table

    table = new_table("fixture-gpu-a", "Synthetic fixture GPU A")
    key = EntryKey.for_call(
        "select",
        dtype="bfloat16",
        head_dim=128,
        group=1,
        page_size=16,
        seq_len=32768,
        batch=1,
        budget=2048,
        gqa_mode="shared",
    )
    table["entries"].append(
        make_entry(
            key,
            {"chunk_pages": 32, "block_d": 128, "num_warps": 4, "num_stages": 1, "merge_warps": 4},
            9.5,
            12.0,
            trials=8,
        )
    )
    (tmp_path / "fixture-gpu-a.json").write_text(json.dumps(table))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _study(storage)
    inputs = gather([DATA / "fixture-gpu-a"], [tmp_path / "none"], [tmp_path], storage)
    page, manifest = render(inputs, title="t")
    for pid in (
        "history-select-h100-latency-us",
        "history-select-h100-recall",
        "importance-select-h100-latency-us",
        "pareto-select-h100",
    ):
        assert pid in manifest["plots"], manifest["plots"]
    assert "chunk_pages=32" in page and "tuned vs default (×)" in page
    with pytest.raises(ReportDataError, match="not in"):
        gather([DATA / "fixture-gpu-a"], [], [], storage, ["no-such-study"])


def test_cli_never_overwrites(tmp_path, fixture_report):
    args = [
        "report",
        "--name",
        "example",
        "--data",
        str(DATA / "fixture-gpu-b"),
        "--profiles",
        str(PROFILES),
        "--tuning",
        str(tmp_path),
        "--out-dir",
        str(fixture_report[0].parent),
    ]
    before = fixture_report[0].read_bytes()
    with pytest.raises(SystemExit, match="exists; pass --force"):
        main(args)
    assert fixture_report[0].read_bytes() == before
    with pytest.raises(SystemExit, match="--name"):
        main(["report", "--name", "../evil", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file"):
        main(["report", "--name", "x", "--data", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])
    assert main([*args[:-1], str(tmp_path), "--force"]) == 0
    assert read_manifest((tmp_path / "example.html").read_text())["gpus"] == ["fixture-gpu-b"]


def test_bound_vs_sdpa_comes_from_the_csv_when_it_carries_one(tmp_path):
    raw = pd.read_csv(DATA / "fixture-gpu-a" / "bench.csv")
    assert F.speedup_table(load_bench([DATA / "fixture-gpu-a" / "bench.csv"]))["bound_vs_sdpa"].isna().all()
    raw["bound_speedup_vs_sdpa"] = raw["median_us"] * 0 + 7.0
    raw.loc[raw["op"] == "quest_step", "bound_speedup_vs_sdpa"] = 6.5
    (tmp_path / "gpu").mkdir()
    raw.to_csv(tmp_path / "gpu" / "bench.csv", index=False)
    tab = F.speedup_table(load_bench([tmp_path / "gpu" / "bench.csv"]))
    assert (tab["bound_vs_sdpa"] == 6.5).all()  # the step's own bound, not another op's
    names = [t.name for p in F.speedup_plots(load_bench([tmp_path / "gpu" / "bench.csv"])) for t in p.fig.data]
    assert any(n.startswith("bound vs SDPA") for n in names)


def test_table_vs_heuristic_comes_from_the_heuristic_rows_own_run(tmp_path):
    """bench --vs-heuristic rows: the ratio is the one their run recorded, even when a newer
    CSV (without --vs-heuristic) replaces the same case's tuned rows."""
    raw = pd.read_csv(DATA / "fixture-gpu-a" / "bench.csv")
    assert F.heuristic_table(load_bench([DATA / "fixture-gpu-a" / "bench.csv"])).empty
    tuned = raw[raw["op"] == "quest_step"].copy()
    heur = tuned.copy()
    heur["op"] = "quest_step_heuristic"
    heur["median_us"] = tuned["median_us"] * 1.1
    heur["speedup_vs_heuristic"] = 1.1
    old = pd.concat([raw.assign(speedup_vs_heuristic=float("nan")), heur], ignore_index=True)
    newer = raw.copy()
    newer["timestamp"] = "2030-01-01T00:00:00+00:00"
    newer["median_us"] = newer["median_us"] * 3  # another run: must not enter the ratio
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old.to_csv(tmp_path / "a" / "bench_vs_heuristic.csv", index=False)
    newer.to_csv(tmp_path / "b" / "bench.csv", index=False)
    bench = load_bench([tmp_path / "a" / "bench_vs_heuristic.csv", tmp_path / "b" / "bench.csv"])
    tab = F.heuristic_table(bench)
    assert len(tab) == len(tuned) and set(tab["op"]) == {"quest_step"}
    assert tab["speedup_vs_heuristic"].tolist() == pytest.approx([1.1] * len(tab))
    assert sorted(tab["table_us"]) == pytest.approx(sorted(tuned["median_us"]))
    (line,) = F.heuristic_summary(tab)
    assert "quest_step: the tuning table's configs are 1.100x the heuristic's" in line
    (plot,) = F.heuristic_plots(bench)
    assert plot.fig.layout.yaxis.title.text == "heuristic time / table time (×)"
    page, _ = render(gather([tmp_path / "a", tmp_path / "b"], [], []), title="t")
    assert "Tuning table vs heuristic configs, same run" in page and plot.id in page


# ---------------------------------------------------------------- bad --data: named, never a traceback, never skipped silently


def _bench_text(**override):
    cols = {"gpu": "g", "op": "select", "seq_len": "8", "median_us": "3.0", "batch": "1"}
    cols.update(override)
    return ",".join(cols) + "\n" + ",".join(cols.values()) + "\n"


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("bench.csv", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text CSV file"),
        ("bench.csv", b"", "empty file"),
        ("bench.csv", b"gpu,op,seq_len\nx,select,8\n", "lacks columns ['median_us']"),
        (
            "bench.csv",
            _bench_text(seq_len="long").encode(),
            "column 'seq_len' must hold numbers, got 'long' in data row 1",
        ),
        ("bench.csv", _bench_text(median_us="fast").encode(), "column 'median_us' must hold numbers, got 'fast'"),
        ("bench.csv", b"gpu,op,seq_len,median_us\n", "has a header but no rows"),
        ("quality_x.csv", b"metric,value\nrecall,high\n", "column 'value' must hold numbers"),
    ],
)
def test_report_bad_data_file_is_one_line_error(tmp_path, capsys, name, content, expect):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "report",
                "--name",
                "x",
                "--data",
                str(f),
                "--no-tuning",
                "--profiles",
                str(tmp_path / "none"),
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
    msg = str(e.value.code)
    assert msg.startswith("questkern report: ") and str(f) in msg and expect in msg
    assert not (tmp_path / "out" / "x.html").exists()


def test_report_folder_csv_that_is_no_input_is_skipped_and_said_so(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    (d / "bench.csv").write_text(_bench_text())
    (d / "notes.csv").write_text("a,b\n1,2\n")
    (d / "empty.csv").write_text("")
    assert (
        main(
            [
                "report",
                "--name",
                "x",
                "--data",
                str(d),
                "--no-tuning",
                "--profiles",
                str(tmp_path / "none"),
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"skipped {d / 'notes.csv'}: neither a bench CSV" in err and f"skipped {d / 'empty.csv'}: empty file" in err


def test_report_out_dir_that_is_a_file_is_refused_first(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["report", "--name", "x", "--data", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "f")])
    assert "--out-dir" in str(e.value.code) and "is a file, expected a directory" in str(e.value.code)


def test_summary_opens_the_report(fixture_report):
    """The page opens with the summary: the headline cases as a small table with human column names,
    a verdict line, and the one summary figure, before any other section."""
    page = fixture_report[0].read_text(encoding="utf-8")
    body = page.split("<body>", 1)[1]
    summary = body.split('id="summary"')[1].split('id="speedup"')[0]
    assert body.index('id="summary"') < body.index('id="speedup"') < body.index('id="environment"')
    for name in ("context (tokens)", "Quest step (µs)", "torch SDPA (µs)", "speedup vs SDPA (×)"):
        assert f"<th>{name}</th>" in summary, name
    assert "Best case: " in summary and 'id="summary-fixture-gpu-a"' in summary
    assert "quest_us" not in summary and "<details" not in summary
    # long tables are collapsed
    assert body.split('id="speedup"')[1].split('id="tuning"')[0].count("<details>") >= 1


def test_one_gpu_per_report(tmp_path, monkeypatch, capsys):
    """Data of several GPUs: an error naming them without --gpu; with it, the other GPU's rows, profiles
    and tuning tables are left out with a printed notice, and nothing of it reaches the page."""
    import shutil

    with pytest.raises(SystemExit, match="2 GPUs .*fixture-gpu-a, fixture-gpu-b.*--gpu"):
        main(["report", "--name", "x", "--data", str(DATA), "--no-tuning", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "x.html").exists()
    monkeypatch.chdir(tmp_path)  # default profiles: profiles/<gpu-key>/ of the report's GPU only
    shutil.copytree(PROFILES / GPU, tmp_path / "profiles" / GPU)
    shutil.copytree(PROFILES / GPU, tmp_path / "profiles" / OTHER_GPU)
    for meta in (tmp_path / "profiles" / OTHER_GPU).rglob("meta.json"):
        doc = json.loads(meta.read_text())
        doc["device"].update(gpu=OTHER_GPU, gpu_name="Synthetic fixture GPU B (not a measurement)")
        meta.write_text(json.dumps(doc))
    from questkern.configs.table import new_table

    (tmp_path / "tables").mkdir()
    for g in (GPU, OTHER_GPU):
        (tmp_path / "tables" / f"{g}.json").write_text(json.dumps(new_table(g, g)))
    assert (
        main(
            [
                "report",
                "--name",
                "x",
                "--data",
                str(DATA),
                "--gpu",
                OTHER_GPU,
                "--tuning",
                "tables",
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"note: left out 41 bench rows of GPU {GPU}" in out and f"left out tuning table tables/{GPU}.json" in out
    assert "left out profile" not in out  # profiles/<other key>/ is not even read
    page = (tmp_path / "x.html").read_text()
    manifest = read_manifest(page)
    assert manifest["gpus"] == [OTHER_GPU] and f"profile-{OTHER_GPU}" in manifest["plots"]
    assert GPU not in page and "GPU A" not in page  # nothing of the other GPU: rows, profile, table
    assert "1 other GPU(s) were left out" in page


def test_interpreter_data_is_labelled_on_every_figure(tmp_path):
    """A CPU run (the Triton interpreter): a banner, and every timing figure says the times mean nothing
    instead of claiming CUDA-graph replays."""
    from questkern.configs.gpus import CPU_KEY

    raw = pd.read_csv(DATA / GPU / "bench.csv", dtype=str)
    raw["gpu"], raw["gpu_name"] = CPU_KEY, "cpu (Triton interpreter)"
    (tmp_path / CPU_KEY).mkdir()
    raw.to_csv(tmp_path / CPU_KEY / "bench-20260101T000000Z.csv", index=False)
    page, manifest = render(gather([tmp_path], [], []), title="t")
    assert manifest["interpreter"] and "No GPU." in page and "CUDA-graph replays" not in page
    timed = [pid for pid in manifest["plots"] if not pid.startswith(("recall", "quality"))]
    assert timed
    for pid in timed:
        div = page.split(f'id="{pid}"')[1].split('<div class="plot">')[0]
        assert "Triton interpreter on CPU: timings mean nothing" in div, pid
        assert "Triton interpreter on CPU (no GPU): these times are of the interpreter" in div, pid


def test_model_bench_in_the_summary(tmp_path):
    """A bench_model CSV (questkern bench --model): Quest's tokens/s, SDPA's, speedup, bound and gain captured
    in the summary and in its own section; another GPU's model rows are left out."""
    from questkern.cli.bench import MODEL_COLUMNS

    rows = []
    for gpu in (GPU, OTHER_GPU):
        for att, us in (("sdpa", 2000.0), ("none", 1000.0), ("dense", 1900.0), ("quest", 1250.0)):
            rows.append(
                {c: "" for c in MODEL_COLUMNS}
                | dict(
                    gpu=gpu,
                    gpu_name=gpu,
                    model="llama3-8b",
                    layers=32,
                    batch=8,
                    seq_len=32768,
                    attention=att,
                    ms_per_token=us / 1e3,
                    tokens_per_s=8 / (us * 1e-6),
                    speedup_vs_sdpa=2000.0 / us,
                    bound_speedup=1.6 if att == "quest" else "",
                    gain_captured=0.8 if att == "quest" else "",
                    timestamp="2026-01-01T00:00:00+00:00",
                )
            )
    (tmp_path / "m").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "m" / "bench_model-20260101T000000Z.csv", index=False)
    inputs = gather([DATA / GPU, tmp_path / "m"], [], [], gpu=GPU)
    assert any(f"model bench rows of GPU {OTHER_GPU}" in n for n in inputs.notices)
    page, manifest = render(inputs, title="t")
    summary = page.split('id="summary"')[1].split('id="speedup"')[0]
    for name in (
        "Quest (tokens/s)",
        "SDPA (tokens/s)",
        "speedup vs SDPA (×)",
        "bound vs SDPA (×)",
        "gain captured (%)",
    ):
        assert f"<th>{name}</th>" in summary, name
    assert "<td>6400</td>" in summary and "<td>4000</td>" in summary and "<td>1.6</td>" in summary
    assert "<td>80</td>" in summary and "model" in manifest["sections"]


def test_log_axes_label_every_decade_and_plots_hold_few_series():
    ticks, labels = F.log_ticks([20.0, 700.0])
    assert ticks == [10, 20, 50, 100, 200, 500, 1000] and labels == ["10", "20", "50", "100", "200", "500", "1000"]
    assert F.log_ticks([3e4, 2e6])[1][:3] == ["20k", "50k", "100k"]
    bench = load_bench([DATA / GPU / "bench.csv"])
    for p in F.latency_plots(bench):
        assert list(p.fig.layout.yaxis.tickvals) and all(t for t in p.fig.layout.yaxis.ticktext)
    many = go.Figure(
        [go.Scatter(x=[1], y=[1]) for _ in range(F.MAX_SERIES + 1)],
        layout=dict(title="t", xaxis_title="x (s)", yaxis_title="y (s)"),
    )
    with pytest.raises(ValueError, match="series"):
        F.check_figure(F.Plot("x", "t", many))
    recall = pd.read_csv(DATA / "quality_recall.csv")
    for p in F.recall_plots(recall):
        assert len(p.fig.data) <= F.MAX_SERIES


def test_profiles_given_for_another_gpu_are_left_out():
    inputs = gather([DATA / OTHER_GPU], [PROFILES], [])
    assert inputs.gpu == OTHER_GPU and inputs.profiles == [] and inputs.dropped_gpus == 1
    assert any(n.startswith("left out profile ") and n.endswith(f"of GPU {GPU}") for n in inputs.notices)
    with pytest.raises(ReportDataError, match="--gpu 'h100': the data holds fixture-gpu-b"):
        gather([DATA / OTHER_GPU], [], [], gpu="h100")

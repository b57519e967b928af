"""``questkern bench --sub-page-size``: hierarchical-page cases next to ordinary ones in one
run, checked against the references, with the metadata bytes of the sub-page size."""

import csv

import pytest
import torch

from questkern.bench.core import Case, case_bytes, run_case
from questkern.cli import main


def test_hier_case_checks_pass_and_has_the_metadata_bytes_of_its_sub_page():
    case = Case(2, 8, 2, 64, torch.bfloat16, 700, 64, 256, sub_page_size=16)
    rows, checks = run_case(case, torch.device("cpu"), check=True, rep_ms=1)
    assert checks["select_exact"] is True and checks["step_select_exact"] is True
    assert checks["quest_maxerr"] < 5e-2
    assert {r["sub_page_size"] for r in rows} == {16}
    flat16 = Case(2, 8, 2, 64, torch.bfloat16, 704, 16, 256)  # 44 pages of 16 = 11 pages of 64
    assert (
        case_bytes(Case(2, 8, 2, 64, torch.bfloat16, 704, 64, 256, sub_page_size=16), 2)["select"]
        == case_bytes(flat16, 2)["select"]
    )
    with pytest.raises(ValueError, match="classic path"):
        run_case(case, torch.device("cpu"), path="fused")


def test_bench_cli_sub_page_size_applies_to_larger_pages(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    rc = main(
        [
            "bench",
            "--seq",
            "320",
            "--batch",
            "1",
            "--heads",
            "4/2",
            "--head-dim",
            "64",
            "--budget",
            "128",
            "--page-size",
            "16,64",
            "--sub-page-size",
            "16",
            "--check",
            "--out",
            str(out),
            "--rep-ms",
            "1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "p16:" in text and "p64/sub16:" in text and "check: 2 of 2 cases PASS" in text
    rows = list(csv.DictReader(open(out)))
    assert {(r["page_size"], r["sub_page_size"]) for r in rows} == {("16", ""), ("64", "16")}
    sel = {r["page_size"]: int(r["bytes"]) for r in rows if r["op"] == "select"}
    assert sel["16"] == sel["64"]  # 320 tokens: 20 pages of 16, 5 pages of 64 x 4 sub-pages (+ the same query)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--sub-page-size", "12", "--page-size", "64"], "power of two in 4..32"),
        (["--sub-page-size", "16", "--page-size", "16"], "needs a --page-size larger than it"),
        (["--sub-page-size", "16", "--page-size", "64", "--path", "fused"], "classic path only"),
        (["--sub-page-size", "16", "--page-size", "64", "--compare-paths"], "classic path only"),
        (["--sub-page-size", "16", "--model", "tiny", "--page-size", "16"], "with --model needs a --page-size larger"),
    ],
)
def test_bench_cli_refuses_bad_sub_page_options_before_any_case(argv, match, tmp_path, capsys):
    rc = main(["bench", *argv, "--out", str(tmp_path / "b.csv"), "--rep-ms", "1"])
    assert rc == 2
    captured = capsys.readouterr()
    assert match in captured.err and "[1/" not in captured.out
    assert not (tmp_path / "b.csv").exists()


def test_model_cases_run_on_hierarchical_caches(tmp_path, capsys):
    """--model with --sub-page-size: every layer's cache keeps 4-D metadata, the rows name it, and
    the bound counts the sub-pages' metadata bytes (the bytes of page 16 for p64/sub16)."""
    from questkern.bench.model import ModelCase, ModelStep, _Weights, paged_caches
    from questkern.bench.models import PRESETS

    shape = PRESETS["tiny"]
    dev = torch.device("cpu")
    base = dict(dtype=torch.bfloat16, budget=128, dense_layers=1)
    hier = ModelCase(shape, 1, 300, page_size=64, sub_page_size=16, **base)
    caches = paged_caches(hier, dev)
    assert all(c.kmin.shape[2] == 4 and c.sub_page_size == 16 for c in caches)
    w = _Weights(shape, hier.dtype, dev)
    b_hier = ModelStep(hier, "quest", w, dev, caches).attention_bytes()
    b_plain = ModelStep(
        ModelCase(shape, 1, 300, page_size=64, **base),
        "quest",
        w,
        dev,
        paged_caches(ModelCase(shape, 1, 300, page_size=64, **base), dev),
    ).attention_bytes()
    n_pages, sel = 5, 2 * 2 * 64 * shape.kv_heads * shape.head_dim * 2  # 300 tokens; K = 2 pages of 64
    meta = lambda subs: 2 * n_pages * subs * shape.kv_heads * shape.head_dim * 2  # noqa: E731
    dense = 2 * 300 * shape.kv_heads * shape.head_dim * 2
    assert b_plain == dense + (shape.layers - 1) * (meta(1) + sel)
    assert b_hier == dense + (shape.layers - 1) * (meta(4) + sel)
    out = tmp_path / "m.csv"
    rc = main(
        [
            "bench",
            "--model",
            "tiny",
            "--seq",
            "300",
            "--batch",
            "1",
            "--page-size",
            "64",
            "--sub-page-size",
            "16",
            "--budget",
            "128",
            "--dense-layers",
            "1",
            "--rep-ms",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert rows and {r["sub_page_size"] for r in rows} == {"16"} and {r["page_size"] for r in rows} == {"64"}

"""Suite summaries and figures from synthetic suite CSVs (no model)."""

from __future__ import annotations

import pandas as pd
import pytest

from questkern.quality.figures import quality_figures
from questkern.quality.suite_summary import accuracy_table, heads_tables, main


def _acc():
    rows = []
    for q in range(4):
        dense_ok = int(q < 3)
        for v, ok in (
            ("dense", dense_ok),
            ("p16 b1024 shared-sum", int(q == 0)),
            ("p16 b1024 shared-sum rerank4", dense_ok),
        ):
            rows.append(
                {
                    "task": "niah_single",
                    "context": 8192,
                    "haystack": f"h{q}",
                    "question": 0,
                    "variant": v,
                    "budget": None if v == "dense" else 1024,
                    "correct": ok,
                    "score": float(ok),
                }
            )
    return pd.DataFrame(rows)


def _heads():
    rows = []
    for q in range(2):
        for layer in (1, 5):
            for h in range(2):
                mass = 0.5 if (layer, h) == (5, 1) else 0.01
                rows.append(
                    {
                        "task": "niah_single",
                        "context": 8192,
                        "haystack": f"h{q}",
                        "question": 0,
                        "dense_correct": 1,
                        "layer": layer,
                        "q_head": h,
                        "kv_head": 0,
                        "needle_mass": mass,
                        "kept[a]": float(q == 0),
                        "recall[a]": 0.9,
                        "kept[b]": 1.0,
                        "recall[b]": 0.95,
                    }
                )
    return pd.DataFrame(rows)


def test_accuracy_table_against_dense():
    t = accuracy_table(_acc()).set_index("variant")
    assert t.loc["dense", "accuracy"] == 0.75 and t.loc["p16 b1024 shared-sum", "delta_points"] == pytest.approx(-50)
    assert t.loc["p16 b1024 shared-sum", "retained"] == pytest.approx(1 / 3)
    assert t.loc["p16 b1024 shared-sum rerank4", "retained"] == 1.0
    assert t.loc["p16 b1024 shared-sum rerank4", "rerank_bytes"] > 0 == t.loc["p16 b1024 shared-sum", "rerank_bytes"]


def test_heads_tables_pick_retrieval_heads():
    lay, kept = heads_tables(_heads())
    assert lay.loc[(lay.layer == 5), "needle_mass_max"].max() == 0.5
    k = kept.set_index("variant")
    assert (
        k.loc["a", "retrieval_heads"] == 2
        and k.loc["a", "needle_all_kept"] == 0.5
        and k.loc["b", "needle_all_kept"] == 1.0
    )


def test_cli_writes_tables_and_figures(tmp_path):
    _acc().to_csv(tmp_path / "s_accuracy.csv", index=False)
    _heads().to_csv(tmp_path / "s_heads.csv", index=False)
    assert main([str(tmp_path / "s"), "--out-dir", str(tmp_path / "quality"), "--name", "x"]) == 0
    assert {p.name for p in (tmp_path / "quality").iterdir()} == {
        "x_accuracy.csv",
        "x_heads_layers.csv",
        "x_heads_kept.csv",
    }
    titles = [t for t, _ in quality_figures(tmp_path)]
    assert titles == ["Quality suite x", "Head diagnostics x"]


def test_join_runs_keeps_common_prompts_and_checks_dense():
    from questkern.quality.suite_summary import join_runs

    a = _acc()
    b = _acc()
    b = b[b["haystack"] != "h3"].copy()
    b.loc[b["variant"] == "p16 b1024 shared-sum", "variant"] = "p8 b1024 per_head"
    j = join_runs([a, b])
    assert set(j["haystack"]) == {"h0", "h1", "h2"} and (j["variant"] == "dense").sum() == 3
    assert set(j["variant"]) == {"dense", "p16 b1024 shared-sum", "p16 b1024 shared-sum rerank4", "p8 b1024 per_head"}
    b.loc[(b["variant"] == "dense") & (b["haystack"] == "h0"), "correct"] = 0
    with pytest.raises(ValueError, match="dense answers differ"):
        join_runs([a, b])


def test_read_fraction_at_context():
    t = accuracy_table(_acc()).set_index("variant")
    base = t.loc["p16 b1024 shared-sum", "read_frac_at_context"]
    # K/V of 1024 of 8192 tokens plus 512 pages of (min, max) metadata = 1/8 + 1/16
    assert base == pytest.approx(1 / 8 + 1 / 16)
    assert t.loc["p16 b1024 shared-sum rerank4", "read_frac_at_context"] == pytest.approx(base + 4 * 63 * 16 / 8192 / 2)


def test_accuracy_table_sums_selections_when_counted():
    acc = _acc()
    assert "selection_frac" not in accuracy_table(acc).columns  # runs before issue 19
    acc["steps"] = [0 if v == "dense" else 84 * 6 for v in acc["variant"]]
    acc["selections"] = [0 if v == "dense" else 84 * (2 if "rerank" in v else 6) for v in acc["variant"]]
    t = accuracy_table(acc).set_index("variant")
    assert t.loc["p16 b1024 shared-sum rerank4", "selections"] == 4 * 168
    assert t.loc["p16 b1024 shared-sum rerank4", "selection_frac"] == pytest.approx(1 / 3)
    assert t.loc["p16 b1024 shared-sum", "selection_frac"] == 1.0 and t.loc["dense", "steps"] == 0

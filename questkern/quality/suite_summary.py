"""Summaries of the quality suite's CSVs (issue 16): accuracy per variant against dense, head diagnostics.

    python -m questkern.quality.suite_summary PREFIX [PREFIX ...] [--out-dir DIR] [--name NAME]

reads ``PREFIX_accuracy.csv`` / ``PREFIX_heads.csv`` (written by
:mod:`questkern.quality.suite`; several runs of the same seeds are joined on the
prompts they all cover, dense rows taken from the first, and must agree) and writes

* ``NAME_accuracy.csv`` — per (task, context, variant): prompts, correct, accuracy,
  dense accuracy on the same prompts, ``delta_points`` (variant - dense, in points),
  ``retained`` (variant correct among the prompts dense answers; variants are not run
  where dense fails, and count as wrong there), and bytes read per sparse layer and
  step at the questkern target shape (GQA 32/8, head dim 128, 32K context, bf16), and
  ``read_frac_at_context``: the variant's bytes per sparse layer over dense K/V bytes at the
  suite's own context and shape (SmolLM2: 9/3 heads, head dim 64); and, for runs that count
  them, ``selections`` / ``steps`` (sparse layer x KV head, summed over the rows actually
  decoded) and ``selection_frac`` (selection reuse, issue 19: the fraction not skipped);
* ``NAME_heads_layers.csv`` — per (task, context, layer, kv_head): mean and max dense
  attention mass on the needle's value tokens at the step that writes its first digit
  (prompts that dense answers), and how often it is a retrieval head (mass >= 0.1);
* ``NAME_heads_kept.csv`` — per (task, context, variant): over retrieval heads
  (query heads with needle mass >= 0.1, layers that are sparse by default), the mean
  fraction of the needle's value tokens in the selected pages, the fraction of heads
  keeping it all, and the mean recall (dense mass on the selection).
"""

from __future__ import annotations

from pathlib import Path

from questkern.quality.selection import parse_variant

RETRIEVAL_MASS = 0.1
TARGET_SHAPE = {"S": 32768, "num_q_heads": 32, "num_kv_heads": 8, "head_dim": 128}
SUITE_SHAPE = {"num_q_heads": 9, "num_kv_heads": 3, "head_dim": 64}  # SmolLM2-135M


def join_runs(runs):
    """Rows of several suite runs on the prompts every run covers; dense rows from the first run
    (a prompt where the runs' dense answers differ is an error: they are not the same prompts)."""
    import pandas as pd

    if len(runs) == 1:
        return runs[0]
    key = ["haystack", "question"]
    common = set(map(tuple, runs[0][key].drop_duplicates().to_numpy()))
    for r in runs[1:]:
        common &= set(map(tuple, r[key].drop_duplicates().to_numpy()))
    keep = lambda r: r[[k in common for k in map(tuple, r[key].to_numpy())]]  # noqa: E731
    dense = [keep(r)[keep(r)["variant"] == "dense"].set_index(key)["correct"].sort_index() for r in runs]
    for d in dense[1:]:
        if not d.equals(dense[0]):
            raise ValueError("the runs' dense answers differ on shared prompts: not the same prompts/model")
    parts = [keep(runs[0])] + [keep(r)[keep(r)["variant"] != "dense"] for r in runs[1:]]
    out = pd.concat(parts, ignore_index=True)
    dup = out.duplicated(key + ["variant"], keep="first")
    return out[~dup]


def accuracy_table(acc):
    import pandas as pd

    dense = acc[acc["variant"] == "dense"].set_index(["haystack", "question"])["correct"]
    out = []
    for (task, ctx, var), g in acc.groupby(["task", "context", "variant"], sort=False):
        d = dense.reindex(pd.MultiIndex.from_frame(g[["haystack", "question"]])).to_numpy()
        c = g["correct"].to_numpy()
        row = {
            "task": task,
            "context": int(ctx),
            "variant": var,
            "budget": g["budget"].iloc[0],
            "prompts": len(g),
            "correct": int(c.sum()),
            "accuracy": c.mean(),
            "dense_accuracy": d.mean(),
            "delta_points": 100 * (c.mean() - d.mean()),
            "retained": c[d == 1].mean() if (d == 1).any() else float("nan"),
            "dense_correct": int(d.sum()),
        }
        if "steps" in g.columns and g["steps"].notna().all():  # runs since issue 19 count selections
            row["selections"], row["steps"] = int(g["selections"].sum()), int(g["steps"].sum())
            row["selection_frac"] = row["selections"] / row["steps"] if row["steps"] else float("nan")
        v = parse_variant(var)
        if not v.dense:
            row.update(v.bytes_per_step(**TARGET_SHAPE))
            here = v.bytes_per_step(int(ctx), **SUITE_SHAPE)["total_bytes"]
            row["read_frac_at_context"] = here / (
                SUITE_SHAPE["num_kv_heads"] * int(ctx) * SUITE_SHAPE["head_dim"] * 2 * 2
            )
        out.append(row)
    return pd.DataFrame(out)


def heads_tables(heads):
    import pandas as pd

    h = heads[heads["dense_correct"] == 1]
    lay = (
        h.groupby(["task", "context", "layer", "kv_head"])
        .agg(
            needle_mass_mean=("needle_mass", "mean"),
            needle_mass_max=("needle_mass", "max"),
            retrieval_frac=("needle_mass", lambda x: float((x >= RETRIEVAL_MASS).mean())),
            samples=("needle_mass", "size"),
        )
        .reset_index()
    )
    ret = h[(h["needle_mass"] >= RETRIEVAL_MASS) & (h["layer"] >= 2)]
    rows = []
    for col in [c for c in h.columns if c.startswith("kept[")]:
        name = col[5:-1]
        for (task, ctx), g in ret.groupby(["task", "context"]):
            if g[col].isna().all():  # a variant of another context's budgets
                continue
            rows.append(
                {
                    "task": task,
                    "context": int(ctx),
                    "variant": name,
                    "retrieval_heads": len(g),
                    "needle_kept_mean": g[col].mean(),
                    "needle_all_kept": float((g[col] >= 1.0).mean()),
                    "recall_mean": g[f"recall[{name}]"].mean(),
                }
            )
    return lay, pd.DataFrame(rows)


def main(argv=None) -> int:
    import argparse

    import pandas as pd

    from questkern._io import write_csv_atomic

    ap = argparse.ArgumentParser(prog="python -m questkern.quality.suite_summary")
    ap.add_argument("prefix", nargs="+")
    ap.add_argument("--out-dir", default="reports/data/quality")
    ap.add_argument("--name", default=None, help="output name prefix (default: the prefix's file name)")
    a = ap.parse_args(argv)
    name = a.name or Path(a.prefix[0]).name
    out = Path(a.out_dir)
    acc = join_runs([pd.read_csv(f"{p}_accuracy.csv", dtype={"expected": str, "generated": str}) for p in a.prefix])
    t = accuracy_table(acc)
    write_csv_atomic(out / f"{name}_accuracy.csv", t, float_format="%.6g")
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        cols = [
            "task",
            "context",
            "variant",
            "prompts",
            "dense_correct",
            "correct",
            "accuracy",
            "dense_accuracy",
            "delta_points",
            "retained",
        ] + (["selection_frac"] if "selection_frac" in t.columns else [])
        print(t[cols].to_string(index=False))
    hp = Path(f"{a.prefix[0]}_heads.csv")
    if hp.exists():
        lay, kept = heads_tables(pd.read_csv(hp))
        write_csv_atomic(out / f"{name}_heads_layers.csv", lay, float_format="%.6g")
        write_csv_atomic(out / f"{name}_heads_kept.csv", kept, float_format="%.6g")
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            print(kept.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

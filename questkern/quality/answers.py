"""Headline answers of the quality study, derived from its CSV tables (for README and report).

All recall numbers are means over samples (trace x layer >= dense_layers x decode step x
query head) of the true softmax mass on the selected tokens.
"""

from __future__ import annotations

import numpy as np

SCHEMA = "questkern.quality_answers"
VERSION = 1
BASE = {"gqa_mode": "shared", "aggregate": "sum", "meta": "fp32"}


def _base(df):
    m = np.ones(len(df), dtype=bool)
    for k, v in BASE.items():
        m &= (df[k].fillna("") == v).to_numpy()
    return df[m]


def _interp_tokens(fixed, recall: float) -> float | None:
    """Tokens a fixed budget needs to reach ``recall`` (linear in log tokens between measured budgets)."""
    f = fixed.sort_values("tokens_mean")
    x, y = np.log(f["tokens_mean"].to_numpy()), f["recall_mean"].to_numpy()
    if len(f) == 0 or recall > y.max():
        return None
    if recall <= y.min():
        return float(np.exp(x[0]))
    y = np.maximum.accumulate(y)
    return float(np.exp(np.interp(recall, y, x)))


def answers(recall_df, passkey_df=None, target: float = 0.95) -> dict:
    """Dict of answers (JSON-ready). ``recall_df``: quality_recall.csv; ``passkey_df``: quality_passkey.csv."""
    out: dict = {
        "schema": SCHEMA,
        "version": VERSION,
        "target_recall": target,
        "budget_for_target": [],
        "adaptive_vs_fixed": [],
        "prop_vs_fixed": [],
        "gqa": [],
        "meta": [],
        "passkey": [],
    }
    base = _base(recall_df)
    fixed = base[base["policy"] == "fixed"]
    for (kind, ctx, P), g in fixed.groupby(["kind", "context", "page_size"]):
        ok = g[g["recall_mean"] >= target].sort_values("param")
        out["budget_for_target"].append(
            {
                "kind": kind,
                "context": int(ctx),
                "page_size": int(P),
                "budget": int(ok["param"].iloc[0]) if len(ok) else None,
                "recall_at_budget": float(ok["recall_mean"].iloc[0]) if len(ok) else None,
                "recall_p10_at_budget": float(ok["recall_p10"].iloc[0]) if len(ok) else None,
            }
        )
    for pol, key in (("adaptive", "adaptive_vs_fixed"), ("prop", "prop_vs_fixed")):
        sub = base[base["policy"] == pol]
        for (kind, ctx, P), g in sub.groupby(["kind", "context", "page_size"]):
            f = fixed[(fixed["kind"] == kind) & (fixed["context"] == ctx) & (fixed["page_size"] == P)]
            for _, r in g.sort_values(["temperature", "param"]).iterrows():
                need = _interp_tokens(f, r["recall_mean"])
                T = r.get("temperature")
                out[key].append(
                    {
                        "kind": kind,
                        "context": int(ctx),
                        "page_size": int(P),
                        "param": float(r["param"]),
                        "temperature": None if T is None or T != T else float(T),
                        "recall_mean": float(r["recall_mean"]),
                        "recall_p10": float(r["recall_p10"]),
                        "tokens_mean": float(r["tokens_mean"]),
                        "fixed_tokens_same_recall": need,
                        "token_ratio": (float(r["tokens_mean"]) / need) if need else None,
                    }
                )
    sel = recall_df[(recall_df["policy"] == "fixed") & (recall_df["meta"] == "fp32")]
    for (kind, ctx, P, b), g in sel.groupby(["kind", "context", "page_size", "param"]):
        if b not in (64, 256, 1024):
            continue
        row = {"kind": kind, "context": int(ctx), "page_size": int(P), "budget": int(b)}
        for _, r in g.iterrows():
            name = r["gqa_mode"] + (f"-{r['aggregate']}" if r["gqa_mode"] == "shared" else "")
            row[f"recall_{name}"] = float(r["recall_mean"])
            row[f"read_frac_{name}"] = float(r["read_frac_mean"])
        out["gqa"].append(row)
    meta = recall_df[
        (recall_df["policy"] == "fixed") & (recall_df["gqa_mode"] == "shared") & (recall_df["aggregate"] == "sum")
    ]
    for (kind, ctx, P, b), g in meta.groupby(["kind", "context", "page_size", "param"]):
        if b not in (64, 256):
            continue
        row = {"kind": kind, "context": int(ctx), "page_size": int(P), "budget": int(b)}
        for _, r in g.iterrows():
            row[f"recall_{r['meta']}"] = float(r["recall_mean"])
        out["meta"].append(row)
    if passkey_df is not None and len(passkey_df):
        ctx_bucket = passkey_df["prompt"].str.extract(r"passkey-(\d+)-")[0].astype(int)
        for (cfg, ctx), g in passkey_df.assign(target=ctx_bucket).groupby(["config", "target"]):
            out["passkey"].append(
                {
                    "config": cfg,
                    "context": int(ctx),
                    "correct": int(g["correct"].sum()),
                    "prompts": int(len(g)),
                    "accuracy": float(g["correct"].mean()),
                }
            )
    return out


def format_answers(ans: dict) -> str:
    """Plain-text summary for the terminal / README."""
    lines = [f"Budget (tokens, fixed, shared-sum, fp32 metadata) keeping mean recall >= {ans['target_recall']:.0%}:"]
    for r in ans["budget_for_target"]:
        b = r["budget"]
        lines.append(
            f"  {r['kind']:8s} ctx {r['context']:5d} page {r['page_size']:2d}: "
            + (
                f"{b} (recall {r['recall_at_budget']:.3f}, p10 {r['recall_p10_at_budget']:.3f})"
                if b
                else "none of the budgets"
            )
        )
    lines.append("Adaptive budget vs fixed at equal mean recall (token_ratio < 1: adaptive reads fewer):")
    for r in ans["adaptive_vs_fixed"]:
        if r["page_size"] == 16:
            ratio = f"{r['token_ratio']:.2f}" if r["token_ratio"] else "n/a"
            lines.append(
                f"  {r['kind']:8s} ctx {r['context']:5d} T {r['temperature']:g} thr {r['param']:<6g}: recall {r['recall_mean']:.3f} "
                f"with {r['tokens_mean']:.0f} tokens; fixed needs {r['fixed_tokens_same_recall'] or float('nan'):.0f} -> ratio {ratio}"
            )
    if ans["passkey"]:
        lines.append("Passkey accuracy (end-to-end generation):")
        for r in ans["passkey"]:
            lines.append(f"  {r['config']:45s} ctx {r['context']:5d}: {r['correct']}/{r['prompts']}")
    return "\n".join(lines)

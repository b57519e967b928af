"""Figures of the quality study for ``questkern report`` (plotly, built from the CSVs).

    from questkern.quality.figures import quality_figures
    for title, fig in quality_figures("reports/data"):
        html += fig.to_html(full_html=False, include_plotlyjs=False)

Each function takes DataFrames read from ``reports/data/quality_*.csv`` and returns a
``plotly.graph_objects.Figure``; :func:`quality_figures` returns ``(title, figure)``
pairs for the files present (an empty list when the study has not been run).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

BASE = dict(gqa_mode="shared", aggregate="sum", meta="fp32")


def _base(df: pd.DataFrame, **extra) -> pd.DataFrame:
    m = pd.Series(True, index=df.index)
    for k, v in {**BASE, **extra}.items():
        m &= df[k].fillna("") == v
    return df[m]


def recall_vs_budget(recall: pd.DataFrame) -> go.Figure:
    """Mean recall vs fixed budget, one panel per page size, one line per (kind, context)."""
    d = _base(recall, policy="fixed")
    sizes = sorted(d["page_size"].unique())
    fig = make_subplots(rows=1, cols=max(1, len(sizes)), shared_yaxes=True, subplot_titles=[f"page {p}" for p in sizes])
    for i, P in enumerate(sizes, 1):
        for (kind, ctx), g in d[d["page_size"] == P].groupby(["kind", "context"]):
            g = g.sort_values("param")
            fig.add_trace(
                go.Scatter(
                    x=g["param"],
                    y=g["recall_mean"],
                    mode="lines+markers",
                    name=f"{kind} {ctx}",
                    legendgroup=f"{kind}{ctx}",
                    showlegend=i == 1,
                ),
                row=1,
                col=i,
            )
        fig.update_xaxes(type="log", title_text="budget (tokens)", row=1, col=i)
    fig.update_yaxes(title_text="attention recall (mean)", row=1, col=1)
    fig.update_layout(title="Recall vs budget per page size (shared-sum selection, fp32 metadata, layers >= 2)")
    return fig


def policies_vs_tokens(recall: pd.DataFrame, page_size: int = 16) -> go.Figure:
    """Recall vs tokens attended for fixed, proportional and adaptive budgets (and the oracle)."""
    fig = go.Figure()
    d = recall[recall["page_size"] == page_size]
    for pol, dash in (("fixed", "solid"), ("prop", "dot"), ("adaptive", "dash")):
        sub = _base(d, policy=pol)
        for (kind, ctx, T), g in sub.groupby(["kind", "context", sub["temperature"].fillna(0)]):
            g = g.sort_values("tokens_mean")
            name = f"{pol}{f' T={T:g}' if T else ''} {kind} {ctx}"
            fig.add_trace(
                go.Scatter(
                    x=g["tokens_mean"],
                    y=g["recall_mean"],
                    mode="lines+markers",
                    line=dict(dash=dash),
                    name=name,
                    hovertext=[f"param {p:g}" for p in g["param"]],
                )
            )
    for (kind, ctx), g in d[d["policy"] == "oracle"].groupby(["kind", "context"]):
        g = g.sort_values("tokens_mean")
        fig.add_trace(
            go.Scatter(
                x=g["tokens_mean"],
                y=g["recall_mean"],
                mode="lines",
                line=dict(dash="longdashdot", width=1),
                name=f"oracle {kind} {ctx}",
            )
        )
    fig.update_xaxes(type="log", title_text="tokens attended per selection row (mean)")
    fig.update_yaxes(title_text="attention recall (mean)")
    fig.update_layout(title=f"Fixed vs proportional vs adaptive budget, page {page_size}")
    return fig


def gqa_and_meta(recall: pd.DataFrame, page_size: int = 16) -> go.Figure:
    """Recall vs K/V bytes read (fraction of dense) for GQA modes and metadata types."""
    d = recall[(recall["page_size"] == page_size) & (recall["policy"] == "fixed")]
    fig = go.Figure()
    for (mode, agg, meta), g in d.groupby([d["gqa_mode"], d["aggregate"].fillna(""), d["meta"]]):
        g = g.groupby("param", as_index=False)[["read_frac_mean", "recall_mean"]].mean().sort_values("param")
        name = mode + (f"-{agg}" if agg else "") + f" {meta}"
        fig.add_trace(
            go.Scatter(
                x=g["read_frac_mean"],
                y=g["recall_mean"],
                mode="lines+markers",
                name=name,
                hovertext=[f"budget {int(b)}" for b in g["param"]],
            )
        )
    fig.update_xaxes(type="log", title_text="K/V bytes read / dense (mean over contexts)")
    fig.update_yaxes(title_text="attention recall (mean)")
    fig.update_layout(title=f"GQA selection modes and metadata types, page {page_size}, fixed budgets")
    return fig


def recall_by_layer(layers: pd.DataFrame, budget: int = 256) -> go.Figure:
    """Heatmap of mean recall per (layer, head) at one budget, largest context."""
    d = layers[layers["budget"] == budget]
    ctx = d["context"].max()
    d = d[d["context"] == ctx].groupby(["layer", "head"], as_index=False)["recall_mean"].mean()
    z = d.pivot(index="head", columns="layer", values="recall_mean")
    fig = go.Figure(
        go.Heatmap(
            z=z.values, x=z.columns, y=z.index, colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="recall")
        )
    )
    fig.update_layout(
        title=f"Recall per layer and head, budget {budget}, page 16, context {ctx}",
        xaxis_title="layer",
        yaxis_title="query head",
    )
    return fig


def passkey_accuracy(passkey: pd.DataFrame) -> go.Figure:
    """End-to-end passkey accuracy per configuration and context."""
    ctx = passkey["prompt"].str.extract(r"passkey-(\d+)-")[0].astype(int)
    d = passkey.assign(target=ctx).groupby(["config", "target"], as_index=False)["correct"].mean()
    fig = go.Figure()
    for target, g in d.groupby("target"):
        fig.add_trace(go.Bar(x=g["config"], y=g["correct"], name=f"context {target}"))
    fig.update_layout(
        title="Passkey accuracy, greedy generation (Quest on layers >= 2 vs dense)",
        barmode="group",
        yaxis=dict(title="accuracy", range=[0, 1.05]),
    )
    return fig


def suite_accuracy(acc: pd.DataFrame, name: str = "") -> go.Figure:
    """Suite accuracy per variant, one panel per (task, context), dense as the first bar."""
    keys = list(acc.groupby(["task", "context"], sort=False).groups)
    fig = make_subplots(
        rows=len(keys) or 1,
        cols=1,
        subplot_titles=[
            f"{t} {c} (prompts: {int(acc[(acc.task == t) & (acc.context == c)].prompts.max())})" for t, c in keys
        ],
    )
    for i, (t, c) in enumerate(keys, 1):
        g = acc[(acc["task"] == t) & (acc["context"] == c)]
        fig.add_trace(
            go.Bar(
                x=g["variant"],
                y=g["accuracy"],
                name=f"{t} {c}",
                showlegend=False,
                marker_color=["#444" if v == "dense" else "#1f77b4" for v in g["variant"]],
            ),
            row=i,
            col=1,
        )
        fig.update_yaxes(range=[0, 1.05], title_text="accuracy", row=i, col=1)
    fig.update_layout(
        title=f"Quality suite {name}: greedy answers on varied filler, variants vs dense",
        height=320 * max(1, len(keys)),
    )
    return fig


def suite_heads(layers: pd.DataFrame, kept: pd.DataFrame | None = None) -> go.Figure:
    """Dense attention mass on the needle per layer and KV head (mean over heads of the group and
    prompts), and the fraction of retrieval heads whose selection keeps the needle, per variant."""
    keys = list(layers.groupby(["task", "context"]).groups)
    cols = 2 if kept is not None else 1
    titles = []
    for t, c in keys:
        titles += [f"needle mass {t} {c}"] + (["retrieval heads keeping the needle"] if kept is not None else [])
    fig = make_subplots(rows=len(keys) or 1, cols=cols, subplot_titles=titles)
    for i, (t, c) in enumerate(keys, 1):
        g = layers[(layers["task"] == t) & (layers["context"] == c)]
        z = g.pivot_table(index="kv_head", columns="layer", values="needle_mass_mean")
        fig.add_trace(
            go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=list(z.index), coloraxis="coloraxis"), row=i, col=1
        )
        if kept is not None:
            k = kept[(kept["task"] == t) & (kept["context"] == c)]
            fig.add_trace(go.Bar(x=k["variant"], y=k["needle_all_kept"], showlegend=False), row=i, col=2)
            fig.update_yaxes(range=[0, 1.05], row=i, col=2)
    fig.update_layout(
        title="Head diagnostics: where dense attention reads the needle, and which selections keep it",
        coloraxis=dict(colorscale="Viridis"),
        height=340 * max(1, len(keys)),
    )
    return fig


def quality_figures(data_dir: str | Path = "reports/data") -> list[tuple[str, go.Figure]]:
    """(title, figure) pairs for the quality CSVs found in ``data_dir``."""
    data_dir = Path(data_dir)
    out: list[tuple[str, go.Figure]] = []
    rp, lp, pp = (data_dir / f"quality_{n}.csv" for n in ("recall", "layers", "passkey"))
    if rp.exists():
        r = pd.read_csv(rp)
        out += [
            ("Recall vs budget", recall_vs_budget(r)),
            ("Fixed vs adaptive budget", policies_vs_tokens(r)),
            ("GQA modes and metadata", gqa_and_meta(r)),
        ]
    if lp.exists():
        out.append(("Recall per layer and head", recall_by_layer(pd.read_csv(lp))))
    if pp.exists():
        out.append(("Passkey accuracy", passkey_accuracy(pd.read_csv(pp, dtype={"expected": str, "answer": str}))))
    for ap in sorted((data_dir / "quality").glob("*_accuracy.csv")):  # the varied-text suite (issue 16)
        name = ap.name[: -len("_accuracy.csv")]
        out.append((f"Quality suite {name}", suite_accuracy(pd.read_csv(ap), name)))
        lp2, kp = data_dir / "quality" / f"{name}_heads_layers.csv", data_dir / "quality" / f"{name}_heads_kept.csv"
        if lp2.exists():
            out.append(
                (f"Head diagnostics {name}", suite_heads(pd.read_csv(lp2), pd.read_csv(kp) if kp.exists() else None))
            )
    return out

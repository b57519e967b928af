"""Plotly figures and pandas tables of a report, one function per section.

Rules every figure follows (``check_figure`` enforces them): a title, both axes titled
with units, at most ``MAX_SERIES`` series (facets beyond that), and data from ONE GPU — a
ratio never mixes devices (each figure is built per GPU key; a speedup divides two times of
the same GPU and the same run). Log axes carry a labelled tick at 1, 2 and 5 of every decade.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

OP_STYLE = {  # op -> (label, color, dash)
    "quest_step": ("Quest step (select + sparse decode + combine)", "#d62728", "solid"),
    "dense_decode": ("in-house dense decode", "#1f77b4", "solid"),
    "sdpa": ("torch SDPA (dense)", "#7f7f7f", "dot"),
    "select": ("select (estimate + top-K)", "#ff7f0e", "dash"),
    "sparse_decode": ("sparse decode + combine", "#2ca02c", "dash"),
    "topk_torch": ("torch.topk alone", "#9467bd", "dot"),
    "copy": ("device copy", "#8c564b", "dot"),
}
SHAPE_COLS = ["batch", "q_heads", "kv_heads", "head_dim", "dtype"]
MAX_SERIES = 8
# a line colour per series of the summary figure (pairs: measured solid, bound dotted)
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
# the configuration the README and the summary lead with
HEADLINE = {"head_dim": 128, "dtype": "bf16", "page_size": 16, "budget": 2048, "gqa_mode": "shared"}


@dataclass
class Plot:
    id: str  # the div id in the HTML (the browser test looks for it)
    title: str
    fig: go.Figure
    caption: str = ""
    rank: tuple = ()  # higher = better candidate for the report's main plot
    key: tuple = ()  # the shape (shape_key) or facet a figure shows, for the report's layout


def shape_key(vals) -> tuple:
    """(batch, q_heads, kv_heads, head_dim, dtype) as comparable text, whatever the number types."""
    return tuple(str(_int(v)) if isinstance(v, (int, float)) else str(v) for v in vals)


def slug(*parts) -> str:
    s = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _int(v):
    return int(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None


def shape_label(row) -> str:
    b, hq, hkv, d = (_int(row[c]) for c in ("batch", "q_heads", "kv_heads", "head_dim"))
    kind = "MHA" if hq == hkv else f"GQA {hq // hkv if hq and hkv else '?'}:1"
    return f"batch {b}, heads {hq}/{hkv} ({kind}), d={d}, {row['dtype']}"


def variant_label(row) -> str:
    return f"page {_int(row['page_size'])}, budget {_int(row['budget'])}, {row['gqa_mode']}"


def gpu_title(df: pd.DataFrame, gpu: str) -> str:
    names = df.loc[df["gpu"] == gpu, "gpu_name"].replace("", pd.NA).dropna().unique()
    return str(names[0]) if len(names) else gpu


def _fmt_tick(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def log_ticks(values) -> tuple[list[float], list[str]]:
    """Tick values and labels for a log axis over ``values``: 1, 2 and 5 of every decade they span
    (a label on every tick: 700 us reads 700, not 7)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)) and float(v) > 0]
    if not vals:
        return [], []
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    steps = (1, 2, 5) if hi - lo <= 4 else (1,)
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps]
    ticks = [t for t in ticks if min(vals) / 2.5 <= t <= max(vals) * 2.5]
    return ticks, [_fmt_tick(t) for t in ticks]


def _trace_values(fig: go.Figure, axis: str) -> list:
    out = []
    for t in fig.data:
        v = getattr(t, axis, None)
        if v is not None:
            out += [x for x in v if isinstance(x, (int, float))]
    return out


def _layout(fig: go.Figure, title: str, x: str, y: str, *, logx=True, logy=False) -> go.Figure:
    fig.update_layout(
        title=dict(text=title),
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.22, x=0),
        margin=dict(t=70, b=130),
        height=520,
    )
    if logx:
        tv, tt = log_ticks(_trace_values(fig, "x"))
        fig.update_xaxes(type="log", tickvals=tv or None, ticktext=tt or None)
    if logy:
        tv, tt = log_ticks(_trace_values(fig, "y"))
        fig.update_yaxes(type="log", tickvals=tv or None, ticktext=tt or None)
    return fig


def _seq_ticks(fig: go.Figure, seqs) -> None:
    vals = sorted({int(s) for s in seqs})
    fig.update_xaxes(tickvals=vals, ticktext=[f"{v // 1024}K" if v % 1024 == 0 else str(v) for v in vals])


def check_figure(p: Plot) -> Plot:
    """Refuse a figure without a title, axis titles (units) or data: a programming error."""
    lay = p.fig.layout
    if not (lay.title and lay.title.text):
        raise ValueError(f"plot {p.id}: no title")
    three_d = bool(p.fig.data) and all(t.type in ("scatter3d", "surface", "mesh3d") for t in p.fig.data)
    axes = [lay.scene.xaxis, lay.scene.yaxis, lay.scene.zaxis] if three_d else [lay.xaxis, lay.yaxis]
    for i, a in enumerate(axes):
        if not (a.title and a.title.text):
            raise ValueError(f"plot {p.id}: axis {'xyz'[i]} has no title (with units)")
    if not p.fig.data:
        raise ValueError(f"plot {p.id}: no data")
    if len(p.fig.data) > MAX_SERIES:
        raise ValueError(f"plot {p.id}: {len(p.fig.data)} series, more than {MAX_SERIES} (facet it)")
    return p


def _seq_cases(bench: pd.DataFrame) -> pd.DataFrame:
    """Rows of uniform-length batches (mixed-length cases go to a table instead)."""
    return bench[(bench["lens"].fillna("") == "")]


def _groups(df: pd.DataFrame):
    """(gpu, shape key, rows) per GPU and shape, in a stable order."""
    for gpu in sorted(df["gpu"].unique()):
        g = df[df["gpu"] == gpu]
        for key, rows in g.groupby(SHAPE_COLS, sort=True, dropna=False):
            yield gpu, key, rows


# --------------------------------------------------------------------------- latency


def latency_plots(bench: pd.DataFrame) -> list[Plot]:
    """Latency vs sequence length: Quest step vs in-house dense vs SDPA (and the parts)."""
    plots: list[Plot] = []
    for gpu, key, rows in _groups(_seq_cases(bench)):
        fig = go.Figure()
        first = rows.iloc[0]
        for _variant, v in rows.groupby(["page_size", "budget", "gqa_mode"], dropna=False, sort=True):
            vl = variant_label(v.iloc[0])
            for op in ("quest_step", "select", "sparse_decode"):
                r = v[v["op"] == op].sort_values("seq_len")
                if r.empty:
                    continue
                name, color, dash = OP_STYLE[op]
                fig.add_trace(
                    go.Scatter(
                        x=r["seq_len"],
                        y=r["median_us"],
                        mode="lines+markers",
                        name=f"{name} [{vl}]",
                        line=dict(color=color, dash=dash),
                    )
                )
        for op in ("dense_decode", "sdpa"):
            r = rows[rows["op"] == op].groupby("seq_len", as_index=False)["median_us"].median()
            if r.empty:
                continue
            name, color, dash = OP_STYLE[op]
            fig.add_trace(
                go.Scatter(
                    x=r["seq_len"], y=r["median_us"], mode="lines+markers", name=name, line=dict(color=color, dash=dash)
                )
            )
        if not fig.data:
            continue
        title = f"Decode latency vs context length — {gpu_title(bench, gpu)} — {shape_label(first)}"
        _layout(fig, title, "context length (tokens per sequence)", "median latency per decode step (µs)", logy=True)
        _seq_ticks(fig, rows["seq_len"])
        b, hq, hkv, d = (_int(first[c]) for c in ("batch", "q_heads", "kv_heads", "head_dim"))
        # main plot: most context lengths, then the reference shape (MHA, d=128, batch 1)
        rank = (rows["seq_len"].nunique(), d == 128, hq == hkv, b == 1)
        plots.append(
            check_figure(
                Plot(
                    slug("latency", gpu, *key),
                    title,
                    fig,
                    "Median of CUDA-graph replays with the L2 cache flushed (questkern bench). Log-log axes.",
                    rank,
                    shape_key(key),
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- speedup


def speedup_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Per GPU and case: measured speedups of the Quest step and the byte bound.

    All ratios are taken within one GPU and one case (same run): dense bytes / Quest
    bytes is the ideal speedup when both are bandwidth-bound; ``bound_vs_sdpa`` (CSVs
    that carry it) is the most the step could gain over the run's SDPA were it at its
    bound, the run's graph floor plus its bytes at the copy bandwidth.
    """
    rows = []
    seq = _seq_cases(bench)
    for case, g in seq.groupby(
        ["gpu"] + SHAPE_COLS + ["seq_len", "page_size", "budget", "gqa_mode"], dropna=False, sort=True
    ):
        by = g.set_index("op")
        if "quest_step" not in by.index:
            continue
        q = by.loc["quest_step"]
        r = dict(zip(["gpu"] + SHAPE_COLS + ["seq_len", "page_size", "budget", "gqa_mode"], case))
        r["quest_us"] = q["median_us"]
        r["dense_us"] = by.loc["dense_decode", "median_us"] if "dense_decode" in by.index else math.nan
        r["sdpa_us"] = by.loc["sdpa", "median_us"] if "sdpa" in by.index else math.nan
        r["speedup_vs_dense"] = r["dense_us"] / r["quest_us"]
        r["speedup_vs_sdpa"] = r["sdpa_us"] / r["quest_us"]
        dense_bytes = by.loc["dense_decode", "bytes"] if "dense_decode" in by.index else math.nan
        r["byte_bound"] = dense_bytes / q["bytes"] if q["bytes"] and not math.isnan(q["bytes"]) else math.nan
        r["pct_of_bound"] = 100 * r["speedup_vs_dense"] / r["byte_bound"] if r["byte_bound"] else math.nan
        r["bound_vs_sdpa"] = q["bound_speedup_vs_sdpa"] if "bound_speedup_vs_sdpa" in q.index else math.nan
        rows.append(r)
    return pd.DataFrame(rows)


def speedup_plots(bench: pd.DataFrame) -> list[Plot]:
    tab = speedup_table(bench)
    plots: list[Plot] = []
    if tab.empty:
        return plots
    for gpu, key, rows in _groups(tab):
        fig = go.Figure()
        for _variant, v in rows.groupby(["page_size", "budget", "gqa_mode"], dropna=False, sort=True):
            v = v.sort_values("seq_len")
            vl = variant_label(v.iloc[0])
            fig.add_trace(
                go.Scatter(
                    x=v["seq_len"],
                    y=v["byte_bound"],
                    mode="lines+markers",
                    name=f"byte bound: dense bytes / Quest bytes [{vl}]",
                    line=dict(color="#000000", dash="dash"),
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=v["seq_len"],
                    y=v["speedup_vs_dense"],
                    mode="lines+markers",
                    name=f"measured vs in-house dense [{vl}]",
                    line=dict(color=OP_STYLE["dense_decode"][1]),
                )
            )
            if v["speedup_vs_sdpa"].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=v["seq_len"],
                        y=v["speedup_vs_sdpa"],
                        mode="lines+markers",
                        name=f"measured vs torch SDPA [{vl}]",
                        line=dict(color=OP_STYLE["sdpa"][1]),
                    )
                )
            if v["bound_vs_sdpa"].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=v["seq_len"],
                        y=v["bound_vs_sdpa"],
                        mode="lines+markers",
                        name=f"bound vs SDPA: graph floor + bytes at copy bandwidth [{vl}]",
                        line=dict(color=OP_STYLE["sdpa"][1], dash="dot"),
                    )
                )
        title = f"Quest speedup vs the byte bound — {gpu_title(bench, gpu)} — {shape_label(rows.iloc[0])}"
        _layout(fig, title, "context length (tokens per sequence)", "speedup over dense (×, same GPU and run)")
        fig.add_hline(y=1.0, line=dict(color="#bbbbbb", width=1))
        _seq_ticks(fig, rows["seq_len"])
        plots.append(
            check_figure(
                Plot(
                    slug("speedup", gpu, *key),
                    title,
                    fig,
                    "Ideal speedup = bytes a dense step must read / bytes a Quest step must read"
                    " (selected K/V pages + all page metadata). Dotted: the most the step could"
                    " gain over SDPA at the copy bandwidth of the run plus its measured graph floor"
                    " (one tiny kernel in a CUDA graph, timed like the ops).",
                    key=shape_key(key),
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- bandwidth


def bandwidth_plots(bench: pd.DataFrame) -> list[Plot]:
    """Achieved bandwidth as % of the device copy bandwidth measured in the same run."""
    plots: list[Plot] = []
    seq = _seq_cases(bench).copy()
    pct = seq["pct_copy_bw"]
    derived = 100 * seq["gbps"] / seq["copy_gbps"]
    seq["pct"] = pct.where(pct.notna(), derived)
    seq = seq[seq["pct"].notna() & seq["op"].isin(["quest_step", "sparse_decode", "select", "dense_decode", "sdpa"])]
    for gpu, key, rows in _groups(seq):
        fig = go.Figure()
        for op in ("quest_step", "sparse_decode", "select", "dense_decode", "sdpa"):
            r = rows[rows["op"] == op]
            for _variant, v in r.groupby(["page_size", "budget", "gqa_mode"], dropna=False, sort=True):
                v = v.sort_values("seq_len")
                name, color, dash = OP_STYLE[op]
                label = name if op in ("dense_decode", "sdpa") else f"{name} [{variant_label(v.iloc[0])}]"
                fig.add_trace(
                    go.Scatter(
                        x=v["seq_len"], y=v["pct"], mode="lines+markers", name=label, line=dict(color=color, dash=dash)
                    )
                )
                if op in ("dense_decode", "sdpa"):
                    break  # the dense baselines do not depend on the Quest variant
        copy = rows["copy_gbps"].dropna()
        copy_txt = f"{copy.median():.0f} GB/s" if len(copy) else "n/a"
        title = (
            f"Achieved bandwidth, % of device copy ({copy_txt}) — {gpu_title(bench, gpu)} — {shape_label(rows.iloc[0])}"
        )
        _layout(
            fig,
            title,
            "context length (tokens per sequence)",
            "achieved bandwidth (% of copy bandwidth of the same run)",
        )
        _seq_ticks(fig, rows["seq_len"])
        plots.append(
            check_figure(
                Plot(
                    slug("bandwidth", gpu, *key),
                    title,
                    fig,
                    "Bytes each op must move (each input read once) over its median time, divided by"
                    " the device-to-device copy bandwidth measured in the same run.",
                    key=shape_key(key),
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- breakdown


def step_breakdown_plots(bench: pd.DataFrame) -> list[Plot]:
    """Time of a Quest step split into select and sparse decode (+ the rest), per context length."""
    plots: list[Plot] = []
    seq = _seq_cases(bench)
    for gpu, key, rows in _groups(seq):
        for (ps, bud, mode), v in rows.groupby(["page_size", "budget", "gqa_mode"], dropna=False, sort=True):
            piv = v.pivot_table(index="seq_len", columns="op", values="median_us", aggfunc="median")
            if not {"select", "sparse_decode"} <= set(piv.columns):
                continue
            x = [f"{int(s) // 1024}K" if int(s) % 1024 == 0 else str(int(s)) for s in piv.index]
            fig = go.Figure()
            fig.add_trace(go.Bar(x=x, y=piv["select"], name=OP_STYLE["select"][0], marker_color=OP_STYLE["select"][1]))
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=piv["sparse_decode"],
                    name=OP_STYLE["sparse_decode"][0],
                    marker_color=OP_STYLE["sparse_decode"][1],
                )
            )
            if "quest_step" in piv.columns:
                rest = (piv["quest_step"] - piv["select"] - piv["sparse_decode"]).clip(lower=0)
                fig.add_trace(
                    go.Bar(x=x, y=rest, name="rest of the step (quest_step − parts, ≥ 0)", marker_color="#c7c7c7")
                )
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=piv["quest_step"],
                        mode="markers",
                        name="whole Quest step (one graph)",
                        marker=dict(color=OP_STYLE["quest_step"][1], symbol="diamond", size=10),
                    )
                )
            if "topk_torch" in piv.columns:
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=piv["topk_torch"],
                        mode="markers",
                        name="torch.topk alone (for scale)",
                        marker=dict(color=OP_STYLE["topk_torch"][1], symbol="x", size=9),
                    )
                )
            vl = variant_label(v.iloc[0])
            title = f"Decode step breakdown — {gpu_title(bench, gpu)} — {shape_label(v.iloc[0])}, {vl}"
            _layout(fig, title, "context length (tokens per sequence)", "median time (µs)", logx=False)
            fig.update_layout(barmode="stack")
            plots.append(
                check_figure(
                    Plot(
                        slug("breakdown", gpu, *key, ps, bud, mode),
                        title,
                        fig,
                        "Each part timed on its own (CUDA graph, L2 flushed); the whole step as one graph.",
                        key=shape_key(key),
                    )
                )
            )
    return plots


def profile_breakdown_plots(profiles) -> list[Plot]:
    """Per-op time of one decode step from `questkern profile` runs: one figure per GPU."""
    from questkern.profiling.summary import step_breakdown

    plots: list[Plot] = []
    by_gpu: dict = {}
    for p in profiles:
        by_gpu.setdefault(p.gpu, []).append(p)
    for gpu, profs in sorted(by_gpu.items()):
        fig = go.Figure()
        labels, parts, bases = [], dict[str, dict](), set()
        for p in profs:
            b = step_breakdown(p.summary)
            if b.empty:
                continue
            sh = (p.meta or {}).get("shape", {})
            tool = (p.meta or {}).get("tool") or (
                p.summary["tool"].iloc[0] if "tool" in p.summary and len(p.summary) else "?"
            )
            lab = f"{p.label} ({tool}; {sh.get('mode', '?')} {sh.get('seq_len', '?')} tok, B={sh.get('batch', '?')})"
            labels.append(lab)
            bases.update(b["basis"].unique())
            for _, r in b.iterrows():
                parts.setdefault(r["op"], {})[lab] = r["per_step_us"]
        if not labels:
            continue
        for op, vals in parts.items():
            fig.add_trace(go.Bar(y=labels, x=[vals.get(lab, 0.0) for lab in labels], name=op, orientation="h"))
        basis = (
            "GPU kernel time"
            if bases == {"gpu"}
            else ("host time (no GPU: interpreter)" if bases == {"cpu"} else "time")
        )
        title = f"Kernel time per decode step, by op — {gpu} ({basis})"
        _layout(fig, title, f"{basis} per decode step (µs)", "profile", logx=False)
        fig.update_layout(
            barmode="stack",
            height=max(360, 160 + 60 * len(labels)),
            legend=dict(orientation="v", x=1.02, y=1, yanchor="top"),
            margin=dict(t=70, b=60, r=160),
        )
        fig.update_yaxes(automargin=True)
        plots.append(
            check_figure(
                Plot(
                    slug("profile", gpu),
                    title,
                    fig,
                    "From profiles/**/summary.csv: Nsight Compute kernel durations (medians), or the"
                    " PyTorch profiler's questkern ranges.",
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- quality


def quality_plots(quality: pd.DataFrame) -> list[Plot]:
    """One figure per quality metric: value vs budget (or context length), a line per page size."""
    plots: list[Plot] = []
    if quality.empty:
        return plots
    xcol = next(
        (c for c in ("budget", "seq_len", "page_size") if c in quality.columns and quality[c].nunique() > 1), None
    )
    if xcol is None:
        return plots
    series = [c for c in ("page_size", "gqa_mode", "trace", "seq_len", "budget") if c in quality.columns and c != xcol]
    xunit = {
        "budget": "token budget (tokens)",
        "seq_len": "context length (tokens)",
        "page_size": "page size (tokens)",
    }[xcol]
    for metric, m in quality.groupby("metric", sort=True):
        groups = list(m.groupby(series, dropna=False, sort=True)) if series else [((), m)]
        # more series than a plot can tell apart: one figure per value of the first series column
        facets = (
            [
                (
                    f"{series[0]}={k}",
                    [(key, g) for key, g in groups if (key if isinstance(key, tuple) else (key,))[0] == k],
                )
                for k in dict.fromkeys((key if isinstance(key, tuple) else (key,))[0] for key, _ in groups)
            ]
            if len(groups) > MAX_SERIES and series
            else [("", groups)]
        )
        for facet, fgroups in facets:
            for part in range(0, len(fgroups), MAX_SERIES):
                chunk = fgroups[part : part + MAX_SERIES]
                fig = go.Figure()
                for key, g in chunk:
                    key = key if isinstance(key, tuple) else (key,)
                    g = g.groupby(xcol, as_index=False)["value"].mean().sort_values(xcol)
                    name = ", ".join(f"{c}={k}" for c, k in zip(series, key)) or metric
                    fig.add_trace(go.Scatter(x=g[xcol], y=g["value"], mode="lines+markers", name=name))
                unit = m["unit"].dropna().iloc[0] if "unit" in m.columns and m["unit"].notna().any() else "fraction"
                more = f" (part {part // MAX_SERIES + 1})" if len(fgroups) > MAX_SERIES else ""
                title = f"Quality: {metric} vs {xcol.replace('_', ' ')}" + (f" — {facet}" if facet else "") + more
                _layout(fig, title, xunit, f"{metric} ({unit})", logx=xcol != "page_size")
                plots.append(
                    check_figure(
                        Plot(slug("quality", metric, facet, more), title, fig, "From reports/data/quality*.csv.")
                    )
                )
    return plots


def recall_plots(recall: pd.DataFrame) -> list[Plot]:
    """Attention recall vs K/V bytes read (quality_recall.csv of the quality study): one figure
    per trace kind and context, the default variant (shared, sum, fp32 metadata) plus the oracle."""
    plots: list[Plot] = []
    if recall.empty:
        return plots
    df = recall.copy()
    if {"gqa_mode", "aggregate", "meta"} <= set(df.columns):
        default = (df["gqa_mode"] == "shared") & (df["aggregate"].fillna("") == "sum") & (df["meta"] == "fp32")
        df = df[default | (df["policy"] == "oracle")]
    xcol, xlab = (
        ("read_frac_mean", "K/V bytes read (fraction of a dense step, log)")
        if "read_frac_mean" in df.columns
        else ("tokens_mean", "tokens attended per selection row (log)")
    )
    if xcol not in df.columns:
        return plots
    page = 16 if (df["page_size"] == 16).any() else df["page_size"].min()
    df = df[df["page_size"] == page]  # one page size per figure: the default (the table has the others)
    facets = [c for c in ("kind", "context") if c in df.columns]
    groups = df.groupby(facets, sort=True, dropna=False) if facets else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        fig = go.Figure()
        # one line per policy, page size and (adaptive) temperature: settings of one curve only
        by = ["policy", "page_size"] + (["temperature"] if "temperature" in g.columns else [])
        for vals, t in g.groupby(by, sort=True, dropna=False):
            pol = vals[0]
            temp = vals[2] if len(vals) > 2 else None
            label = {
                "oracle": "oracle (truly heaviest pages)",
                "fixed": "fixed budget",
                "prop": "budget proportional to context",
                "adaptive": "adaptive budget",
            }.get(pol, pol) + (f", T={temp:g}" if pol == "adaptive" and pd.notna(temp) else "")
            t = t.sort_values(xcol)
            fig.add_trace(
                go.Scatter(
                    x=t[xcol],
                    y=t["recall_mean"],
                    mode="lines+markers",
                    name=label,
                    line=dict(dash="dot" if pol == "oracle" else "solid"),
                )
            )
        if not fig.data:
            continue
        where = ", ".join(f"{c} {k}" for c, k in zip(facets, key))
        title = (
            f"Attention recall vs bytes read — {where or 'all traces'} (page {_int(page)}, shared, sum, fp32 metadata)"
        )
        _layout(fig, title, xlab, "attention recall (mean over samples, fraction 0-1)")
        plots.append(
            check_figure(
                Plot(
                    slug("recall", *key),
                    title,
                    fig,
                    "From quality_recall.csv (questkern quality): each point a policy setting;"
                    " the oracle takes the truly heaviest pages (an upper bound).",
                    key=tuple(str(k) for k in key),
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- tuning (Optuna)

_UNITS = [
    (re.compile(r"latency|_us$|time"), "µs"),
    (re.compile(r"recall|quality|accuracy"), "fraction, 0-1"),
    (re.compile(r"err"), "max abs error"),
]


def objective_label(name: str, study=None) -> str:
    """Axis label with units for an objective name (study user attr 'metric_units' wins)."""
    units: dict = {}
    if study is not None:
        units = study.user_attrs.get("metric_units", {}) or {}
    if name in units:
        return f"{name} ({units[name]})"
    if "(" in name:
        return name
    for pat, unit in _UNITS:
        if pat.search(name.lower()):
            return f"{name} ({unit})"
    return f"{name} (objective value)"


def study_plots(study) -> tuple[list[Plot], list[str]]:
    """Optuna's own figures: history per objective, importances per objective, Pareto front."""
    import optuna
    from optuna import visualization as vis

    plots: list[Plot] = []
    notes: list[str] = []
    n_obj = len(study.directions)
    names = list(study.metric_names or [f"objective {i}" for i in range(n_obj)])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return plots, [f"study {study.study_name}: no completed trial"]
    for i, name in enumerate(names):
        label = objective_label(name, study)
        target = (lambda t, i=i: t.values[i]) if n_obj > 1 else None
        fig = vis.plot_optimization_history(study, target=target, target_name=label)
        title = f"Tuning history — study {study.study_name} — {name}"
        fig.update_layout(
            title=dict(text=title), xaxis_title="trial number", yaxis_title=label, template="plotly_white"
        )
        plots.append(
            check_figure(
                Plot(
                    slug("history", study.study_name, name),
                    title,
                    fig,
                    "optuna.visualization.plot_optimization_history",
                )
            )
        )
        # Optuna's default evaluator (PED-ANOVA) ranks parameters by how they reach LOW
        # target values: flip the sign of an objective that is maximized.
        sign = -1.0 if study.directions[i] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        imp_target = (lambda t, i=i, s=sign: s * t.values[i]) if n_obj > 1 else (lambda t, s=sign: s * t.value)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                fig = vis.plot_param_importances(study, target=imp_target, target_name=label)
            title = f"Parameter importances — study {study.study_name} — {name}"
            fig.update_layout(
                title=dict(text=title),
                xaxis_title=f"importance for {label} (fraction of variance)",
                yaxis_title="parameter",
                template="plotly_white",
            )
            if fig.data:
                plots.append(
                    check_figure(
                        Plot(
                            slug("importance", study.study_name, name),
                            title,
                            fig,
                            "optuna.visualization.plot_param_importances (fANOVA)",
                        )
                    )
                )
            else:
                notes.append(f"study {study.study_name}: no parameter importances for {name} (no parameter varied)")
        except (RuntimeError, ValueError, ZeroDivisionError) as e:
            notes.append(f"study {study.study_name}: parameter importances for {name} unavailable ({e})")
    if n_obj in (2, 3):
        labels = [objective_label(n, study) for n in names]
        fig = vis.plot_pareto_front(study, target_names=labels)
        title = f"Pareto front — study {study.study_name}"
        fig.update_layout(title=dict(text=title), template="plotly_white")
        if n_obj == 2:
            fig.update_layout(xaxis_title=labels[0], yaxis_title=labels[1])
        else:
            fig.update_layout(scene=dict(xaxis_title=labels[0], yaxis_title=labels[1], zaxis_title=labels[2]))
        plots.append(
            check_figure(
                Plot(
                    slug("pareto", study.study_name),
                    title,
                    fig,
                    "optuna.visualization.plot_pareto_front (best trials highlighted)",
                )
            )
        )
    elif n_obj > 3:
        notes.append(f"study {study.study_name}: {n_obj} objectives, no Pareto plot (Optuna draws 2 or 3)")
    return plots, notes


HEURISTIC_OPS = {"quest_step_heuristic": "quest_step", "dense_decode_heuristic": "dense_decode"}


def heuristic_table(bench: pd.DataFrame) -> pd.DataFrame:
    """Per GPU and case: the tuning table's configs vs the heuristic's (``bench --vs-heuristic``).

    Read from the ``*_heuristic`` rows alone, which carry their run's ratio
    (``speedup_vs_heuristic`` = heuristic time / table time of the same case and run), so
    that a newer CSV replacing the case's tuned rows cannot pair times of two runs.
    """
    if "speedup_vs_heuristic" not in bench.columns:
        return pd.DataFrame()
    h = bench[bench["op"].isin(list(HEURISTIC_OPS)) & bench["speedup_vs_heuristic"].notna()]
    if h.empty:
        return pd.DataFrame()
    out = h[["gpu"] + SHAPE_COLS + ["seq_len", "lens", "page_size", "budget", "gqa_mode"]].copy()
    out.insert(1, "op", h["op"].map(HEURISTIC_OPS))
    out["context"] = [("mixed, longest " if lens else "") + f"{_int(L)}" for lens, L in zip(h["lens"], h["seq_len"])]
    out["heuristic_us"] = h["median_us"]
    out["table_us"] = h["median_us"] / h["speedup_vs_heuristic"]
    out["speedup_vs_heuristic"] = h["speedup_vs_heuristic"]
    return (
        out.drop(columns=["lens"])
        .sort_values(["gpu", "op", "batch", "q_heads", "kv_heads", "seq_len"])
        .reset_index(drop=True)
    )


def heuristic_summary(tab: pd.DataFrame) -> list[str]:
    """One sentence per GPU and op: geometric mean, range and count of the ratios."""
    from questkern.tuning.observer import geomean

    lines = []
    for (gpu, op), g in tab.groupby(["gpu", "op"], sort=True):
        x = g["speedup_vs_heuristic"]
        gm = geomean(x)
        lines.append(
            f"{gpu}, {op}: the tuning table's configs are {gm:.3f}x the heuristic's (geometric mean over "
            f"{len(x)} cases; {x.min():.3f}x to {x.max():.3f}x), each case timed both ways in one run"
        )
    return lines


def heuristic_plots(bench: pd.DataFrame) -> list[Plot]:
    tab = heuristic_table(bench)
    plots: list[Plot] = []
    for gpu in sorted(tab["gpu"].unique()) if not tab.empty else []:
        g = tab[tab["gpu"] == gpu]
        fig = go.Figure()
        for op, rows in g.groupby("op", sort=True):
            labels = [f"b{_int(r.batch)} {_int(r.q_heads)}/{_int(r.kv_heads)} {r.context}" for r in rows.itertuples()]
            fig.add_trace(
                go.Bar(x=labels, y=rows["speedup_vs_heuristic"], name=OP_STYLE[op][0], marker_color=OP_STYLE[op][1])
            )
        fig.add_hline(y=1.0, line_dash="dot", line_color="#000000")
        fig.update_layout(
            title=f"Tuning table vs heuristic configs — {gpu_title(bench, gpu)}",
            barmode="group",
            xaxis_title="case (batch, q/kv heads, context in tokens)",
            yaxis_title="heuristic time / table time (×)",
        )
        plots.append(
            check_figure(
                Plot(
                    slug("heuristic", gpu),
                    fig.layout.title.text,
                    fig,
                    "Each case timed with the table's configs and with the heuristic's in one run "
                    "(`questkern bench --vs-heuristic`); above 1 the table is faster.",
                )
            )
        )
    return plots


# --------------------------------------------------------------------------- summary


def headline_rows(tab: pd.DataFrame) -> pd.DataFrame:
    """Rows of a speedup table in the headline configuration (``HEADLINE``), else in the
    configuration with the most cases: what the summary shows."""
    if tab.empty:
        return tab
    cols = list(HEADLINE)
    mask = pd.Series(True, index=tab.index)
    for c, v in HEADLINE.items():
        mask &= tab[c] == v
    if mask.any():
        return tab[mask]
    best = tab.groupby(cols, dropna=False).size().idxmax()
    mask = pd.Series(True, index=tab.index)
    for c, v in zip(cols, best):
        mask &= tab[c] == v
    return tab[mask]


def summary_plot(bench: pd.DataFrame, gpu: str) -> Plot | None:
    """The report's one summary figure: Quest step speedup over SDPA vs context length, per batch and
    head layout of the headline configuration, with the bound of each (dotted) when the CSV has it."""
    tab = speedup_table(bench)
    tab = headline_rows(tab[tab["gpu"] == gpu]) if not tab.empty else tab
    if tab.empty or tab["speedup_vs_sdpa"].isna().all():
        return None
    fig = go.Figure()
    series = sorted(tab.groupby(["batch", "q_heads", "kv_heads"]), key=lambda kv: (-len(kv[1]), kv[0]))
    with_bound = tab["bound_vs_sdpa"].notna().any()
    keep = series[: MAX_SERIES // 2 if with_bound else MAX_SERIES]
    for i, ((b, hq, hkv), g) in enumerate(sorted(keep, key=lambda kv: kv[0])):
        g = g.sort_values("seq_len")
        color = PALETTE[i % len(PALETTE)]
        kind = "MHA" if hq == hkv else f"GQA {int(hq) // int(hkv)}:1"
        name = f"batch {_int(b)}, heads {_int(hq)}/{_int(hkv)} ({kind})"
        fig.add_trace(
            go.Scatter(
                x=g["seq_len"],
                y=g["speedup_vs_sdpa"],
                mode="lines+markers",
                name=f"measured, {name}",
                line=dict(color=color),
            )
        )
        if with_bound and g["bound_vs_sdpa"].notna().any():
            fig.add_trace(
                go.Scatter(
                    x=g["seq_len"],
                    y=g["bound_vs_sdpa"],
                    mode="lines",
                    name=f"bound, {name}",
                    line=dict(color=color, dash="dot"),
                )
            )
    r = tab.iloc[0]
    title = (
        f"Quest step speedup over torch SDPA — {gpu_title(bench, gpu)} — d={_int(r['head_dim'])}, {r['dtype']}, "
        f"page {_int(r['page_size'])}, budget {_int(r['budget'])}"
    )
    _layout(fig, title, "context length (tokens per sequence)", "speedup over SDPA (×, same GPU and run)", logx=True)
    fig.add_hline(y=1.0, line=dict(color="#bbbbbb", width=1))
    _seq_ticks(fig, tab["seq_len"])
    left = len(series) - len(keep)
    cap = (
        "SDPA time / Quest step time, each case timed in one run. Dotted: the most the step could gain were it at"
        " its bound (graph floor + its bytes at the run's copy bandwidth)."
    ) + (f" {left} more batch/head layouts in the tables below." if left else "")
    return check_figure(Plot(slug("summary", gpu), title, fig, cap, rank=(99,)))


def model_table(model: pd.DataFrame) -> pd.DataFrame:
    """Per model, batch and context: Quest's tokens/s against SDPA's, the bound and the share of
    the possible gain captured (``questkern bench --model``)."""
    if model.empty:
        return pd.DataFrame()
    rows = []
    for (gpu, name, b, L), g in model.groupby(["gpu", "model", "batch", "seq_len"], sort=True):
        by = g.set_index("attention")
        if "quest" not in by.index:
            continue
        q = by.loc["quest"]
        rows.append(
            {
                "gpu": gpu,
                "model": name,
                "batch": b,
                "seq_len": L,
                "quest_tokens_per_s": q["tokens_per_s"],
                "sdpa_tokens_per_s": by.loc["sdpa", "tokens_per_s"] if "sdpa" in by.index else math.nan,
                "speedup_vs_sdpa": q.get("speedup_vs_sdpa", math.nan),
                "bound_speedup": q.get("bound_speedup", math.nan),
                "gain_captured_pct": 100 * q.get("gain_captured", math.nan),
                "ceiling_speedup": q.get("ceiling_speedup", math.nan),
            }
        )
    return pd.DataFrame(rows)

"""Assemble one self-contained HTML report: plotly.js inlined once in <head>, every
figure a div drawn by an inline ``Plotly.newPlot`` call, tables from pandas ``to_html``.
No external URL is referenced: the file opens offline.

The ids of all plot divs are listed in ``<script type="application/json"
id="questkern-report-manifest">`` so a browser check knows what must be drawn.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from questkern.report import figures as F
from questkern.report.data import (
    Profile,
    ReportDataError,
    TuningTable,
    classify_csv,
    find_csvs,
    load_bench,
    load_model,
    load_profiles,
    load_quality,
    load_recall,
    load_studies,
    load_tuning,
)

MANIFEST_ID = "questkern-report-manifest"
MAX_TABLE_ROWS = 300


@dataclass
class ReportInputs:
    bench: pd.DataFrame
    quality: pd.DataFrame
    profiles: list[Profile]
    tuning: list[TuningTable]
    studies: list
    sources: list[str] = field(default_factory=list)
    recall: pd.DataFrame = field(default_factory=pd.DataFrame)
    skipped: list[str] = field(default_factory=list)  # CSVs found in --data folders that are no report input
    model: pd.DataFrame = field(default_factory=pd.DataFrame)
    gpu: str | None = None  # the one GPU key of the report
    notices: list[str] = field(default_factory=list)  # what was left out, printed by the CLI
    dropped_gpus: int = 0  # how many other GPU keys had rows left out

    @property
    def interpreter(self) -> bool:
        """Measured in the Triton interpreter (no GPU): timings mean nothing."""
        from questkern.configs.gpus import CPU_KEY

        return self.gpu == CPU_KEY


def _pick_gpu(keys: list[str], gpu: str | None) -> str | None:
    """The report's GPU key: ``gpu`` (a key, or a family alias such as h100 naming one key of the data),
    else the one key of the data; several without ``gpu`` is an error naming them."""
    if gpu is None:
        if len(keys) > 1:
            raise ReportDataError(
                f"the data holds {len(keys)} GPUs ({', '.join(keys)}); a report shows one: pass --gpu with one of them"
            )
        return keys[0] if keys else None
    if gpu in keys or not keys:
        return gpu
    from questkern.configs.gpus import ALIASES, gpu_family, normalize_gpu_name

    key = normalize_gpu_name(gpu)
    fam = ALIASES.get(key, key)
    match = [k for k in keys if k == key or gpu_family(k) == fam]
    if len(match) == 1:
        return match[0]
    raise ReportDataError(f"--gpu {gpu!r}: the data holds {', '.join(keys)}" + (" (several match)" if match else ""))


def gather(
    data: list[Path],
    profiles: list[Path] | None,
    tuning: list[Path],
    study_storage: str | None = None,
    studies: list[str] | None = None,
    gpu: str | None = None,
) -> ReportInputs:
    """Read every input for ONE GPU; bench, model and quality CSVs are told apart by their columns.

    Rows, tables and profiles of any other GPU key are left out, each with a notice. ``profiles``
    None means ``profiles/<gpu-key>/``. Quality CSVs (measured on CPU, no GPU key) are kept."""
    csvs = find_csvs(data)
    given = {Path(p).resolve() for p in data if Path(p).is_file()}
    kinds: dict[str, list[Path]] = {"bench": [], "model": [], "quality": [], "recall": []}
    skipped = []
    for p in csvs:  # a file named by --data must be usable; one found in a folder is skipped, and said so
        kind, why = classify_csv(p)
        if kind is None and Path(p).resolve() in given:
            raise ReportDataError(f"--data {p}: {why}")
        if kind is None:
            skipped.append(f"{p}: {why}")
        else:
            kinds[kind].append(p)
    bench_files, model_files = kinds["bench"], kinds["model"]
    quality_files, recall_files = kinds["quality"], kinds["recall"]
    bench, model = load_bench(bench_files), load_model(model_files)
    keys = sorted(set(bench["gpu"]) | set(model["gpu"]))
    gpu = _pick_gpu(keys, gpu)
    notices, others = [], set()
    for name, df in (("bench", bench), ("model bench", model)):
        other = df[df["gpu"] != gpu] if len(df) else df
        for k, g in other.groupby("gpu", sort=True) if len(other) else []:
            others.add(k)
            notices.append(f"left out {len(g)} {name} rows of GPU {k} (one GPU per report: {gpu})")
    bench = bench[bench["gpu"] == gpu].reset_index(drop=True) if len(bench) else bench
    model = model[model["gpu"] == gpu].reset_index(drop=True) if len(model) else model
    bench_files = [f for f in bench_files if str(f) in set(bench["source"])]
    model_files = [f for f in model_files if str(f) in set(model.get("source", []))]
    prof = load_profiles(profiles if profiles is not None else ([Path("profiles") / gpu] if gpu else []))
    for p in [p for p in prof if p.gpu != gpu]:
        others.add(p.gpu)
        notices.append(f"left out profile {p.path} of GPU {p.gpu}")
    prof = [p for p in prof if p.gpu == gpu]
    tun = []
    for t in load_tuning(tuning):
        key = t.doc.get("gpu_key") or t.path.name.removesuffix(".json").removesuffix(".pareto")
        if key == gpu:
            tun.append(t)
        else:
            others.add(key)
            notices.append(f"left out tuning table {t.path} of GPU {key}")
    st = load_studies(study_storage, studies)
    sources = [f"bench: {p}" for p in bench_files] + [f"model bench: {p}" for p in model_files]
    sources += [f"quality: {p}" for p in quality_files + recall_files]
    sources += [f"profile: {p.path}" for p in prof] + [f"tuning: {t.path}" for t in tun]
    sources += [f"optuna study: {s.study_name} @ {study_storage}" for s in st]
    return ReportInputs(
        bench,
        load_quality(quality_files),
        prof,
        tun,
        st,
        sources,
        load_recall(recall_files),
        skipped,
        model,
        gpu,
        notices,
        len(others - {gpu}),
    )


# --------------------------------------------------------------------------- html pieces

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:0 24px 48px;color:#222}
h1{margin-top:28px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
.note{color:#555;font-size:0.92em} .banner{background:#fff3cd;border:1px solid #e0c060;padding:10px 14px;margin:12px 0}
table.qk{border-collapse:collapse;font-size:0.85em;margin:8px 0 20px} table.qk th,table.qk td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.qk th{background:#f4f4f4} table.qk td:first-child,table.qk th:first-child{text-align:left}
.plot{margin:14px 0 4px} .caption{color:#555;font-size:0.88em;margin:0 0 18px} nav a{margin-right:14px}
details summary{cursor:pointer;color:#444;margin:6px 0} .tablewrap{overflow-x:auto;max-width:100%}
details>.inner{border-left:3px solid #eee;padding-left:12px} .summary table.qk{font-size:0.95em}
.verdict{font-size:1.05em;margin:8px 0} .interp{background:#fde2e1;border:1px solid #d9534f;padding:10px 14px;margin:12px 0}
"""
INTERPRETER_LABEL = "Triton interpreter on CPU: timings mean nothing"
INTERPRETER_NOTE = (
    "Triton interpreter on CPU (no GPU): these times are of the interpreter and mean nothing about a GPU;"
    " they show the pipeline runs."
)


# column names as a reader wants them (with units); unknown columns keep their name
COLUMN_NAMES = {
    "gpu": "GPU key",
    "op": "op",
    "batch": "batch",
    "q_heads": "Q heads",
    "kv_heads": "KV heads",
    "head_dim": "head dim",
    "dtype": "dtype",
    "seq_len": "context (tokens)",
    "context": "context (tokens)",
    "page_size": "page size (tokens)",
    "budget": "budget (tokens)",
    "gqa_mode": "GQA selection",
    "quest_us": "Quest step (µs)",
    "dense_us": "in-house dense (µs)",
    "sdpa_us": "torch SDPA (µs)",
    "speedup_vs_dense": "speedup vs dense (×)",
    "speedup_vs_sdpa": "speedup vs SDPA (×)",
    "byte_bound": "byte bound vs dense (×)",
    "pct_of_bound": "of the byte bound (%)",
    "bound_vs_sdpa": "bound vs SDPA (×)",
    "median_us": "median (µs)",
    "gbps": "achieved (GB/s)",
    "pct_copy_bw": "of copy bandwidth (%)",
    "heuristic_us": "heuristic configs (µs)",
    "table_us": "table configs (µs)",
    "speedup_vs_heuristic": "table vs heuristic (×)",
    "latency_us": "tuned (µs)",
    "default_latency_us": "heuristic default (µs)",
    "speedup_vs_default": "tuned vs default (×)",
    "seq_bucket": "context bucket",
    "batch_bucket": "batch bucket",
    "recall_mean": "recall (mean, 0-1)",
    "recall_p10": "recall (10th percentile)",
    "recall_min": "recall (min)",
    "err_mean": "output error (mean)",
    "err_p90": "output error (90th percentile)",
    "read_frac_mean": "K/V read (fraction of dense)",
    "tokens_mean": "tokens attended (mean)",
    "pages_mean": "pages attended (mean)",
    "kind": "trace kind",
    "policy": "policy",
    "param": "policy parameter",
    "temperature": "temperature",
    "samples": "samples",
    "model": "model",
    "quest_tokens_per_s": "Quest (tokens/s)",
    "sdpa_tokens_per_s": "SDPA (tokens/s)",
    "tokens_per_s": "tokens/s",
    "ms_per_token": "ms per token",
    "bound_speedup": "bound vs SDPA (×)",
    "gain_captured_pct": "gain captured (%)",
    "ceiling_speedup": "ceiling: no attention (×)",
    "attention": "attention",
    "trials": "trials",
    "date": "tuned on",
    "config": "config",
    "per_step_us": "per step (µs)",
}


def _table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    extra = ""
    if len(df) > MAX_TABLE_ROWS:
        extra = f'<p class="note">first {MAX_TABLE_ROWS} of {len(df)} rows</p>'
        df = df.head(MAX_TABLE_ROWS)
    df = df.rename(columns={c: COLUMN_NAMES.get(c, c) for c in df.columns})
    body = df.to_html(
        index=False,
        classes="qk",
        border=0,
        na_rep="–",
        escape=True,
        float_format=lambda v: f"{v:.0f}" if abs(v) >= 1000 else floatfmt.format(v),
    )
    return f'<div class="tablewrap">{body}</div>' + extra


def _details(summary: str, inner: str, open_: bool = False) -> str:
    return (
        f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>"
        f'<div class="inner">{inner}</div></details>'
    )


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'


class _Doc:
    def __init__(self, interpreter: bool = False):
        self.interpreter = interpreter
        self.parts: list[str] = []
        self.plot_ids: list[str] = []
        self.sections: list[tuple[str, str]] = []
        self.main: tuple | None = None  # (rank, plot id) of the best main-plot candidate

    def section(self, sid: str, title: str) -> None:
        self.sections.append((sid, title))
        self.parts.append(f'<h2 id="{sid}">{html.escape(title)}</h2>')

    def add(self, s: str) -> None:
        self.parts.append(s)

    def plot(self, p: F.Plot, timed: bool = True) -> None:
        """Add a figure; with ``timed`` (a figure of bench times) an interpreter report labels it so."""
        self.parts.append(self.plot_html(p, timed))

    def plot_html(self, p: F.Plot, timed: bool = True) -> str:
        if self.interpreter and timed:
            p.fig.update_layout(title=dict(text=f"{p.fig.layout.title.text}<br><sup>{INTERPRETER_LABEL}</sup>"))
            p.caption = INTERPRETER_NOTE
        base, n = p.id, 2
        while p.id in self.plot_ids:  # e.g. two studies whose names slug alike
            p.id, n = f"{base}-{n}", n + 1
        self.plot_ids.append(p.id)
        if p.rank and (self.main is None or p.rank > self.main[0]):
            self.main = (p.rank, p.id)
        div = p.fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=p.id, config={"displaylogo": False, "responsive": True}
        )
        return f'<div class="plot">{div}</div>' + (_p(p.caption, "caption") if p.caption else "")


def _environment(inputs: ReportInputs) -> pd.DataFrame:
    rows = []
    b = inputs.bench
    for gpu, g in b.groupby("gpu", sort=True):
        first = g.iloc[-1]
        rows.append(
            {
                "gpu key": gpu,
                "device": first["gpu_name"],
                "driver": first["driver"],
                "torch": first["torch"],
                "Triton": first["triton"],
                "CUDA": first["cuda"],
                "measured (UTC)": ", ".join(sorted({t[:16].replace("T", " ") for t in g["timestamp"] if t})) or "–",
                "copy GB/s": g["copy_gbps"].median(),
                "rows": len(g),
                "source": "bench",
            }
        )
    for p in inputs.profiles:
        dev = (p.meta or {}).get("device", {})
        rows.append(
            {
                "gpu key": p.gpu,
                "device": dev.get("gpu_name", ""),
                "driver": dev.get("driver", ""),
                "torch": dev.get("torch", ""),
                "Triton": dev.get("triton", ""),
                "CUDA": dev.get("cuda", ""),
                "measured (UTC)": str((p.meta or {}).get("created", ""))[:16].replace("T", " "),
                "copy GB/s": float("nan"),
                "rows": len(p.summary),
                "source": f"profile {p.label}",
            }
        )
    return pd.DataFrame(rows)


def _is_synthetic(inputs: ReportInputs) -> bool:
    b = inputs.bench
    return bool(len(b)) and bool(
        (b["gpu"].str.startswith("fixture") | b["gpu_name"].str.lower().str.contains("synthetic")).any()
    )


def _tuning_tables(t: TuningTable) -> str:
    doc = t.doc
    head = {k: doc.get(k) for k in ("gpu_key", "device_name", "schema_version", "updated")}
    head.update({f"{k} version": v for k, v in (doc.get("versions") or {}).items()})
    out = [f"<h3>{html.escape(str(t.path))} ({t.kind})</h3>", _table(pd.DataFrame([head]))]
    if t.kind == "table":
        ent = pd.DataFrame(doc.get("entries", []))
        if not ent.empty:
            if "config" in ent:
                ent["config"] = ent["config"].map(lambda c: " ".join(f"{k}={v}" for k, v in (c or {}).items()))
            if "default_config" in ent:
                ent = ent.drop(columns=["default_config"])
            if {"latency_us", "default_latency_us"} <= set(ent.columns):
                ent["speedup_vs_default"] = (
                    pd.to_numeric(ent["default_latency_us"], errors="coerce") / ent["latency_us"]
                )
            if "seq_bucket" in ent:
                ent["seq_bucket"] = ent["seq_bucket"].map(lambda k: f"2^{k}")
        out.append(_table(ent))
    else:
        for fr in doc.get("fronts", []):
            pts = pd.DataFrame(fr.get("points", []))
            if "config" in pts:
                pts["config"] = pts["config"].map(lambda c: " ".join(f"{k}={v}" for k, v in (c or {}).items()))
            out.append(
                _p(
                    f"study {fr.get('study')}, bucket {json.dumps(fr.get('bucket'))}, objectives "
                    f"{', '.join(fr.get('objectives', []))}"
                )
            )
            out.append(_table(pts))
    return "\n".join(out)


def _summary(d: _Doc, inputs: ReportInputs) -> None:
    """The answers at a glance: headline cases, model tokens/s, tuned vs heuristic, quality at the default."""
    b, gpu = inputs.bench, inputs.gpu
    d.section("summary", "Summary")
    d.add('<div class="summary">')
    spd = F.speedup_table(b) if len(b) else pd.DataFrame()
    head = F.headline_rows(spd)
    if not head.empty:
        r = head.iloc[0]
        d.add(
            f"<h3>Quest decode step vs torch SDPA (d={int(r['head_dim'])}, {html.escape(str(r['dtype']))}, "
            f"page {int(r['page_size'])}, budget {int(r['budget'])} tokens, {html.escape(str(r['gqa_mode']))})</h3>"
        )
        cols = ["batch", "q_heads", "kv_heads", "seq_len", "quest_us", "sdpa_us", "speedup_vs_sdpa"]
        if head["bound_vs_sdpa"].notna().any() and not inputs.interpreter:
            cols.append("bound_vs_sdpa")
        d.add(_table(head.sort_values(["batch", "q_heads", "kv_heads", "seq_len"])[cols], "{:.3g}"))
        if not inputs.interpreter:
            best = head.loc[head["speedup_vs_sdpa"].idxmax()]
            d.add(
                _p(
                    f"Best case: {best['speedup_vs_sdpa']:.2f}x SDPA at batch {int(best['batch'])}, heads "
                    f"{int(best['q_heads'])}/{int(best['kv_heads'])}, {int(best['seq_len'])} tokens"
                    + (f" (bound {best['bound_vs_sdpa']:.2f}x)" if pd.notna(best["bound_vs_sdpa"]) else "")
                    + ".",
                    "verdict",
                )
            )
    else:
        d.add(_p("No bench case with a Quest step and SDPA."))
    mt = F.model_table(inputs.model)
    if not mt.empty:
        d.add("<h3>Whole model, one token step (questkern bench --model)</h3>")
        d.add(
            _table(
                mt[
                    [
                        "model",
                        "batch",
                        "seq_len",
                        "quest_tokens_per_s",
                        "sdpa_tokens_per_s",
                        "speedup_vs_sdpa",
                        "bound_speedup",
                        "gain_captured_pct",
                    ]
                ],
                "{:.3g}",
            )
        )
    heur = F.heuristic_table(b) if len(b) else pd.DataFrame()
    if not heur.empty:
        d.add("<h3>Tuning table vs heuristic configs</h3>")
        for line in F.heuristic_summary(heur):
            d.add(_p(line, "verdict"))
    q = _quality_at_default(inputs.recall)
    if not q.empty:
        d.add("<h3>Attention quality at the default (page 16, budget 2048 tokens, shared selection)</h3>")
        d.add(_table(q, "{:.3f}"))
    d.add("</div>")
    sp = F.summary_plot(b, gpu) if len(b) else None
    if sp is not None:
        d.plot(sp)


def _quality_at_default(recall: pd.DataFrame) -> pd.DataFrame:
    """Recall of the fixed-budget policy at the default page size and budget, per trace kind and context."""
    need = {"policy", "page_size", "param", "recall_mean", "kind", "context"}
    if recall.empty or not need <= set(recall.columns):
        return pd.DataFrame()
    r = recall[
        (recall["policy"] == "fixed")
        & (recall["page_size"] == 16)
        & (pd.to_numeric(recall["param"], errors="coerce") == 2048)
    ]
    for c, v in (("gqa_mode", "shared"), ("aggregate", "sum"), ("meta", "fp32")):
        if c in r.columns:
            r = r[r[c].fillna("") == v]
    if r.empty:
        return pd.DataFrame()
    cols = [c for c in ("kind", "context", "recall_mean", "recall_p10", "read_frac_mean") if c in r.columns]
    return r[cols].sort_values(["kind", "context"]).reset_index(drop=True)


def render(inputs: ReportInputs, *, title: str, command: str = "") -> tuple[str, dict]:
    """The report as one HTML string, and its manifest (plot ids, sections)."""
    from plotly.offline import get_plotlyjs

    from questkern import __version__

    d = _Doc(inputs.interpreter)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    b = inputs.bench
    gpu = inputs.gpu
    gpus = [gpu] if gpu else []
    device = F.gpu_title(b, gpu) if len(b) and gpu else (gpu or "none")
    d.add(f"<h1>{html.escape(title)}</h1>")
    d.add(_p(f"{device} (GPU key {gpu or '–'}) · questkern {__version__} · generated {now}"))
    if _is_synthetic(inputs):
        d.add(
            '<div class="banner"><b>Synthetic fixture data.</b> These numbers come from committed test fixtures, not from a'
            " measurement; they show what a report looks like. Rebuild from a real bench CSV for results.</div>"
        )
    if inputs.interpreter:
        d.add(
            f'<div class="interp"><b>No GPU.</b> {html.escape(INTERPRETER_NOTE)} Selections and outputs were still'
            " checked against the float32 references. Run the same commands on a GPU for real figures.</div>"
        )
    if inputs.dropped_gpus:
        d.add(_p(f"One GPU per report: rows, tables and profiles of {inputs.dropped_gpus} other GPU(s) were left out."))
    nav_at = len(d.parts)

    _summary(d, inputs)
    spd = F.speedup_table(b) if len(b) else pd.DataFrame()

    # speedup
    d.section("speedup", "Speedup vs SDPA and the byte bound")
    plots = F.speedup_plots(b) if len(b) else []
    head_ids = _headline_ids(b)
    _plots_main_then_rest(d, plots, head_ids, "other shapes")
    if not spd.empty:
        cols = [
            "batch",
            "q_heads",
            "kv_heads",
            "head_dim",
            "dtype",
            "seq_len",
            "page_size",
            "budget",
            "gqa_mode",
            "quest_us",
            "dense_us",
            "sdpa_us",
            "speedup_vs_dense",
            "speedup_vs_sdpa",
            "byte_bound",
            "pct_of_bound",
            "bound_vs_sdpa",
        ]
        d.add(
            _details(
                f"all cases ({len(spd)})",
                _p(
                    "Times in µs; speedups are ratios of two times of the same GPU and run. Byte bound = bytes a dense step reads"
                    " / bytes a Quest step reads; bound vs SDPA = SDPA time / (graph floor + Quest bytes at the copy bandwidth),"
                    " all of the same run (empty for CSVs made before the bench recorded its floor)."
                )
                + _table(spd[cols]),
            )
        )
    else:
        d.add(_p("No case with both a Quest step and a dense baseline."))

    # model
    mt = F.model_table(inputs.model)
    if not mt.empty:
        d.section("model", "Whole model token step")
        d.add(
            _p(
                "One decode step of a whole model (random weights, every layer its own K/V, one CUDA graph), attention"
                " by SDPA, the in-house dense decode, Quest, and none (the ceiling). Gain captured = the share of the"
                " speedup the bound allows that Quest reaches."
            )
        )
        d.add(_table(mt.drop(columns=["gpu"])))
        raw = inputs.model.drop(columns=["source", "ts", "command"], errors="ignore")
        d.add(_details(f"every row ({len(raw)})", _table(raw)))

    # tuned vs heuristic
    heur = F.heuristic_table(b) if len(b) else pd.DataFrame()
    d.section("tuning", "Tuning")
    if not heur.empty:
        d.add("<h3>Tuning table vs heuristic configs, same run</h3>")
        for p in F.heuristic_plots(b):
            d.plot(p)
        for line in F.heuristic_summary(heur):
            d.add(_p(line))
        d.add(_details(f"every case ({len(heur)})", _table(heur.drop(columns=["gpu"]))))
    else:
        d.add(_p("No table-vs-heuristic timings (bench CSVs made with questkern bench --vs-heuristic)."))
    if inputs.studies:
        for s in inputs.studies:
            sp, notes = F.study_plots(s)
            for p in sp:
                d.plot(p, timed=False)
            for n in notes:
                d.add(_p(n))
    else:
        d.add(_p("No Optuna study given (--study-storage URL): no history, importances or Pareto plots."))
    if inputs.tuning:
        for t in inputs.tuning:
            n = len(t.doc.get("entries", t.doc.get("fronts", [])))
            d.add(
                _details(
                    f"tuning table {t.path} ({t.kind}, {n} {'entries' if t.kind == 'table' else 'fronts'})",
                    _tuning_tables(t),
                )
            )
    else:
        d.add(
            _p(
                "No tuning table of this GPU found (tuning/*.json, questkern/tuning/tables/*.json): the kernels run on"
                " the documented heuristics."
            )
        )

    # quality
    if len(inputs.quality) or len(inputs.recall):
        d.section("quality", "Quality")
        d.add(_p("Measured on CPU with SmolLM2-135M traces (questkern quality): the same on every GPU."))
        rplots = F.recall_plots(inputs.recall)
        top = str(inputs.recall["context"].max()) if "context" in inputs.recall else None
        main_r = [p for p in rplots if p.key and p.key[-1] == top] or rplots[:2]
        for p in main_r:
            d.plot(p, timed=False)
        rest = [p for p in rplots if p not in main_r]
        if rest:
            d.add(
                _details(
                    f"recall at the other contexts ({len(rest)} plots)",
                    "".join(d.plot_html(p, timed=False) for p in rest),
                )
            )
        if len(inputs.recall):
            d.add(
                _details(
                    f"recall table ({len(inputs.recall)} rows)",
                    _table(inputs.recall.drop(columns=["source"], errors="ignore")),
                )
            )
        for p in F.quality_plots(inputs.quality):
            d.plot(p, timed=False)
        if len(inputs.quality):
            d.add(
                _details(
                    f"quality table ({len(inputs.quality)} rows)",
                    _table(inputs.quality.drop(columns=["source"], errors="ignore")),
                )
            )

    # latency
    d.section("latency", "Latency vs context length")
    plots = F.latency_plots(b) if len(b) else []
    _plots_main_then_rest(d, plots, head_ids, "other shapes")
    if not plots:
        d.add(_p("No bench rows with a Quest step, dense decode or SDPA."))

    # bandwidth
    d.section("bandwidth", "Achieved bandwidth vs copy bandwidth")
    plots = F.bandwidth_plots(b) if len(b) else []
    _plots_main_then_rest(d, plots, head_ids, "other shapes")
    if not plots:
        d.add(_p("No bandwidth figures: the bench CSVs carry no copy bandwidth (a run without a GPU measures none)."))

    # breakdown
    d.section("breakdown", "Kernel time breakdown of a decode step")
    plots = F.step_breakdown_plots(b) if len(b) else []
    _plots_main_then_rest(d, plots, head_ids, "other shapes")
    pplots = F.profile_breakdown_plots(inputs.profiles)
    for p in pplots:
        d.plot(p)
    if inputs.profiles:
        for p in inputs.profiles:
            cmd = (p.meta or {}).get("commands", {})
            keep = [c for c in p.summary.columns if p.summary[c].notna().any()]
            inner = _table(p.summary[keep])
            if cmd:
                inner += f"<pre>{html.escape(chr(10).join(f'{k}: {v}' for k, v in cmd.items()))}</pre>"
            d.add(_details(f"profile {p.label}", inner))
    else:
        d.add(_p(f"No profile of this GPU (profiles/{gpu or '<gpu-key>'}/**/summary.csv): run questkern profile."))
    if not plots and not pplots:
        d.add(_p("No breakdown: needs bench rows for select and sparse_decode, or a profile."))

    mixed = b[b["lens"] != ""] if len(b) else b
    if len(mixed):
        d.section("mixed", "Mixed-length batches")
        d.add(
            _table(
                mixed[
                    [
                        "op",
                        "batch",
                        "q_heads",
                        "kv_heads",
                        "head_dim",
                        "dtype",
                        "seq_len",
                        "page_size",
                        "budget",
                        "gqa_mode",
                        "median_us",
                        "gbps",
                        "pct_copy_bw",
                        "speedup_vs_sdpa",
                    ]
                ]
            )
        )

    # environment
    d.section("environment", "Environment and data sources")
    env = _environment(inputs)
    d.add(_table(env) if not env.empty else _p("No bench CSV or profile found."))
    with_src = "\n".join(html.escape(s) for s in inputs.sources) or "(none)"
    if command:
        d.add(_details("the command that built this report", f"<pre>{html.escape(command)}</pre>"))
    d.add(_details(f"data sources ({len(inputs.sources)})", f"<pre>{with_src}</pre>"))
    if len(b):
        cmds = sorted({c for c in b["command"] if c})
        if cmds:
            d.add(_details(f"bench commands ({len(cmds)})", f"<pre>{html.escape(chr(10).join(cmds))}</pre>"))

    nav = " ".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in d.sections)
    d.parts.insert(nav_at, f"<nav>{nav}</nav>")
    main = d.main[1] if d.main else (d.plot_ids[0] if d.plot_ids else None)
    manifest = {
        "schema": "questkern.report.manifest",
        "version": 2,
        "generated": now,
        "plots": d.plot_ids,
        "main": main,
        "sections": [s for s, _ in d.sections],
        "gpus": gpus,
        "interpreter": inputs.interpreter,
    }
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{CSS}</style>",
            f'<script type="text/javascript">{get_plotlyjs()}</script>',
            "</head><body>",
            *d.parts,
            RESIZE_ON_OPEN,
            f'<script type="application/json" id="{MANIFEST_ID}">{json.dumps(manifest)}</script>',
            "</body></html>",
        ]
    )
    return page, manifest


# plots drawn inside a closed <details> get their size when it opens
RESIZE_ON_OPEN = (
    "<script>document.querySelectorAll('details').forEach(function (el) {"
    "el.addEventListener('toggle', function () { if (el.open && window.Plotly) {"
    "el.querySelectorAll('.plotly-graph-div').forEach(function (g) { Plotly.Plots.resize(g); }); } });"
    "});</script>"
)


def _headline_ids(b: pd.DataFrame) -> set:
    """Shape keys (batch, heads, head dim, dtype) of the headline configuration's cases."""
    if not len(b):
        return set()
    tab = F.speedup_table(b)
    head = F.headline_rows(tab)
    return {F.shape_key(r) for r in head[F.SHAPE_COLS].itertuples(index=False)} if not head.empty else set()


def _plots_main_then_rest(d: _Doc, plots: list, head_shapes: set, label: str) -> None:
    """The headline shapes' figures open; the others collapsed in one <details>."""
    main = [p for p in plots if p.key in head_shapes] if head_shapes else plots
    rest = [p for p in plots if p not in main]
    for p in main:
        d.plot(p)
    if rest:
        d.add(_details(f"{label} ({len(rest)} plots)", "".join(d.plot_html(p) for p in rest)))


def read_manifest(page: str) -> dict:
    """The manifest embedded in a report's HTML."""
    start = page.index(f'id="{MANIFEST_ID}">') + len(f'id="{MANIFEST_ID}">')
    return json.loads(page[start : page.index("</script>", start)])

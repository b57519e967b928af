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
    TuningTable,
    ReportDataError,
    classify_csv,
    find_csvs,
    load_bench,
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


def gather(data: list[Path], profiles: list[Path], tuning: list[Path], study_storage: str | None = None,
           studies: list[str] | None = None) -> ReportInputs:
    """Read every input; bench and quality CSVs are told apart by their columns."""
    csvs = find_csvs(data)
    given = {Path(p).resolve() for p in data if Path(p).is_file()}
    kinds: dict[str, list[Path]] = {"bench": [], "quality": [], "recall": []}
    skipped = []
    for p in csvs:  # a file named by --data must be usable; one found in a folder is skipped, and said so
        kind, why = classify_csv(p)
        if kind is None and Path(p).resolve() in given:
            raise ReportDataError(f"--data {p}: {why}")
        if kind is None:
            skipped.append(f"{p}: {why}")
        else:
            kinds[kind].append(p)
    bench_files, quality_files, recall_files = kinds["bench"], kinds["quality"], kinds["recall"]
    prof = load_profiles(profiles)
    tun = load_tuning(tuning)
    st = load_studies(study_storage, studies)
    sources = [f"bench: {p}" for p in bench_files] + [f"quality: {p}" for p in quality_files + recall_files]
    sources += [f"profile: {p.path}" for p in prof] + [f"tuning: {t.path}" for t in tun]
    sources += [f"optuna study: {s.study_name} @ {study_storage}" for s in st]
    return ReportInputs(load_bench(bench_files), load_quality(quality_files), prof, tun, st, sources,
                        load_recall(recall_files), skipped)


# --------------------------------------------------------------------------- html pieces

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:0 24px 48px;color:#222}
h1{margin-top:28px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
.note{color:#555;font-size:0.92em} .banner{background:#fff3cd;border:1px solid #e0c060;padding:10px 14px;margin:12px 0}
table.qk{border-collapse:collapse;font-size:0.85em;margin:8px 0 20px} table.qk th,table.qk td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.qk th{background:#f4f4f4} table.qk td:first-child,table.qk th:first-child{text-align:left}
.plot{margin:14px 0 4px} .caption{color:#555;font-size:0.88em;margin:0 0 18px} nav a{margin-right:14px}
details summary{cursor:pointer;color:#444;margin:6px 0} .tablewrap{overflow-x:auto;max-width:100%}
"""


def _table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    extra = ""
    if len(df) > MAX_TABLE_ROWS:
        extra = f'<p class="note">first {MAX_TABLE_ROWS} of {len(df)} rows</p>'
        df = df.head(MAX_TABLE_ROWS)
    body = df.to_html(index=False, classes="qk", border=0, na_rep="–", escape=True,
                      float_format=lambda v: floatfmt.format(v))
    return f'<div class="tablewrap">{body}</div>' + extra


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'


class _Doc:
    def __init__(self):
        self.parts: list[str] = []
        self.plot_ids: list[str] = []
        self.sections: list[tuple[str, str]] = []
        self.main: tuple | None = None  # (rank, plot id) of the best main-plot candidate

    def section(self, sid: str, title: str) -> None:
        self.sections.append((sid, title))
        self.parts.append(f'<h2 id="{sid}">{html.escape(title)}</h2>')

    def add(self, s: str) -> None:
        self.parts.append(s)

    def plot(self, p: F.Plot) -> None:
        base, n = p.id, 2
        while p.id in self.plot_ids:  # e.g. two studies whose names slug alike
            p.id, n = f"{base}-{n}", n + 1
        self.plot_ids.append(p.id)
        if p.rank and (self.main is None or p.rank > self.main[0]):
            self.main = (p.rank, p.id)
        div = p.fig.to_html(full_html=False, include_plotlyjs=False, div_id=p.id,
                            config={"displaylogo": False, "responsive": True})
        self.parts.append(f'<div class="plot">{div}</div>')
        if p.caption:
            self.parts.append(_p(p.caption, "caption"))


def _environment(inputs: ReportInputs) -> pd.DataFrame:
    rows = []
    b = inputs.bench
    for gpu, g in b.groupby("gpu", sort=True):
        first = g.iloc[-1]
        rows.append({"gpu key": gpu, "device": first["gpu_name"], "driver": first["driver"], "torch": first["torch"],
                     "Triton": first["triton"], "CUDA": first["cuda"],
                     "measured (UTC)": ", ".join(sorted({t[:16].replace("T", " ") for t in g["timestamp"] if t})) or "–",
                     "copy GB/s": g["copy_gbps"].median(), "rows": len(g), "source": "bench"})
    for p in inputs.profiles:
        dev = (p.meta or {}).get("device", {})
        rows.append({"gpu key": p.gpu, "device": dev.get("gpu_name", ""), "driver": dev.get("driver", ""),
                     "torch": dev.get("torch", ""), "Triton": dev.get("triton", ""), "CUDA": dev.get("cuda", ""),
                     "measured (UTC)": str((p.meta or {}).get("created", ""))[:16].replace("T", " "),
                     "copy GB/s": float("nan"), "rows": len(p.summary), "source": f"profile {p.label}"})
    return pd.DataFrame(rows)


def _is_synthetic(inputs: ReportInputs) -> bool:
    b = inputs.bench
    return bool(len(b)) and bool((b["gpu"].str.startswith("fixture") | b["gpu_name"].str.lower().str.contains("synthetic")).any())


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
                ent["speedup_vs_default"] = pd.to_numeric(ent["default_latency_us"], errors="coerce") / ent["latency_us"]
            if "seq_bucket" in ent:
                ent["seq_bucket"] = ent["seq_bucket"].map(lambda k: f"2^{k}")
        out.append(_table(ent))
    else:
        for fr in doc.get("fronts", []):
            pts = pd.DataFrame(fr.get("points", []))
            if "config" in pts:
                pts["config"] = pts["config"].map(lambda c: " ".join(f"{k}={v}" for k, v in (c or {}).items()))
            out.append(_p(f"study {fr.get('study')}, bucket {json.dumps(fr.get('bucket'))}, objectives "
                          f"{', '.join(fr.get('objectives', []))}"))
            out.append(_table(pts))
    return "\n".join(out)


def render(inputs: ReportInputs, *, title: str, command: str = "") -> tuple[str, dict]:
    """The report as one HTML string, and its manifest (plot ids, sections)."""
    from plotly.offline import get_plotlyjs

    from questkern import __version__

    d = _Doc()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    b = inputs.bench
    gpus = sorted(b["gpu"].unique()) if len(b) else []
    d.add(f"<h1>{html.escape(title)}</h1>")
    d.add(_p(f"questkern {__version__} · generated {now} · GPUs: {', '.join(gpus) or 'none'}"
             + (f" · command: {command}" if command else "")))
    if _is_synthetic(inputs):
        d.add('<div class="banner"><b>Synthetic fixture data.</b> These numbers come from committed test fixtures, not from a'
              " measurement; they show what a report looks like. Rebuild from a real bench CSV for results.</div>")
    if len(gpus) > 1:
        d.add(_p("Several GPUs: every figure and every ratio below belongs to one GPU; nothing is divided across devices."))
    nav_at = len(d.parts)

    # environment
    d.section("environment", "Environment")
    env = _environment(inputs)
    d.add(_table(env) if not env.empty else _p("No bench CSV or profile found."))
    with_src = "\n".join(html.escape(s) for s in inputs.sources) or "(none)"
    d.add(f"<details><summary>data sources ({len(inputs.sources)})</summary><pre>{with_src}</pre></details>")
    if len(b):
        cmds = sorted({c for c in b["command"] if c})
        if cmds:
            d.add(f"<details><summary>bench commands ({len(cmds)})</summary><pre>{html.escape(chr(10).join(cmds))}</pre></details>")

    # latency
    d.section("latency", "Latency vs sequence length")
    plots = F.latency_plots(b) if len(b) else []
    for p in plots:
        d.plot(p)
    if not plots:
        d.add(_p("No bench rows with a Quest step, dense decode or SDPA."))
    spd = F.speedup_table(b) if len(b) else pd.DataFrame()

    # speedup
    d.section("speedup", "Speedup vs the byte bound")
    plots = F.speedup_plots(b) if len(b) else []
    for p in plots:
        d.plot(p)
    if not spd.empty:
        cols = ["gpu", "batch", "q_heads", "kv_heads", "head_dim", "dtype", "seq_len", "page_size", "budget", "gqa_mode",
                "quest_us", "dense_us", "sdpa_us", "speedup_vs_dense", "speedup_vs_sdpa", "byte_bound", "pct_of_bound",
                "bound_vs_sdpa"]
        d.add(_p("Times in µs; speedups are ratios of two times of the same GPU and run; pct_of_bound = measured speedup"
                 " over dense / byte bound, in %; bound_vs_sdpa = SDPA time / (graph floor + Quest bytes at the copy"
                 " bandwidth), all of the same run (empty for CSVs made before the bench recorded its floor)."))
        d.add(_table(spd[cols]))
    else:
        d.add(_p("No case with both a Quest step and a dense baseline."))

    # bandwidth
    d.section("bandwidth", "Achieved bandwidth vs copy bandwidth")
    plots = F.bandwidth_plots(b) if len(b) else []
    for p in plots:
        d.plot(p)
    if not plots:
        d.add(_p("No bandwidth figures: the bench CSVs carry no copy bandwidth (a run without a GPU measures none)."))

    # breakdown
    d.section("breakdown", "Kernel time breakdown of a decode step")
    plots = F.step_breakdown_plots(b) if len(b) else []
    for p in plots:
        d.plot(p)
    pplots = F.profile_breakdown_plots(inputs.profiles)
    for p in pplots:
        d.plot(p)
    if inputs.profiles:
        for p in inputs.profiles:
            cmd = (p.meta or {}).get("commands", {})
            d.add(f"<h3>profile {html.escape(p.label)} ({html.escape(p.gpu)})</h3>")
            keep = [c for c in p.summary.columns if p.summary[c].notna().any()]
            d.add(_table(p.summary[keep]))
            if cmd:
                d.add(f"<details><summary>commands</summary><pre>{html.escape(chr(10).join(f'{k}: {v}' for k, v in cmd.items()))}</pre></details>")
    else:
        d.add(_p("No profile summaries (profiles/**/summary.csv): run `questkern profile`."))
    if not plots and not pplots:
        d.add(_p("No breakdown: needs bench rows for select and sparse_decode, or a profile."))

    # tuning
    d.section("tuning", "Tuning: tables, history, importances, Pareto fronts")
    if inputs.tuning:
        for t in inputs.tuning:
            d.add(_tuning_tables(t))
    else:
        d.add(_p("No tuning table found (tuning/*.json, questkern/tuning/tables/*.json): the kernels run on the"
                 " documented heuristics."))
    heur = F.heuristic_table(b) if len(b) else pd.DataFrame()
    if not heur.empty:
        d.add("<h3>Tuning table vs heuristic configs, same run</h3>")
        for p in F.heuristic_plots(b):
            d.plot(p)
        for line in F.heuristic_summary(heur):
            d.add(_p(line))
        d.add(_table(heur))
    else:
        d.add(_p("No table-vs-heuristic timings (bench CSVs made with `questkern bench --vs-heuristic`)."))
    if inputs.studies:
        for s in inputs.studies:
            sp, notes = F.study_plots(s)
            for p in sp:
                d.plot(p)
            for n in notes:
                d.add(_p(n))
    else:
        d.add(_p("No Optuna study given (--study-storage URL): no history, importances or Pareto plots."))

    # quality
    if len(inputs.quality) or len(inputs.recall):
        d.section("quality", "Quality")
        for p in F.recall_plots(inputs.recall):
            d.plot(p)
        if len(inputs.recall):
            d.add(_table(inputs.recall.drop(columns=["source"], errors="ignore")))
        for p in F.quality_plots(inputs.quality):
            d.plot(p)
        if len(inputs.quality):
            d.add(_table(inputs.quality.drop(columns=["source"], errors="ignore")))

    mixed = b[b["lens"] != ""] if len(b) else b
    if len(mixed):
        d.section("mixed", "Mixed-length batches")
        d.add(_table(mixed[["gpu", "op", "batch", "q_heads", "kv_heads", "head_dim", "dtype", "seq_len", "page_size",
                            "budget", "gqa_mode", "median_us", "gbps", "pct_copy_bw", "speedup_vs_sdpa"]]))

    nav = " ".join(f'<a href="#{sid}">{html.escape(t)}</a>' for sid, t in d.sections)
    d.parts.insert(nav_at, f"<nav>{nav}</nav>")
    main = d.main[1] if d.main else (d.plot_ids[0] if d.plot_ids else None)
    manifest = {"schema": "questkern.report.manifest", "version": 1, "generated": now, "plots": d.plot_ids, "main": main,
                "sections": [s for s, _ in d.sections], "gpus": gpus}
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>", *d.parts,
        f'<script type="application/json" id="{MANIFEST_ID}">{json.dumps(manifest)}</script>',
        "</body></html>"])
    return page, manifest


def read_manifest(page: str) -> dict:
    """The manifest embedded in a report's HTML."""
    start = page.index(f'id="{MANIFEST_ID}">') + len(f'id="{MANIFEST_ID}">')
    return json.loads(page[start: page.index("</script>", start)])

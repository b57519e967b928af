"""Load what a report shows: bench CSVs, quality CSVs, profile summaries, tuning tables,
Optuna studies. Every loader tolerates absence (returns empty) and rejects malformed
input with an error naming the file and what was expected.

Bench CSV (``questkern bench``, one row per op and case): required columns
``BENCH_REQUIRED``; the others of ``BENCH_COLUMNS`` are used when present. Several files
may hold the same case (a run folder and a merged ``bench.csv``): the latest timestamp
of each (GPU, case, op) wins. Rows measured with page metadata narrower than the keys
(column ``meta_dtype``, e.g. ``fp8_e5m2``; empty = the key dtype) and rows of hierarchical
pages (column ``sub_page_size``; empty = ordinary pages) are left out: the report compares
the default configuration only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

BENCH_REQUIRED = ["gpu", "op", "seq_len", "median_us"]
BENCH_COLUMNS = [
    "gpu",
    "gpu_name",
    "driver",
    "torch",
    "triton",
    "cuda",
    "op",
    "batch",
    "q_heads",
    "kv_heads",
    "head_dim",
    "dtype",
    "seq_len",
    "lens",
    "page_size",
    "budget",
    "gqa_mode",
    "median_us",
    "bytes",
    "gbps",
    "pct_copy_bw",
    "speedup_vs_sdpa",
    "speedup_vs_dense",
    "copy_gbps",
    "splits",
    "config_source",
    "timestamp",
    "command",
    "meta_dtype",
    "floor_us",
    "bound_us",
    "bound_speedup_vs_sdpa",
    "speedup_vs_heuristic",
    "sub_page_size",
]
NUMERIC = [
    "batch",
    "q_heads",
    "kv_heads",
    "head_dim",
    "seq_len",
    "page_size",
    "budget",
    "median_us",
    "bytes",
    "gbps",
    "pct_copy_bw",
    "speedup_vs_sdpa",
    "speedup_vs_dense",
    "copy_gbps",
    "floor_us",
    "bound_us",
    "bound_speedup_vs_sdpa",
    "speedup_vs_heuristic",
]
# a case: everything that defines one measured configuration on one GPU
CASE_KEY = [
    "gpu",
    "batch",
    "q_heads",
    "kv_heads",
    "head_dim",
    "dtype",
    "seq_len",
    "lens",
    "page_size",
    "budget",
    "gqa_mode",
]
OPS = ["select", "topk_torch", "sparse_decode", "quest_step", "dense_decode", "sdpa", "copy"]

# Quality CSVs (reports/data/quality*.csv), either long format (one row per measured value:
# metric, value, plus keys such as page_size/budget) or the quality study's recall summary
# (questkern.quality.study: quality_recall.csv, one row per policy point with recall_mean).
QUALITY_REQUIRED = ["metric", "value"]
RECALL_REQUIRED = ["policy", "page_size", "recall_mean"]


# Model-level bench CSVs (``questkern bench --model``: bench_model*.csv, one row per attention variant
# of a (model, batch, context) case).
MODEL_REQUIRED = ["gpu", "model", "batch", "seq_len", "attention", "tokens_per_s"]
MODEL_NUMERIC = [
    "layers",
    "batch",
    "seq_len",
    "ms_per_token",
    "tokens_per_s",
    "speedup_vs_sdpa",
    "ceiling_speedup",
    "attention_bytes",
    "bound_us",
    "bound_speedup",
    "gain_captured",
    "copy_gbps",
    "budget",
    "dense_layers",
    "page_size",
]


class ReportDataError(ValueError):
    """Input data a report cannot use; the message names the file and the problem."""


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [h.strip() for h in f.readline().strip().split(",")]
    except UnicodeDecodeError:
        raise ReportDataError(f"{path}: not a text CSV file (undecodable bytes: binary?)") from None
    except OSError as e:
        raise ReportDataError(f"{path}: cannot be read ({e.strerror or e})") from None


def classify_csv(path: Path) -> tuple[str | None, str]:
    """('model' | 'bench' | 'quality' | 'recall', '') or (None, why the file is none of them)."""
    header = _csv_header(path)
    if header == [""]:
        return None, "empty file (no header row)"
    if is_model_csv(path):
        return "model", ""
    if is_bench_csv(path):
        return "bench", ""
    if is_quality_csv(path):
        return "quality", ""
    if is_recall_csv(path):
        return "recall", ""
    missing = [c for c in BENCH_REQUIRED if c not in header]
    return None, (
        f"neither a bench CSV (lacks columns {missing} of {BENCH_REQUIRED}), a model bench CSV "
        f"(columns {MODEL_REQUIRED}) nor a quality CSV "
        f"(quality*.csv with columns {QUALITY_REQUIRED} or {RECALL_REQUIRED})"
    )


def _strict_numeric(df: pd.DataFrame, cols, path: Path) -> None:
    """Numeric columns: empty or 'nan' cells are missing values; any other text is an error."""
    for c in cols:
        if c not in df.columns:
            continue
        raw = df[c]
        num = pd.to_numeric(raw, errors="coerce")
        text = raw.astype(str).str.strip().str.lower()
        bad = num.isna() & raw.notna() & ~text.isin(["", "nan"])
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ReportDataError(
                f"{path}: column {c!r} must hold numbers, got {str(raw.iloc[i])!r} in data row {i + 1}"
            )


def find_csvs(paths: list[Path]) -> list[Path]:
    """Every CSV under the given files/folders (recursively), sorted, deduplicated."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(p.rglob("*.csv"))
        else:
            raise ReportDataError(f"--data {p}: no such file or folder")
    seen, uniq = set(), []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(p)
    return uniq


def is_bench_csv(path: Path) -> bool:
    return set(BENCH_REQUIRED) <= set(_csv_header(path))


def is_model_csv(path: Path) -> bool:
    """A model-level bench CSV (``questkern bench --model``)."""
    return set(MODEL_REQUIRED) <= set(_csv_header(path))


def load_model(files: list[Path]) -> pd.DataFrame:
    """Model-level bench rows; the latest run of each (GPU, model, batch, context, attention) wins."""
    frames = []
    for f in files:
        df = pd.read_csv(
            f,
            dtype={
                c: str
                for c in ("gpu", "gpu_name", "model", "attention", "dtype", "timestamp", "command", "path", "gqa_mode")
            },
            keep_default_na=False,
            na_values=[""],
        )
        df["source"] = str(f)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=MODEL_REQUIRED)
    df = pd.concat(frames, ignore_index=True)
    for c in MODEL_NUMERIC:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("gpu", "gpu_name", "model", "attention", "timestamp", "dtype", "path"):
        if c not in df.columns:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str)
    df["ts"] = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
    df = df.sort_values("ts", na_position="first", kind="stable")
    key = [
        c
        for c in ("gpu", "model", "batch", "seq_len", "attention", "dtype", "page_size", "budget", "path")
        if c in df.columns
    ]
    return df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def is_quality_csv(path: Path) -> bool:
    """Long-format quality CSV (metric, value)."""
    return Path(path).name.startswith("quality") and set(QUALITY_REQUIRED) <= set(_csv_header(path))


def is_recall_csv(path: Path) -> bool:
    """The quality study's recall summary (quality_recall.csv)."""
    return Path(path).name.startswith("quality") and set(RECALL_REQUIRED) <= set(_csv_header(path))


def load_recall(files: list[Path]) -> pd.DataFrame:
    frames = []
    for f in files:
        try:
            df = pd.read_csv(f, keep_default_na=False, na_values=[""])
        except Exception as e:
            raise ReportDataError(f"{f}: not a readable CSV ({e})") from None
        _strict_numeric(df, ("recall_mean", "read_frac_mean", "tokens_mean", "page_size"), f)
        for c in ("recall_mean", "read_frac_mean", "tokens_mean", "page_size"):
            if c in df.columns:
                df[c] = pd.to_numeric(df[c], errors="coerce")
        df["source"] = str(f)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RECALL_REQUIRED)


def load_bench(files: list[Path]) -> pd.DataFrame:
    """Concatenate bench CSVs, coerce types, keep the latest row of each (GPU, case, op)."""
    frames = []
    for f in files:
        try:
            df = pd.read_csv(
                f,
                dtype={
                    c: str
                    for c in (
                        "gpu",
                        "gpu_name",
                        "driver",
                        "torch",
                        "triton",
                        "cuda",
                        "lens",
                        "gqa_mode",
                        "dtype",
                        "timestamp",
                        "command",
                        "meta_dtype",
                        "sub_page_size",
                    )
                },
                keep_default_na=False,
                na_values=[""],
            )
        except Exception as e:
            raise ReportDataError(f"{f}: not a readable CSV ({e})") from None
        missing = [c for c in BENCH_REQUIRED if c not in df.columns]
        if missing:
            raise ReportDataError(f"{f}: bench CSV lacks columns {missing} (needs at least {BENCH_REQUIRED})")
        if df.empty:
            raise ReportDataError(f"{f}: bench CSV has a header but no rows")
        _strict_numeric(df, NUMERIC, f)
        df["source"] = str(f)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=BENCH_COLUMNS + ["source"])
    df = pd.concat(frames, ignore_index=True)
    for c in BENCH_COLUMNS:
        if c not in df.columns:
            df[c] = math.nan if c in NUMERIC else ""
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in (
        "gpu",
        "gpu_name",
        "driver",
        "torch",
        "triton",
        "cuda",
        "op",
        "dtype",
        "lens",
        "gqa_mode",
        "timestamp",
        "command",
        "meta_dtype",
        "sub_page_size",
    ):
        df[c] = df[c].fillna("").astype(str)
    df = df[df["meta_dtype"].isin(["", "nan"]) & df["sub_page_size"].isin(["", "nan"])]
    bad = df[df["gpu"].str.strip() == ""]
    if len(bad):
        raise ReportDataError(
            f"{bad['source'].iloc[0]}: {len(bad)} row(s) without a gpu key; every row must name its GPU"
        )
    if df["median_us"].isna().any() or (df["median_us"] <= 0).any():
        src = df.loc[df["median_us"].isna() | (df["median_us"] <= 0), "source"].iloc[0]
        raise ReportDataError(f"{src}: median_us must be a positive number in every row")
    df["lens"] = df["lens"].replace({"nan": ""})
    df["ts"] = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
    df = df.sort_values("ts", na_position="first", kind="stable")
    key = [c for c in CASE_KEY] + ["op"]
    df = df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    return df


def load_quality(files: list[Path]) -> pd.DataFrame:
    frames = []
    for f in files:
        try:
            df = pd.read_csv(f, keep_default_na=False, na_values=[""])
        except Exception as e:
            raise ReportDataError(f"{f}: not a readable CSV ({e})") from None
        missing = [c for c in QUALITY_REQUIRED if c not in df.columns]
        if missing:
            raise ReportDataError(f"{f}: quality CSV lacks columns {missing} (long format: metric, value, plus keys)")
        _strict_numeric(df, ["value"], f)
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df["source"] = str(f)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=QUALITY_REQUIRED)


@dataclass
class Profile:
    """One ``profiles/<gpu-key>/<stamp>-<name>/`` folder."""

    path: Path
    gpu: str
    label: str
    summary: pd.DataFrame
    meta: dict = field(default_factory=dict)


def load_profiles(roots: list[Path]) -> list[Profile]:
    """Every ``summary.csv`` under the roots (with the ``meta.json`` beside it when present)."""
    from questkern.profiling.summary import SUMMARY_COLUMNS

    out = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for s in sorted(root.rglob("summary.csv")):
            df = pd.read_csv(s)
            missing = [c for c in ("op", "kind", "per_step_us") if c not in df.columns]
            if missing:
                raise ReportDataError(f"{s}: profile summary lacks columns {missing} (format: {SUMMARY_COLUMNS})")
            meta = {}
            if (s.parent / "meta.json").exists():
                try:
                    meta = json.loads((s.parent / "meta.json").read_text())
                except json.JSONDecodeError as e:
                    raise ReportDataError(f"{s.parent / 'meta.json'}: not valid JSON ({e})") from None
            gpu = (meta.get("device") or {}).get("gpu") or s.parent.parent.name
            out.append(Profile(s.parent, gpu, s.parent.name, df, meta))
    return out


@dataclass
class TuningTable:
    path: Path
    doc: dict
    kind: str  # "table" or "pareto"


def load_tuning(paths: list[Path]) -> list[TuningTable]:
    """Tuning tables (``<gpu>.json``) and Pareto files (``<gpu>.pareto.json``), validated with
    the tuner's own schema when it is importable. Missing folders are fine."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.glob("*.json"))
    out = []
    for f in files:
        if f.name == "schema.json":
            continue
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportDataError(f"{f}: not a readable JSON tuning table ({e})") from None
        if not isinstance(doc, dict):
            raise ReportDataError(f"{f}: a tuning table must be a JSON object")
        kind = "pareto" if ("fronts" in doc or f.name.endswith(".pareto.json")) else "table"
        try:  # the tuner's validator, when present, is the authority on the format
            from questkern.configs import schema

            (schema.validate_pareto if kind == "pareto" else schema.validate_table)(doc, where=str(f))
        except ImportError:
            pass
        except ValueError as e:
            raise ReportDataError(str(e)) from None
        out.append(TuningTable(f, doc, kind))
    return out


def load_studies(storage: str | None, names: list[str] | None = None) -> list:
    """Optuna studies from a storage URL (all of them unless ``names``)."""
    if not storage:
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        available = optuna.study.get_all_study_names(storage=storage)
    except Exception as e:
        raise ReportDataError(f"--study-storage {storage}: cannot open the Optuna storage ({e})") from None
    wanted = names or available
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ReportDataError(f"--study {unknown}: not in {storage} (it holds {available})")
    return [optuna.load_study(study_name=n, storage=storage) for n in wanted]

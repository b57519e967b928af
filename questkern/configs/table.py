"""Tuning tables as data: build entries, load and validate, merge, write atomically.

A table is one JSON file per GPU key (see ``schema.json`` and :mod:`keys`). Merging new
results into an existing file never replaces an existing entry with a slower one unless
``force`` is given, and never mixes Triton major versions in one file (the runtime
refuses tables of another Triton major, so such a merge must be explicit: ``force``
moves the old file aside to ``<name>.bak-<stamp>`` first). Nothing the user had is lost.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from questkern._io import write_json_atomic
from questkern.configs import paths
from questkern.configs.gpus import gpu_family
from questkern.configs.keys import EntryKey
from questkern.configs.schema import SCHEMA_VERSION, TableError, entry_key, validate_pareto, validate_table


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def current_versions() -> dict:
    """torch / Triton / CUDA / questkern versions of this process (recorded with every table)."""
    import torch
    import triton

    from questkern._version import __version__

    return {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "questkern": __version__,
    }


def triton_major(version: str) -> int:
    return int(str(version).split(".")[0])


def new_table(gpu_key: str, device_name: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "gpu_key": gpu_key,
        "device_name": device_name,
        "gpu_family": gpu_family(gpu_key),
        "versions": current_versions(),
        "updated": now_iso(),
        "entries": [],
    }


def make_entry(
    key: EntryKey,
    config: dict,
    latency_us: float,
    default_latency_us: float | None,
    *,
    trials: int,
    default_config: dict | None = None,
    seq_len: int | None = None,
    batch: int | None = None,
    num_q_heads: int | None = None,
    num_kv_heads: int | None = None,
    study: str | None = None,
) -> dict:
    """One table entry (the key fields, the config and its measured latencies)."""
    e = key.to_dict()
    e.update(
        config=dict(config),
        latency_us=round(float(latency_us), 3),
        default_latency_us=None if default_latency_us is None else round(float(default_latency_us), 3),
        default_config=None if default_config is None else dict(default_config),
        date=now_iso(),
        trials=int(trials),
        study=study,
    )
    for name, v in (
        ("seq_len", seq_len),
        ("batch", batch),
        ("num_q_heads", num_q_heads),
        ("num_kv_heads", num_kv_heads),
    ):
        if v is not None:
            e[name] = int(v)
    return e


def read_json(path: Path) -> dict:
    """Parse a JSON file; TableError (never another exception) when it is unreadable or not JSON."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"{path} is not valid JSON: {exc}") from None


def load_table(path: Path) -> dict:
    """Read and validate one table file (raises TableError)."""
    doc = read_json(path)
    validate_table(doc, where=str(path))
    return doc


def atomic_write_json(path: Path, doc: dict) -> None:
    """Write ``doc`` to ``path`` atomically (:mod:`questkern._io`): on any failure the
    old file is untouched and the temp file removed. NaN is refused (not JSON)."""
    write_json_atomic(path, doc, indent=1, sort_keys=False, allow_nan=False)


@dataclass
class MergeAction:
    key: EntryKey
    action: str  # "added" | "replaced" | "kept-existing" | "forced"
    old_latency_us: float | None
    new_latency_us: float


@dataclass
class MergeResult:
    path: Path
    actions: list[MergeAction]
    backup: Path | None = None

    def summary(self) -> str:
        n = {a: sum(x.action == a for x in self.actions) for a in ("added", "replaced", "forced", "kept-existing")}
        s = f"{self.path}: {n['added']} added, {n['replaced'] + n['forced']} replaced, {n['kept-existing']} kept (existing faster)"
        return s + (f"; previous file kept as {self.backup}" if self.backup else "")


def _backup(path: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.bak-{stamp}")
    os.replace(path, dest)
    return dest


def merge_entries(doc: dict, new_entries: list[dict], *, force: bool = False) -> list[MergeAction]:
    """Merge ``new_entries`` into ``doc`` in place. An existing entry with the same key is
    replaced only when the new one is faster, or with ``force``."""
    index = {entry_key(e): i for i, e in enumerate(doc["entries"])}
    actions = []
    for e in new_entries:
        k = entry_key(e)
        if k not in index:
            index[k] = len(doc["entries"])
            doc["entries"].append(e)
            actions.append(MergeAction(k, "added", None, e["latency_us"]))
            continue
        old = doc["entries"][index[k]]
        if e["latency_us"] < old["latency_us"] or force:
            doc["entries"][index[k]] = e
            act = "replaced" if e["latency_us"] < old["latency_us"] else "forced"
            actions.append(MergeAction(k, act, old["latency_us"], e["latency_us"]))
        else:
            actions.append(MergeAction(k, "kept-existing", old["latency_us"], e["latency_us"]))
    return actions


def write_table(
    directory: Path, gpu_key: str, device_name: str, new_entries: list[dict], *, force: bool = False
) -> MergeResult:
    """Merge ``new_entries`` into ``<directory>/<gpu_key>.json`` and write it atomically.

    An existing file that is invalid, or was tuned with another Triton major version, is
    an error unless ``force`` (then it is moved aside to ``<name>.bak-<stamp>`` first).
    """
    path = paths.table_path(directory, gpu_key)
    backup = None
    doc = None
    if path.exists():
        try:
            doc = load_table(path)
        except TableError as exc:
            if not force:
                raise TableError(
                    f"{exc}; fix or remove it, or pass --force to move it aside and start a new table"
                ) from None
            backup = _backup(path)
        if doc is not None:
            if doc["gpu_key"] != gpu_key:
                raise TableError(f"{path} holds gpu_key {doc['gpu_key']!r}, expected {gpu_key!r}")
            have, run = doc["versions"]["triton"], current_versions()["triton"]
            if triton_major(have) != triton_major(run):
                if not force:
                    raise TableError(
                        f"{path} was tuned with Triton {have}, this run uses Triton {run} (another major "
                        "version, which the runtime will not load together); pass --force to move the "
                        "old file aside and start a new table"
                    )
                backup = _backup(path)
                doc = None
    if doc is None:
        doc = new_table(gpu_key, device_name)
    actions = merge_entries(doc, new_entries, force=force)
    doc["versions"] = current_versions()
    doc["device_name"] = device_name
    doc["updated"] = now_iso()
    validate_table(doc, where=f"merged table for {path}")
    atomic_write_json(path, doc)
    return MergeResult(path, actions, backup)


def write_pareto(directory: Path, gpu_key: str, fronts: list[dict]) -> Path:
    """Merge Pareto fronts (replacing fronts of the same study) into ``<gpu_key>.pareto.json``."""
    path = paths.pareto_path(directory, gpu_key)
    doc: dict = {"schema_version": SCHEMA_VERSION, "gpu_key": gpu_key, "updated": now_iso(), "fronts": []}
    if path.exists():
        try:
            old = read_json(path)
            validate_pareto(old, where=str(path))
            doc["fronts"] = old["fronts"]
        except TableError:
            _backup(path)
    by_study = {f["study"]: i for i, f in enumerate(doc["fronts"])}
    for f in fronts:
        if f["study"] in by_study:
            doc["fronts"][by_study[f["study"]]] = f
        else:
            by_study[f["study"]] = len(doc["fronts"])
            doc["fronts"].append(f)
    validate_pareto(doc, where=f"merged Pareto file {path}")
    atomic_write_json(path, doc)
    return path

"""Orchestration: a sweep of buckets -> one Optuna study each -> verified winners -> table.

``tune(spec)`` is the Python API behind ``questkern tune``. For every bucket it opens
(or resumes) the study, runs trials through the :class:`~questkern.tuning.runner.Runner`,
then, with the inputs still in memory, re-times the best few configs of each
(page size, budget) and the heuristic default back to back (``verify_rounds``
alternating rounds, medians), so the reported speedup is measured in one run and is
not inflated by picking the luckiest of many noisy trials. The faster of the verified
best and the default goes into the table, so an entry is never slower than the
heuristic as measured. The table is merged and written after every bucket, so an
interrupted sweep keeps its finished buckets; rerunning the same command resumes the
studies.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from questkern._details import default_device
from questkern.configs import paths
from questkern.configs.keys import BUDGET_OPS, OPS, EntryKey, dtype_name
from questkern.tuning.observer import Observer, geomean
from questkern.tuning.runner import Runner, Timer, WorkloadPool, default_timer
from questkern.tuning.space import Bucket, OpSpace, decode_params, params_key
from questkern.tuning.strategy import (QualityFn, evaluated, make_objective, make_sampler, make_storage, open_study,
                                       run_study, study_name)
from questkern.configs.table import (atomic_write_json, current_versions, load_table, make_entry, now_iso,
                                    triton_major, write_pareto, write_table)


@dataclass
class TuneSpec:
    """Everything a tuning run needs (the CLI fills it from its flags)."""

    gpu_key: str
    device_name: str
    seqs: tuple[int, ...]
    batches: tuple[int, ...] = (1,)
    heads: tuple[tuple[int, int], ...] = ((32, 8),)
    head_dims: tuple[int, ...] = (128,)
    dtypes: tuple[str, ...] = ("bfloat16",)
    page_sizes: tuple[int, ...] = (16,)
    budgets: tuple[int, ...] = (2048,)
    ops: tuple[str, ...] = OPS
    gqa_mode: str = "shared"
    aggregate: str = "sum"
    n_trials: int | None = 40
    timeout: float | None = None  # seconds per bucket
    max_time: float | None = None  # seconds for the whole run (shared out over the buckets left)
    storage: str | None = None  # None: paths.default_storage(); "inmemory": no persistence
    study_prefix: str | None = None  # default: the GPU key
    out_dir: Path | None = None  # default: the user cache directory
    sampler: str = "tpe"
    seed: int = 0
    force: bool = False
    fixed: dict = field(default_factory=dict)
    verify_rounds: int = 3
    verify_top: int = 3
    rep_ms: int = 100
    warmup_ms: int = 25

    def __post_init__(self):
        for op in self.ops:
            if op not in OPS:
                raise ValueError(f"ops: unknown op {op!r}; expected some of {', '.join(OPS)}")
        self.dtypes = tuple(dtype_name(d) for d in self.dtypes)
        if self.n_trials is not None and self.n_trials < 1:
            raise ValueError(f"n_trials must be >= 1, got {self.n_trials}")
        for name in ("timeout", "max_time"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {v}")

    @property
    def prefix(self) -> str:
        return self.study_prefix or self.gpu_key

    @property
    def out(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else paths.user_cache_dir()

    @property
    def storage_url(self) -> str:
        return self.storage or paths.default_storage()

    def buckets(self) -> tuple[list[Bucket], list[str]]:
        """Buckets in an order that reuses inputs (ops innermost), and notes on skipped
        duplicates (buckets whose table keys an earlier bucket already covers)."""
        out, notes, covered = [], [], set[EntryKey]()
        for dtype in self.dtypes:
            for d in self.head_dims:
                for hq, hkv in self.heads:
                    for seq in self.seqs:
                        for batch in self.batches:
                            for op in self.ops:
                                b = Bucket(op, dtype, d, hq, hkv, seq, batch, tuple(self.page_sizes),
                                           tuple(self.budgets) if op in BUDGET_OPS else (), self.gqa_mode,
                                           self.aggregate)
                                keys = {b.entry_key(ps, bud) for ps in b.page_sizes for bud in (b.budgets or (None,))}
                                if keys <= covered:
                                    notes.append(f"skipping {b.name()}: same table entries as an earlier bucket")
                                    continue
                                covered |= keys
                                out.append(b)
        return out, notes


@dataclass
class GroupResult:
    """The winner of one (page size, budget) of a bucket."""

    page_size: int
    budget: int | None
    key: EntryKey
    config: dict
    latency_us: float
    default_config: dict | None
    default_latency_us: float | None
    trial: int | None
    quality: float | None = None
    verified: bool = False

    @property
    def speedup(self) -> float | None:
        return self.default_latency_us / self.latency_us if self.default_latency_us else None


@dataclass
class BucketResult:
    bucket: Bucket
    study_name: str
    groups: list[GroupResult] = field(default_factory=list)
    n_evaluated: int = 0  # complete or failed trials (duplicates included: they cost no kernel run)
    n_distinct: int = 0  # distinct points among them
    n_failed: int = 0
    n_pruned: int = 0
    seconds: float = 0.0
    error: str | None = None
    pareto: list[dict] = field(default_factory=list)


@dataclass
class TuneReport:
    spec: TuneSpec
    buckets: list[BucketResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def geomean_speedup(self) -> float:
        return geomean([g.speedup for b in self.buckets for g in b.groups if g.speedup])

    def to_dict(self) -> dict:
        spec = asdict(self.spec)
        spec["out_dir"] = str(self.spec.out)
        spec["storage"] = self.spec.storage_url
        return {
            "gpu_key": self.spec.gpu_key, "device_name": self.spec.device_name, "versions": current_versions(),
            "date": now_iso(), "spec": spec, "geomean_speedup": self.geomean_speedup,
            "buckets": [{"study": b.study_name, "bucket": b.bucket.to_dict(), "n_evaluated": b.n_evaluated,
                         "n_distinct": b.n_distinct,
                         "n_failed": b.n_failed, "n_pruned": b.n_pruned, "seconds": round(b.seconds, 2),
                         "error": b.error,
                         "groups": [{"page_size": g.page_size, "budget": g.budget, "config": g.config,
                                     "default_config": g.default_config,
                                     "latency_us": g.latency_us, "default_latency_us": g.default_latency_us,
                                     "speedup": g.speedup, "quality": g.quality, "trial": g.trial,
                                     "verified": g.verified} for g in b.groups]}
                        for b in self.buckets],
            "written": [str(p) for p in self.written], "notes": self.notes,
        }


def num_sms(device: torch.device) -> int:
    """SM count (4 on the CPU interpreter, as the decode launcher assumes)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def preflight(spec: TuneSpec) -> None:
    """Fail before any trial when the output table could not be written at the end."""
    path = paths.table_path(spec.out, spec.gpu_key)
    if path.exists() and not spec.force:
        import triton

        doc = load_table(path)  # raises TableError naming the problem
        if triton_major(doc["versions"]["triton"]) != triton_major(triton.__version__):
            raise ValueError(f"{path} was tuned with Triton {doc['versions']['triton']}, this run uses "
                             f"{triton.__version__}; pass --force to move the old table aside")


def plan_lines(spec: TuneSpec, device: torch.device | None = None) -> list[str]:
    """What a run would do (``--dry-run``): buckets, studies, space sizes, defaults, outputs."""
    device = device or default_device()
    buckets, notes = spec.buckets()
    sms = num_sms(device) if device.type == "cuda" else 4
    lines = [f"gpu key {spec.gpu_key} ({spec.device_name}); storage {spec.storage_url}; split defaults "
             f"for {sms} SMs" + ("" if device.type == "cuda" else " (no GPU here: on the real GPU they follow its SMs)"),
             f"table {paths.table_path(spec.out, spec.gpu_key)}; sampler {spec.sampler} seed {spec.seed}; "
             f"{spec.n_trials or '-'} trials / {spec.timeout or '-'} s per bucket; {len(buckets)} buckets"]
    for i, b in enumerate(buckets, 1):
        space = OpSpace(b, num_sms=sms, fixed={k: v for k, v in spec.fixed.items() if k in _param_names(b, sms)})
        obj = "latency+quality" if b.multi_objective else "latency"
        lines.append(f"  [{i}] {study_name(spec.prefix, b)}: {space.size()} valid points, {obj}, "
                     f"defaults {space.default_points()}")
    return lines + [f"  note: {n}" for n in notes]


def _param_names(bucket: Bucket, sms: int) -> set[str]:
    return {p.name for p in OpSpace(bucket, num_sms=sms).params}


def _group_of(t, bucket: Bucket) -> tuple[int, int | None]:
    params = decode_params(t.params)
    ps = params.get("page_size", bucket.page_sizes[0])
    bud = params.get("budget", bucket.budgets[0]) if bucket.op in BUDGET_OPS else None
    return ps, bud


def _verify(runner: Runner, space: OpSpace, cands: list[dict], rounds: int) -> dict[tuple, float]:
    """Median latency of each point over ``rounds`` alternating re-measurements
    (points that fail now are left out). The low median: always one measured value,
    never the mean of two, so with two rounds one cold measurement cannot inflate a
    point (H100 runs/016: a default's 67 us cold round and 12 us warm round averaged
    to 39.5 us and made a 3.3x "gain")."""
    times: dict[tuple, list[float]] = {params_key(p): [] for p in cands}
    dead: set[tuple] = set()
    for _ in range(rounds):
        for p in cands:
            k = params_key(p)
            if k in dead:
                continue
            out = runner.evaluate(space.candidate(p))
            if out.ok:
                times[k].append(out.latency_us)
            else:
                dead.add(k)
    return {k: statistics.median_low(v) for k, v in times.items() if v and k not in dead}


def collect(study: optuna.Study, space: OpSpace, runner: Runner | None, spec: TuneSpec) -> list[GroupResult]:
    """Winner per (page size, budget): best few trials and the default, re-timed when
    ``runner`` is given, the faster of best and default kept."""
    bucket = space.bucket
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "latency_us" in t.user_attrs]
    out = []
    for ps in bucket.page_sizes:
        for bud in (bucket.budgets or (None,)):
            mine = sorted((t for t in trials if _group_of(t, bucket) == (ps, bud)), key=lambda t: t.user_attrs["latency_us"])
            if not mine:
                continue
            default = space.default_params(ps, bud)
            dkey = params_key(default)
            best_by_key: dict[tuple, Any] = {}
            for t in mine:
                best_by_key.setdefault(params_key(t.params), t)
            measured = {k: t.user_attrs["latency_us"] for k, t in best_by_key.items()}
            verified = False
            if runner is not None and spec.verify_rounds > 0:
                top = [decode_params(t.params) for t in list(best_by_key.values())[:spec.verify_top]]
                if dkey in best_by_key and dkey not in {params_key(p) for p in top}:
                    top.append(default)
                again = _verify(runner, space, top, spec.verify_rounds)
                if again:
                    measured, verified = again, True
            best_key = min((k for k in measured), key=lambda k: measured[k])
            t_best = best_by_key[best_key]
            cand = space.candidate(dict(best_key))
            dcfg = space.candidate(default).config.to_dict()
            out.append(GroupResult(ps, bud, bucket.entry_key(ps, bud), cand.config.to_dict(), measured[best_key], dcfg,
                                   measured.get(dkey), t_best.number, t_best.user_attrs.get("quality"), verified))
    return out


def pareto_points(study: optuna.Study) -> list[dict]:
    """The latency/quality Pareto front (Optuna's best_trials), one point per config."""
    pts, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: t.values[0]):
        k = params_key(t.params)
        if k in seen:
            continue
        seen.add(k)
        pts.append({"page_size": t.user_attrs["page_size"], "budget": t.user_attrs["budget"],
                    "latency_us": t.values[0], "quality": t.values[1], "config": t.user_attrs["config"],
                    "trial": t.number})
    return pts


@contextlib.contextmanager
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def tune(spec: TuneSpec, *, timer: Timer | None = None, quality_fn: QualityFn | None = None,
         observer: Observer | None = None, device: torch.device | None = None) -> TuneReport:
    """Run the sweep. ``timer(fn, info) -> us`` replaces real timing (tests);
    ``quality_fn(page_size, budget, gqa_mode)`` the quality objective (default: real
    traces when cached, else synthetic; see questkern.tuning.quality.default_quality_fn)."""
    from questkern.configs import runtime
    from questkern.tuning.quality import default_quality_fn

    device = device or default_device()
    observer = observer or Observer()
    quality_fn = quality_fn or default_quality_fn()
    timer = timer or default_timer(device, spec.rep_ms, spec.warmup_ms)
    preflight(spec)
    buckets, notes = spec.buckets()
    sms = num_sms(device)
    searched = set().union(*(_param_names(b, sms) for b in buckets)) if buckets else set()
    if set(spec.fixed) - searched:
        raise ValueError(f"fixed parameter(s) {sorted(set(spec.fixed) - searched)} are searched by none of the ops "
                         f"{', '.join(spec.ops)}; they search {sorted(searched)}")
    report = TuneReport(spec, notes=list(notes))
    for n in notes:
        observer.note(n)
    storage = make_storage(None if spec.storage == "inmemory" else spec.storage_url)
    pool = WorkloadPool(device, seed=spec.seed)
    deadline = time.monotonic() + spec.max_time if spec.max_time else None
    overheads: list[float] = []  # seconds per finished bucket outside its trials (inputs, verification)
    table_written = False
    with _quiet_optuna():
        for i, bucket in enumerate(buckets, 1):
            name = study_name(spec.prefix, bucket)
            timeout = spec.timeout
            if deadline is not None:  # share the time left over the buckets left, minus their overhead
                left = deadline - time.monotonic()
                if left <= 0:
                    report.buckets.append(BucketResult(bucket, name, error="skipped: --max-time used up"))
                    continue
                share = left / (len(buckets) - i + 1) - (statistics.mean(overheads) if overheads else 0.0)
                timeout = max(1.0, min(timeout, share) if timeout else share)
            result = BucketResult(bucket, name)
            t0 = time.monotonic()
            try:
                space = OpSpace(bucket, num_sms=sms,
                                fixed={k: v for k, v in spec.fixed.items() if k in _param_names(bucket, sms)})
                sampler = make_sampler(spec.sampler, spec.seed, space, name)
                study = open_study(storage, name, bucket, space, sampler,
                                   {"gpu_key": spec.gpu_key, "device_name": spec.device_name,
                                    "versions": current_versions()})
                runner = Runner(bucket, pool, timer)
                for ps in bucket.page_sizes:  # build inputs (and surface OOM) before the first trial
                    runner.prepare(ps)
                observer.bucket_started(i, len(buckets), name, space.size(), spec.n_trials, timeout)
                t_opt = time.monotonic()
                run_study(study, make_objective(space, runner.evaluate, quality_fn), n_trials=spec.n_trials,
                          timeout=timeout, space_size=space.size(),
                          callbacks=[lambda s, t: observer.trial_done(s, t)])
                t_opt = time.monotonic() - t_opt
                trials = study.get_trials(deepcopy=False)
                result.n_evaluated = sum(evaluated(t) for t in trials)
                result.n_distinct = len({params_key(t.params) for t in trials if evaluated(t)})
                result.n_failed = sum(t.state == TrialState.FAIL for t in trials)
                result.n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
                result.groups = collect(study, space, runner, spec)
                if not result.groups:
                    reasons = [t.user_attrs["fail_reason"] for t in trials if "fail_reason" in t.user_attrs]
                    result.error = "no trial passed the reference check" + (f" (e.g. {reasons[0]})" if reasons else "")
                if bucket.multi_objective and result.groups:
                    result.pareto = pareto_points(study)
            except (KeyboardInterrupt, SystemExit):
                raise
            except torch.OutOfMemoryError as exc:
                result.error = f"out of memory building the inputs: {str(exc).splitlines()[0]}"
                pool.clear()
            except ValueError as exc:  # a study made for another bucket/space, bad --fix, ...
                result.error = str(exc)
            result.seconds = time.monotonic() - t0
            if result.groups:
                overheads.append(max(0.0, result.seconds - t_opt))
            report.buckets.append(result)
            if result.groups:
                merged = write_table(spec.out, spec.gpu_key, spec.device_name, bucket_entries(result), force=spec.force)
                for a in merged.actions:
                    if a.action == "kept-existing":
                        observer.note(f"    kept the existing faster entry for {a.key.describe()} "
                                      f"({a.old_latency_us:.2f} us <= {a.new_latency_us:.2f} us; --force replaces it)")
                table_written = True
                if result.pareto:
                    p = write_pareto(spec.out, spec.gpu_key, [pareto_front(result, quality_fn)])
                    if p not in report.written:
                        report.written.append(p)
                runtime.clear_cache()  # the next lookup sees the new entries
            observer.bucket_done(result)
    pool.clear()
    if table_written:
        report.written.insert(0, paths.table_path(spec.out, spec.gpu_key))
    observer.run_done(report)
    return report


def bucket_entries(result: BucketResult) -> list[dict]:
    """The table entries of a finished bucket (one per page size and budget)."""
    b = result.bucket
    return [make_entry(g.key, g.config, g.latency_us, g.default_latency_us, trials=result.n_evaluated,
                       default_config=g.default_config, seq_len=b.seq_len, batch=b.batch, num_q_heads=b.num_q_heads,
                       num_kv_heads=b.num_kv_heads, study=result.study_name) for g in result.groups]


def pareto_front(result: BucketResult, quality_fn) -> dict:
    """The Pareto-file record of a multi-objective bucket."""
    return {"study": result.study_name, "bucket": result.bucket.to_dict(), "objectives": ["latency_us", "quality"],
            "quality_fn": getattr(quality_fn, "__qualname__", repr(quality_fn)), "points": result.pareto}


def write_summary(report: TuneReport, path: Path) -> None:
    """The run's results as JSON (what was tuned, winners, speedups, geometric mean)."""
    atomic_write_json(Path(path), report.to_dict())

"""Distributed tuning: one worker process per GPU, on one host or many, all on the same
Optuna studies; this module is the launcher behind ``questkern tune --devices``.

    questkern tune --gpu h100 --seq 8k,32k --devices 0,1,2,3                         # one node
    questkern tune --gpu h100 --seq 8k,32k --devices all --storage postgresql://tuner@db/qk   # on every node

The launcher checks the storage (:mod:`questkern.tuning.storage`), starts one worker
(:mod:`questkern.tuning.worker`) per listed GPU with ``CUDA_VISIBLE_DEVICES`` set to it,
all in one process group of their own, forwards their output prefixed with their
label, and every ``--progress-every`` seconds prints the state of the whole study
read from the storage: trials evaluated / failed / running per worker (of every
host) and the best latency so far per bucket. When its workers have finished it
builds the lookup table from the whole study, once, and merges it into ``--out``
atomically (an existing faster entry is kept unless ``--force``). Ctrl-C (SIGINT or
SIGTERM) is forwarded to the workers' process group once; they record their running
trial as interrupted and exit, and rerunning the same command resumes. A second
Ctrl-C sends SIGTERM, a third SIGKILL.

There is no coordinator besides the storage, so another host joins by running the same
command against the same PostgreSQL URL, and ``optuna-dashboard URL`` shows the same
studies live. ``--trials N`` is exact for the whole study (all workers together);
``--timeout`` is each worker's time per bucket and ``--max-time`` each worker's time
for the run. :func:`compare_summaries` checks a multi-GPU run against a one-GPU run
(``python -m questkern.tuning.distributed compare``, used by
``scripts/gpu/tune_multi_gpu.sh``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.trial import TrialState

from questkern._details import default_device
from questkern.tuning.observer import ConsoleObserver, format_config
from questkern.tuning.space import OpSpace, params_key
from questkern.tuning.storage import StorageError, absolute_sqlite, check_url, driver_url, open_storage, redact
from questkern.tuning.strategy import evaluated, study_name
from questkern.configs.table import atomic_write_json, now_iso, write_pareto, write_table
from questkern.tuning.tuner import (BucketResult, TuneReport, TuneSpec, _param_names, _quiet_optuna, bucket_entries,
                                    collect, pareto_front, pareto_points, preflight)
from questkern.tuning.worker import (ENV_JOB, EXIT_STORAGE_LOST, Backoff, StorageLost, WorkerJob, group_from_dict,
                                     spec_to_dict)

QUIET_PROGRESS_S = 60.0  # with nothing new, a progress line at most this often
STOP_GRACE_S = 60.0  # after Ctrl-C, workers get this long to record their trial before SIGKILL
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding questkern/ (workers import the same code)


# ----------------------------------------------------------------------------- devices


def parse_devices(text: str) -> list[int] | str:
    """'0,1,3' -> [0, 1, 3]; 'all' -> 'all' (every visible GPU)."""
    t = text.strip().lower()
    if t == "all":
        return "all"
    parts = [p.strip() for p in t.split(",") if p.strip()]
    try:
        devs = [int(p) for p in parts]
    except ValueError:
        devs = []
    if not devs or any(d < 0 for d in devs):
        raise argparse.ArgumentTypeError(f"expected 'all' or GPU indices like 0,1,2,3, got {text!r}")
    if len(set(devs)) != len(devs):
        raise argparse.ArgumentTypeError(f"GPU indices must not repeat, got {text!r}")
    return devs


@dataclass
class Slot:
    """One local worker: its GPU and how it is named."""

    index: int  # position in --devices
    device: int  # the --devices entry (an index among this process's visible GPUs)
    visible: str  # CUDA_VISIBLE_DEVICES of the worker ("" on the CPU interpreter)
    label: str  # "<host>:cuda<device>", recorded on every trial the worker runs
    name: str  # device name as torch reports it


def resolve_devices(devices: list[int] | str) -> list[Slot]:
    """Check ``--devices`` against this host's GPUs (all must be the same model: one
    table per GPU model) and map them through the parent's ``CUDA_VISIBLE_DEVICES``.
    Without CUDA, the entries only number interpreter workers on the CPU."""
    import torch

    host = socket.gethostname().split(".")[0]
    if not torch.cuda.is_available():
        if devices == "all":
            raise ValueError("--devices all: there is no CUDA device here; on the CPU interpreter give worker "
                             "numbers, e.g. --devices 0,1")
        from questkern.configs.gpus import CPU_KEY

        return [Slot(i, d, "", f"{host}:cpu{d}", CPU_KEY) for i, d in enumerate(cast(list[int], devices))]
    n = torch.cuda.device_count()
    devs = list(range(n)) if devices == "all" else cast(list[int], devices)[:]
    bad = [d for d in devs if d >= n]
    if bad:
        raise ValueError(f"--devices: this process sees {n} GPU(s) (0..{n - 1}), there is no GPU {bad[0]}")
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in parent.split(",")] if parent else None
    slots = [Slot(i, d, ids[d] if ids and d < len(ids) else str(d), f"{host}:cuda{d}", torch.cuda.get_device_name(d))
             for i, d in enumerate(devs)]
    names = sorted({s.name for s in slots})
    if len(names) > 1:
        raise ValueError(f"--devices: the listed GPUs are different models ({', '.join(names)}); a run tunes one "
                         "model (one table): run once per model with its own --devices")
    return slots


# ----------------------------------------------------------------------------- progress


@dataclass
class BucketProgress:
    name: str
    started: bool = False
    evaluated: int = 0
    failed: int = 0
    running: int = 0
    best_us: float | None = None
    finished: bool = False  # winners re-timed and stored by a worker

    def line(self, prefix: str, target: int | None) -> str:
        short = self.name[len(prefix) + 1:] if self.name.startswith(prefix + ":") else self.name
        best = f"best {self.best_us:.2f} us" if self.best_us is not None else "best -"
        state = "finished" if self.finished else f"{self.running} running" if self.started else "not started"
        return f"  {short}: {self.evaluated}/{target or '-'} trials, {self.failed} failed, {best}, {state}"


@dataclass
class WorkerProgress:
    done: int = 0  # evaluated trials (complete, or failed by the check)
    failed: int = 0  # of which failed the check / compile
    lost: int = 0  # interrupted or died mid-trial (retried)
    running: int = 0


class Progress:
    """The whole study as the storage sees it (every worker of every host)."""

    def __init__(self, storage, names: list[str], prefix: str, target: int | None):
        self.storage, self.names, self.prefix, self.target = storage, names, prefix, target
        self.studies: dict[str, optuna.Study] = {}
        self.buckets: dict[str, BucketProgress] = {n: BucketProgress(n) for n in names}
        self.workers: dict[str, WorkerProgress] = {}
        self._shown: dict[str, tuple] = {}
        self.last_headline = 0.0

    def poll(self) -> None:
        existing = set(optuna.study.get_all_study_names(self.storage))
        workers: dict[str, WorkerProgress] = {}
        for name in self.names:
            if name not in existing:
                continue
            if name not in self.studies:
                self.studies[name] = optuna.load_study(study_name=name, storage=self.storage,
                                                       sampler=optuna.samplers.RandomSampler())
            study = self.studies[name]
            trials = study.get_trials(deepcopy=False)
            ev = [t for t in trials if evaluated(t)]
            lat = [t.user_attrs["latency_us"] for t in trials
                   if t.state == TrialState.COMPLETE and "latency_us" in t.user_attrs]
            v = study.user_attrs.get("verified") or {}
            self.buckets[name] = BucketProgress(
                name, True, len(ev), sum(t.state == TrialState.FAIL for t in ev),
                sum(t.state == TrialState.RUNNING for t in trials), min(lat) if lat else None,
                v.get("n_evaluated") == len(ev) and len(ev) > 0)
            for t in trials:
                who = t.user_attrs.get("worker")
                if who is None:
                    continue
                wp = workers.setdefault(who, WorkerProgress())
                if evaluated(t):
                    wp.done += 1
                    wp.failed += t.state == TrialState.FAIL
                elif t.state == TrialState.FAIL:
                    wp.lost += 1
                elif t.state == TrialState.RUNNING:
                    wp.running += 1
        self.workers = workers

    def headline(self, elapsed: float) -> str:
        bs = list(self.buckets.values())
        ev, fails, run = sum(b.evaluated for b in bs), sum(b.failed for b in bs), sum(b.running for b in bs)
        total = self.target * len(bs) if self.target else "-"
        mins, secs = divmod(int(elapsed), 60)
        who = " | ".join(f"{k} {w.done} done ({w.failed} failed{f', {w.lost} lost' if w.lost else ''})"
                         for k, w in sorted(self.workers.items()))
        return (f"progress {mins}:{secs:02d}  trials {ev}/{total} ({fails} failed, {run} running), buckets "
                f"{sum(b.finished for b in bs)}/{len(bs)} finished" + (f"  | {who}" if who else ""))

    def changed(self) -> list[str]:
        """Lines of the buckets whose count, best or state changed since the last call."""
        out = []
        for name, b in self.buckets.items():
            key = (b.evaluated, b.best_us, b.finished, b.started)
            if b.started and self._shown.get(name) != key:
                self._shown[name] = key
                out.append(b.line(self.prefix, self.target))
        return out


# ----------------------------------------------------------------------------- the table


def build_report(spec: TuneSpec, storage, sms: int, *, finished_only: bool = False) -> TuneReport:
    """Winners of every bucket from the whole study (the ``verified`` records the
    workers stored; the trials' own latencies where a bucket was not re-timed), merged
    into the table with one atomic write. ``finished_only``: skip unverified buckets
    (after Ctrl-C, as ``questkern tune`` writes only finished buckets)."""
    from questkern.tuning.quality import default_quality_fn

    quality_fn = default_quality_fn()  # what the workers used in this environment (for the record)

    buckets, notes = spec.buckets()
    report = TuneReport(spec, notes=list(notes))
    existing = set(optuna.study.get_all_study_names(storage))
    fronts = []
    for bucket in buckets:
        name = study_name(spec.prefix, bucket)
        res = BucketResult(bucket, name)
        report.buckets.append(res)
        if name not in existing:
            res.error = "not started"
            continue
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        trials = study.get_trials(deepcopy=False)
        ev = [t for t in trials if evaluated(t)]
        res.n_evaluated = len(ev)
        res.n_distinct = len({params_key(t.params) for t in ev})
        res.n_failed = sum(t.state == TrialState.FAIL for t in trials)
        res.n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
        starts = [t.datetime_start for t in ev if t.datetime_start]
        ends = [t.datetime_complete for t in ev if t.datetime_complete]
        res.seconds = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        v = study.user_attrs.get("verified") or {}
        if v.get("n_evaluated") == len(ev) and ev:
            res.groups = [group_from_dict(bucket, g) for g in v["groups"]]
        elif not finished_only:
            names = _param_names(bucket, sms)
            space = OpSpace(bucket, num_sms=sms, fixed={k: x for k, x in spec.fixed.items() if k in names})
            res.groups = collect(study, space, None, spec)
            if res.groups:
                report.notes.append(f"{name}: winners from the trials' own timings (not re-timed: no worker finished "
                                    "the bucket)")
        else:
            res.error = "not finished (rerun the same command to resume)"
            continue
        if not res.groups:
            reasons = [t.user_attrs["fail_reason"] for t in trials if "fail_reason" in t.user_attrs]
            res.error = ("no trial passed the reference check" + (f" (e.g. {reasons[0]})" if reasons else "")
                         if ev else "no evaluated trial")
        elif bucket.multi_objective:
            res.pareto = pareto_points(study)
            fronts.append(pareto_front(res, quality_fn))
    entries = [e for r in report.buckets if r.groups for e in bucket_entries(r)]
    if entries:
        merged = write_table(spec.out, spec.gpu_key, spec.device_name, entries, force=spec.force)
        report.written.append(merged.path)
        for a in merged.actions:
            if a.action == "kept-existing":
                report.notes.append(f"kept the existing faster entry for {a.key.describe()} ({a.old_latency_us:.2f} us "
                                    f"<= {a.new_latency_us:.2f} us; --force replaces it)")
    if fronts:
        report.written.append(write_pareto(spec.out, spec.gpu_key, fronts))
    return report


# ----------------------------------------------------------------------------- the launcher


@dataclass
class LaunchOptions:
    """The launcher's flags (``questkern tune --heartbeat/--grace/--storage-retry/
    --progress-every/--log-dir/--summary``)."""

    heartbeat_s: int = 30
    grace_s: int = 120
    storage_retry_s: float = 120.0
    progress_s: float = 10.0
    log_dir: Path | None = None
    summary: Path | None = None


@dataclass
class _Proc:
    """A local worker process, the thread forwarding its output, and its exit code."""

    slot: Slot
    popen: subprocess.Popen
    thread: threading.Thread | None = None
    code: int | None = None
    log: Any = None


def _spawn(slot: Slot, job: WorkerJob, pgid: int | None, log_dir: Path | None, say) -> _Proc:
    """Start one worker (``python -m questkern.tuning.worker``) pinned to ``slot``'s GPU,
    in process group ``pgid`` (a new one when None), its output forwarded to ``say``."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=slot.visible, PYTHONUNBUFFERED="1")
    env[ENV_JOB] = job.to_env()  # in the environment, not argv: the storage URL may hold a password
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    popen = subprocess.Popen([sys.executable, "-m", "questkern.tuning.worker"], env=env, text=True, bufsize=1,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             process_group=pgid or 0)
    proc = _Proc(slot, popen)
    if log_dir is not None:
        proc.log = open(Path(log_dir) / f"worker-{slot.label.replace(':', '-')}.log", "a")

    def forward() -> None:
        for line in popen.stdout:
            line = line.rstrip("\n")
            if proc.log is not None:
                proc.log.write(line + "\n")
                proc.log.flush()
            say(f"[{slot.label}] {line}")

    proc.thread = threading.Thread(target=forward, daemon=True)
    proc.thread.start()
    return proc


def _describe_exit(code: int, grace_s: int) -> str:
    if code == 0:
        return "finished"
    if code == EXIT_STORAGE_LOST:
        return "exited: lost the study storage (see its message above)"
    if code == 130:
        return "stopped (interrupted)"
    if code == 2:
        return "refused to start (see its message above)"
    if code < 0:
        return (f"died (signal {-code}); its running trial fails once its heartbeat is {grace_s} s old and another "
                "worker retries it")
    return f"failed (exit code {code}; see its output above)"


def launch(spec: TuneSpec, slots: list[Slot], opts: LaunchOptions, stream=None) -> int:
    """Run the sweep on ``slots`` (one worker process each); returns the exit code:
    0 every bucket has its winners, 1 some bucket has none, 2 bad setup, 3 storage
    lost, 130 interrupted."""
    stream = stream or sys.stdout
    say_lock = threading.RLock()  # re-entrant: the Ctrl-C handler may print while the main thread prints

    def say(msg: str = "") -> None:
        with say_lock:
            print(msg, file=stream, flush=True)

    t_start = time.monotonic()
    spec.storage = absolute_sqlite(spec.storage_url)  # the workers may run elsewhere: no relative paths
    url = spec.storage
    try:
        check_url(url, distributed=True)
        storage = open_storage(url, heartbeat_s=opts.heartbeat_s, grace_s=opts.grace_s)
    except StorageError as exc:
        print(f"questkern tune: error: {exc}", file=sys.stderr, flush=True)
        return 2
    preflight(spec)
    buckets, _ = spec.buckets()
    names = [study_name(spec.prefix, b) for b in buckets]
    run_id = f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{int(time.time())}"
    say(f"distributed tuning: {len(slots)} worker(s) on this host ({', '.join(s.label for s in slots)}), "
        f"{len(buckets)} buckets, storage {redact(url)}")
    say(f"  other hosts join with the same command and the same --storage (PostgreSQL); watch it live with: "
        f"optuna-dashboard '{redact(driver_url(url))}'")
    if opts.log_dir is not None:
        Path(opts.log_dir).mkdir(parents=True, exist_ok=True)

    procs: list[_Proc] = []
    pgid: int | None = None
    stopping: dict = {"n": 0, "t": None}

    def on_signal(signum, frame) -> None:  # Ctrl-C: SIGINT to the workers, then SIGTERM, then SIGKILL
        stopping["n"] += 1
        stopping["t"] = stopping["t"] or time.monotonic()
        sig = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[min(stopping["n"], 3) - 1]
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        say(f"\nstopping the workers ({signal.Signals(sig).name}); again to force")

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        for slot in slots:
            job = WorkerJob(spec_to_dict(spec), index=slot.index, of=len(slots), label=slot.label, run_id=run_id,
                            heartbeat_s=opts.heartbeat_s, grace_s=opts.grace_s, storage_retry_s=opts.storage_retry_s,
                            prepared=True)
            procs.append(_spawn(slot, job, pgid, opts.log_dir, say))
            pgid = pgid or procs[0].popen.pid  # all workers in the first one's process group
        progress = Progress(storage, names, spec.prefix, spec.n_trials)
        next_progress = time.monotonic() + opts.progress_s
        storage_down = False
        while True:
            for p in procs:
                if p.code is None and p.popen.poll() is not None:
                    p.code = p.popen.returncode
                    say(f"worker {p.slot.label} {_describe_exit(p.code, opts.grace_s)}")
            if all(p.code is not None for p in procs):
                break
            now = time.monotonic()
            if stopping["t"] is not None and now - stopping["t"] > STOP_GRACE_S and pgid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            if now >= next_progress:
                next_progress = now + opts.progress_s
                storage_down = _show_progress(progress, say, now - t_start, storage_down)
            time.sleep(0.2)
        for p in procs:
            p.thread.join(timeout=5)
            if p.log is not None:
                p.log.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)

    interrupted = stopping["n"] > 0
    codes = [p.code for p in procs]
    with _quiet_optuna():
        progress.last_headline = 0.0  # the final state, always shown
        _show_progress(progress, say, time.monotonic() - t_start, False)
        try:
            report = Backoff(opts.storage_retry_s, redact(url), lambda m: say(f"building the table: {m}")).call(
                lambda: build_report(spec, storage, _sms(), finished_only=interrupted))
        except StorageLost as exc:
            print(f"questkern tune: error: {exc}; the studies are intact: rerun the same command to finish",
                  file=sys.stderr, flush=True)
            return EXIT_STORAGE_LOST
    wall = time.monotonic() - t_start
    ConsoleObserver(stream=stream, live=False).run_done(report)
    for n in report.notes:
        say(f"note: {n}")
    if opts.summary is not None:
        doc = report.to_dict()
        doc["spec"]["storage"] = redact(url)
        doc["distributed"] = {"run_id": run_id, "wall_s": round(wall, 2), "storage": redact(url),
                              "workers": [{"label": p.slot.label, "device": p.slot.device, "name": p.slot.name,
                                           "exit_code": p.code,
                                           **vars(progress.workers.get(p.slot.label, WorkerProgress()))}
                                          for p in procs]}
        atomic_write_json(Path(opts.summary), doc)
        say(f"wrote {opts.summary}")
    say(f"distributed run: {wall:.1f} s wall, workers exited with {codes}")
    if interrupted:
        say("interrupted: finished buckets are in the table; rerun the same command to resume the studies")
        return 130
    if all(c == 2 for c in codes):
        return 2
    if any(b.error for b in report.buckets):
        return EXIT_STORAGE_LOST if EXIT_STORAGE_LOST in codes else 1
    return 0


def _show_progress(progress: Progress, say, elapsed: float, was_down: bool) -> bool:
    """Print the study's progress; returns whether the storage is unreachable."""
    from questkern.tuning.storage import storage_errors

    try:
        progress.poll()
    except storage_errors() as exc:
        if not was_down:
            say(f"progress: the storage is unreachable ({str(exc).splitlines()[0][:160]}); the workers retry")
        return True
    lines = progress.changed()
    head = progress.headline(elapsed)
    if lines or was_down or time.monotonic() - progress.last_headline >= QUIET_PROGRESS_S:
        progress.last_headline = time.monotonic()
        say(head)
        for line in lines:
            say(line)
    return False


def _sms() -> int:
    """SM count of this host's GPU (the split defaults of the spaces depend on it)."""
    from questkern.tuning.tuner import num_sms

    return num_sms(default_device())


# ----------------------------------------------------------------------------- multi-GPU vs one GPU


def compare_summaries(a: dict, b: dict, *, tolerance: float = 0.03, retimed: dict | None = None) -> dict:
    """Bucket-by-bucket agreement of two run summaries (``--summary`` JSON) of the same sweep.

    For every (bucket, page size, budget) in both: the two winners' configs and
    latencies; ``agree`` when the configs are the same or the latencies are within
    ``tolerance`` (relative), or, when ``retimed[key] = (us_a, us_b)`` gives both winners
    re-timed back to back on one GPU, when those are within ``tolerance``.
    """
    def groups(doc):
        out = {}
        for bk in doc["buckets"]:
            for g in bk["groups"]:
                out[(bk["study"].split(":", 1)[1], g["page_size"], g["budget"])] = (g, bk["n_evaluated"])
        return out

    ga, gb = groups(a), groups(b)
    rows = []
    for key in sorted(set(ga) & set(gb), key=str):
        (x, nx), (y, ny) = ga[key], gb[key]
        same = x["config"] == y["config"]
        rel = abs(x["latency_us"] - y["latency_us"]) / min(x["latency_us"], y["latency_us"])
        row = {"bucket": key[0], "page_size": key[1], "budget": key[2], "trials_a": nx, "trials_b": ny,
               "config_a": x["config"], "config_b": y["config"], "same_config": same,
               "latency_us_a": x["latency_us"], "latency_us_b": y["latency_us"], "rel_diff": round(rel, 4)}
        rk = "|".join(map(str, key))
        if retimed and rk in retimed:
            ra, rb = retimed[rk]
            row["retimed_us_a"], row["retimed_us_b"] = ra, rb
            row["retimed_rel_diff"] = round(abs(ra - rb) / min(ra, rb), 4)
        row["agree"] = same or rel <= tolerance or row.get("retimed_rel_diff", math.inf) <= tolerance
        rows.append(row)
    missing = sorted(map(str, set(ga) ^ set(gb)))
    wall_a = (a.get("distributed") or {}).get("wall_s")
    wall_b = (b.get("distributed") or {}).get("wall_s")
    return {"tolerance": tolerance, "rows": rows, "missing": missing, "agree": all(r["agree"] for r in rows)
            and not missing, "same_config": sum(r["same_config"] for r in rows), "entries": len(rows),
            "wall_s_a": wall_a, "wall_s_b": wall_b,
            "speedup_b_over_a": round(wall_a / wall_b, 3) if wall_a and wall_b else None}


def retime_differing(a: dict, b: dict, rounds: int = 5, rep_ms: int = 40, warmup_ms: int = 10) -> dict:
    """Re-time both winners of every entry whose configs differ, alternately on this
    GPU (median of ``rounds``): {"bucket|page|budget": (us_a, us_b)}."""
    import statistics

    from questkern import config as C
    from questkern.tuning.runner import Runner, WorkloadPool, default_timer
    from questkern.tuning.space import Bucket, Candidate

    device = default_device()
    pool, timer = WorkloadPool(device), default_timer(device, rep_ms, warmup_ms)
    out = {}
    for bk_a in a["buckets"]:
        bk_b = next((x for x in b["buckets"] if x["study"].split(":", 1)[1] == bk_a["study"].split(":", 1)[1]), None)
        if bk_b is None:
            continue
        bucket = Bucket.from_dict(bk_a["bucket"])
        runner = Runner(bucket, pool, timer)
        for g in bk_a["groups"]:
            h = next((x for x in bk_b["groups"] if (x["page_size"], x["budget"]) == (g["page_size"], g["budget"])), None)
            if h is None or h["config"] == g["config"]:
                continue
            make = C.CONFIG_TYPES[bucket.op]
            cands = [Candidate(make(**c["config"]), g["page_size"], g["budget"], {}) for c in (g, h)]
            times: list[list[float]] = [[], []]
            for _ in range(rounds):
                for i, cand in enumerate(cands):
                    res = runner.evaluate(cand)
                    if res.ok:
                        times[i].append(res.latency_us)
            if times[0] and times[1]:
                key = "|".join(map(str, (bk_a["study"].split(":", 1)[1], g["page_size"], g["budget"])))
                out[key] = (statistics.median(times[0]), statistics.median(times[1]))
    return out


def compare_lines(res: dict) -> list[str]:
    lines = [f"{'bucket':<62} {'a_us':>9} {'b_us':>9} {'diff':>7}  verdict"]
    for r in res["rows"]:
        verdict = ("same config" if r["same_config"] else
                   f"other config, retimed diff {r['retimed_rel_diff']:.1%}" if "retimed_rel_diff" in r else
                   "other config")
        verdict += "" if r["agree"] else f"  DISAGREE (> {res['tolerance']:.0%})"
        name = f"{r['bucket']} p{r['page_size']}" + (f" k{r['budget']}" if r["budget"] else "")
        lines.append(f"{name:<62} {r['latency_us_a']:>9.2f} {r['latency_us_b']:>9.2f} {r['rel_diff']:>7.1%}  {verdict}")
        if not r["same_config"]:
            lines.append(f"    a: {format_config(r['config_a'])}\n    b: {format_config(r['config_b'])}")
    if res["missing"]:
        lines.append(f"entries in only one run: {', '.join(res['missing'])}")
    lines.append(f"{res['same_config']}/{res['entries']} entries with the same winner; "
                 f"{'all agree' if res['agree'] else 'NOT all agree'} within {res['tolerance']:.0%}")
    if res["speedup_b_over_a"]:
        lines.append(f"wall time: a {res['wall_s_a']:.1f} s, b {res['wall_s_b']:.1f} s -> "
                     f"{res['speedup_b_over_a']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m questkern.tuning.distributed compare A.json B.json [--retime] [--out R.json]``."""
    p = argparse.ArgumentParser(prog="python -m questkern.tuning.distributed", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare two --summary files of the same sweep (e.g. 1 GPU vs 2 GPUs)")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--tolerance", type=float, default=0.03, help="relative latency difference counted as noise")
    c.add_argument("--retime", action="store_true", help="re-time differing winners back to back on this GPU")
    c.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    args = p.parse_args(argv)
    from questkern.configs.table import read_json

    a, b = read_json(args.a), read_json(args.b)
    retimed = None
    if args.retime:
        from questkern._details import select_backend

        select_backend()
        retimed = retime_differing(a, b)
    res = compare_summaries(a, b, tolerance=args.tolerance, retimed=retimed)
    res.update(a=str(args.a), b=str(args.b), date=now_iso())
    for line in compare_lines(res):
        print(line)
    if args.out:
        atomic_write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0 if res["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())

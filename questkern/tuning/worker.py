"""One tuning worker: a process pinned to one GPU that runs trials of the shared studies.

The launcher (:mod:`questkern.tuning.distributed`) starts one worker per ``--devices``
entry with ``CUDA_VISIBLE_DEVICES`` set to that GPU and the job in the environment
(``python -m questkern.tuning.worker``). Workers on every host share the studies
through the Optuna storage only; there is no coordinator:

* **Buckets.** Each worker walks all buckets, starting at its own offset (worker ``i``
  of ``n`` at bucket ``i * len / n``), so workers mostly tune different buckets and meet
  on the last ones, where they share trials.
* **Trials.** Under the study lock (:mod:`questkern.tuning.storage`) a worker fails
  stale trials (heartbeats), counts ``evaluated + running`` against ``--trials`` and, if
  there is room, asks Optuna for a trial, samples its point (TPE with
  ``constant_liar`` so running trials steer the sampler away) and claims it (user
  attribute ``evaluating``). A point already evaluated is copied, not re-run; a point
  another worker is evaluating is waited for, then copied. So the study holds exactly
  ``--trials`` evaluated trials and no point is evaluated twice.
* **Verification.** When no trial of a bucket is running and none may start, the first
  worker to claim it (study user attribute ``verify_claim``) re-times the best configs
  and the default back to back on its GPU (as ``questkern tune`` does) and stores the
  winners in the study (``verified``); the others wait for that record (a claim whose
  process died is taken over). Every host's launcher builds its table from those.
* **Faults.** Optuna heartbeats: a worker that dies mid-trial leaves a running trial
  that, ``--grace`` seconds after its last heartbeat, any worker marks failed and
  re-enqueues (:func:`~questkern.tuning.storage.retry_stale_trial`). A storage error
  is retried with exponential back-off for ``--storage-retry`` seconds, then the
  worker exits with code 3 and says why. SIGINT/SIGTERM stop it cleanly: a signal
  interrupts a kernel run or a wait at once but never a storage write (it then stops
  at the next safe point), and the running trial is recorded as interrupted (failed
  without a ``fail_reason``), so it runs again on resume.

Testing hook: ``QUESTKERN_TEST_TIMER`` (see :func:`fake_timer_from_env`) replaces GPU
timing by made-up latencies, for the CPU tests of the whole multi-process pipeline.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from questkern._details import default_device
from questkern.tuning.runner import FatalDeviceError, Runner, Timer, WorkloadPool, default_timer
from questkern.tuning.space import Bucket, OpSpace, params_key
from questkern.tuning.storage import StudyLock, open_storage, redact, storage_errors, study_lock
from questkern.tuning.strategy import (StopWhen, evaluated, find_duplicate, make_objective, make_sampler, open_study,
                                       study_name)
from questkern.configs.table import now_iso
from questkern.tuning.tuner import GroupResult, TuneSpec, _param_names, _quiet_optuna, collect, num_sms

ENV_JOB = "QUESTKERN_WORKER_JOB"
ENV_TEST_TIMER = "QUESTKERN_TEST_TIMER"
EXIT_STORAGE_LOST = 3
VERIFY_STALE_S = 600.0  # a verification claim of another run older than this is taken over
WAIT_POLL_S = 0.2


@dataclass
class WorkerJob:
    """What a worker process is told by its launcher (JSON in ``$QUESTKERN_WORKER_JOB``)."""

    spec: dict  # spec_to_dict(TuneSpec)
    index: int = 0  # position in this host's --devices list (picks the first bucket)
    of: int = 1  # workers on this host
    label: str = ""  # "<host>:cuda<N>": recorded on every trial it runs (user attribute "worker")
    run_id: str = ""  # the launcher's run (recorded with verification claims)
    heartbeat_s: int = 30
    grace_s: int = 120
    storage_retry_s: float = 120.0
    poll_s: float = 1.0
    prepared: bool = False  # the launcher created the storage's tables and checked their version

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "WorkerJob":
        return cls(**json.loads(text))


def spec_to_dict(spec: TuneSpec) -> dict:
    d = asdict(spec)
    d["out_dir"] = None if spec.out_dir is None else str(spec.out_dir)
    return d


def spec_from_dict(d: dict) -> TuneSpec:
    d = dict(d)
    for k in ("seqs", "batches", "head_dims", "dtypes", "page_sizes", "budgets", "ops"):
        d[k] = tuple(d[k])
    d["heads"] = tuple(tuple(h) for h in d["heads"])
    d["out_dir"] = None if d["out_dir"] is None else Path(d["out_dir"])
    return TuneSpec(**d)


# ----------------------------------------------------------------------------- test timer


def fake_latency(config) -> float:
    """Deterministic made-up latency of a kernel config (test timer)."""
    vals = [v if isinstance(v, int) else len(str(v)) for v in config.to_dict().values()]
    return 10.0 + sum((i + 1) * (v % 7) for i, v in enumerate(vals))


def fake_timer_from_env(label: str) -> Timer | None:
    """Timer from ``$QUESTKERN_TEST_TIMER`` (tests only: the latencies are made up).

    The value is JSON: ``{"sleep_s": S, "log": PATH, "hang_once": TOKEN}``. Each timing
    appends one JSON line ``{"pid", "worker", "bucket", "trial", "params", "t"}`` to
    ``PATH``, then sleeps ``S`` seconds and returns :func:`fake_latency` of the config.
    With ``hang_once``, the one timing (of all workers) that creates the file ``TOKEN``
    first sleeps for an hour instead, so that a test can kill that worker surely mid-trial.
    """
    text = os.environ.get(ENV_TEST_TIMER)
    if not text:
        return None
    opts = json.loads(text)
    sleep_s, log, token = float(opts.get("sleep_s", 0.0)), opts.get("log"), opts.get("hang_once")

    def timer(fn, info) -> float:
        if log:
            line = json.dumps({"pid": os.getpid(), "worker": label, "bucket": info.bucket.name(), "trial": info.trial,
                               "params": info.params, "t": time.time()})
            with open(log, "a") as f:  # one short O_APPEND write per line: lines never interleave
                f.write(line + "\n")
        if token and info.trial is not None:
            try:
                os.close(os.open(token, os.O_CREAT | os.O_EXCL))
                time.sleep(3600.0)
            except FileExistsError:
                pass
        time.sleep(sleep_s)
        return fake_latency(info.config)

    return timer


# ----------------------------------------------------------------------------- storage retries


class StorageLost(RuntimeError):
    """The storage stayed unreachable for the whole retry window."""


class Backoff:
    """Retry a unit of work on storage errors: waits 1, 2, 4, ... s (at most 30 s) until
    ``retry_s`` seconds have passed since the first failure, then raises StorageLost.
    A success resets the window."""

    def __init__(self, retry_s: float, what: str, log, sleep=time.sleep, clock=time.monotonic):
        self.retry_s, self.what, self.log, self.sleep, self.clock = retry_s, what, log, sleep, clock
        self.errors = storage_errors()

    def call(self, fn):
        first, delay = None, 1.0
        while True:
            try:
                return fn()
            except self.errors as exc:
                now = self.clock()
                first = first if first is not None else now
                reason = _short(exc)
                if now - first >= self.retry_s:
                    raise StorageLost(f"lost the study storage {self.what} and gave up after {self.retry_s:.0f} s of "
                                      f"retries: {reason}") from exc
                wait = min(delay, 30.0, max(0.05, self.retry_s - (now - first)))
                self.log(f"storage error ({reason}); retrying in {wait:.0f} s")
                self.sleep(wait)
                delay *= 2


def _short(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip() and not ln.startswith("(Background")]
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


# ----------------------------------------------------------------------------- one bucket

RUN, BUSY, QUIET = "run", "busy", "quiet"
FINISHED, WORKED, IDLE = "finished", "worked", "idle"


@dataclass
class BucketWork:
    """A worker's state for one bucket's study."""

    bucket: Bucket
    name: str
    space: OpSpace
    lock: StudyLock
    size: int = 0  # valid points of the space
    study: optuna.Study | None = None  # opened on the first visit
    runner: Runner | None = None
    spent: float = 0.0  # seconds of trials this worker ran here
    timeout: float | None = None  # this worker's time budget here (--timeout, or its share of --max-time)
    error: str | None = None


class Worker:
    """The loop of one worker process (see the module docstring); in-process for tests."""

    def __init__(self, job: WorkerJob, *, timer: Timer | None = None, quality_fn=None,
                 device: torch.device | None = None, log=None):
        from questkern.tuning.quality import default_quality_fn

        self.job = job
        self.spec = spec_from_dict(job.spec)
        self.url = self.spec.storage_url
        self.device = device or default_device()
        self.label = job.label or f"{socket.gethostname()}:{self.device.type}"
        self.log = log or (lambda msg: print(msg, flush=True))
        self.timer = timer or fake_timer_from_env(self.label) or default_timer(self.device, self.spec.rep_ms,
                                                                                self.spec.warmup_ms)
        self.quality_fn = quality_fn or default_quality_fn()
        self.backoff = Backoff(job.storage_retry_s, redact(self.url), self.log, sleep=self._sleep)
        self.pool = WorkloadPool(self.device, seed=self.spec.seed)
        self.sms = num_sms(self.device)
        self.storage = None
        self.trials_run = 0
        self.started: list[tuple[optuna.Study, int]] = []  # (study, trial number) this worker started
        self._stop = False  # a stop was requested (SIGINT/SIGTERM): honoured at the next safe point
        self._interruptible = False  # inside a kernel run/timing or a wait: a signal may interrupt at once
        self._ppid = os.getppid()

    # -- setup

    def _buckets(self) -> list[BucketWork]:
        buckets, _ = self.spec.buckets()
        works = []
        for b in buckets:
            names = _param_names(b, self.sms)
            space = OpSpace(b, num_sms=self.sms, fixed={k: v for k, v in self.spec.fixed.items() if k in names})
            name = study_name(self.spec.prefix, b)
            works.append(BucketWork(b, name, space, study_lock(self.url, name), space.size()))
        k = (self.job.index * len(works)) // max(1, self.job.of)
        return works[k:] + works[:k]

    def _open(self, w: BucketWork) -> None:
        seed = self.spec.seed + zlib.crc32(self.label.encode()) % 100_003  # workers propose different points
        sampler = make_sampler(self.spec.sampler, seed, w.space, w.name, constant_liar=True)
        from questkern.configs.table import current_versions

        with w.lock.section():  # one worker creates the study and enqueues the defaults
            w.study = open_study(self.storage, w.name, w.bucket, w.space, sampler,
                                 {"gpu_key": self.spec.gpu_key, "device_name": self.spec.device_name,
                                  "versions": current_versions()})
        w.runner = Runner(w.bucket, self.pool, self.timer)
        w.runner.evaluate = self._guarded(w.runner.evaluate)  # trials and verification alike

    # -- admission, duplicates

    def _room(self, w: BucketWork, mine_over: bool) -> str:
        """RUN if a trial may start now (``evaluated + running < --trials``, a point left
        unclaimed, this worker's time not over), else BUSY (trials running) or QUIET."""
        trials = w.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        ev = [t for t in trials if evaluated(t)]
        n, size = self.spec.n_trials, w.size
        claimed = {params_key(t.params) for t in ev}
        claimed |= {params_key(t.params) for t in running if "evaluating" in t.user_attrs}
        if (not mine_over and not StopWhen(n, size).done(w.study) and (n is None or len(ev) + len(running) < n)
                and len(claimed) < size):
            return RUN
        return BUSY if running else QUIET

    def _admit(self, w: BucketWork, mine_over: bool) -> str:
        """RUN (the lock is then held: the caller starts the trial), BUSY (others are
        running trials here) or QUIET (nothing running, nothing may start)."""
        w.lock.acquire()
        try:
            with _no_warn():
                optuna.storages.fail_stale_trials(w.study)
            verdict = self._room(w, mine_over)
            if verdict != RUN:
                w.lock.release()
            return verdict
        except BaseException:
            w.lock.release_quietly()
            raise

    def _dedupe(self, w: BucketWork):
        """The objective's duplicate check across workers (see the module docstring)."""

        def dedupe(trial: optuna.Trial, params: dict) -> FrozenTrial | None:
            key = params_key(params)
            while True:
                with w.lock.section():
                    dup = find_duplicate(trial.study, params, trial.number)
                    if dup is not None:
                        return dup
                    busy = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                            if t.number != trial.number and "evaluating" in t.user_attrs and params_key(t.params) == key]
                    if not busy:
                        trial.set_user_attr("evaluating", self.label)
                        return None
                    other = busy[0].number
                self._wait_for(w, other)  # then look again: copy its result, or claim it if it died

        return dedupe

    def _wait_for(self, w: BucketWork, number: int) -> None:
        polls = 0
        while True:
            t = [t for t in w.study.get_trials(deepcopy=False) if t.number == number][0]
            if t.state != TrialState.RUNNING:
                return
            polls += 1
            if polls % 10 == 0:  # a dead worker's trial only ends when someone fails it
                with _no_warn():
                    optuna.storages.fail_stale_trials(w.study)
            self._sleep(WAIT_POLL_S)

    def _objective(self, w: BucketWork):
        base = make_objective(w.space, w.runner.evaluate, self.quality_fn, dedupe=self._dedupe(w))

        def objective(trial: optuna.Trial):
            self.started.append((w.study, trial.number))
            trial.set_user_attr("worker", self.label)
            return base(trial)

        return objective

    def _on_trial(self, study, t: FrozenTrial) -> None:
        if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs and "duplicate_of" not in t.user_attrs:
            self.log(f"trial {t.number} of {study.study_name} failed: {t.user_attrs['fail_reason']}")

    # -- verification

    def _verify(self, w: BucketWork) -> bool:
        """Re-time the winners of a quiet bucket once (the first claimant) and store
        them; False while another live worker is doing it (wait: every host's launcher
        builds its table from the stored winners)."""
        trials = w.study.get_trials(deepcopy=False)
        n_ev = sum(evaluated(t) for t in trials)
        if n_ev == 0:
            return True
        with w.lock.section():
            attrs = w.study.user_attrs
            if (attrs.get("verified") or {}).get("n_evaluated") == n_ev:
                return True
            claim = attrs.get("verify_claim")
            if claim and claim.get("n_evaluated") == n_ev and _claim_alive(claim):
                return False  # another worker is verifying it: look again later
            w.study.set_user_attr("verify_claim", {"worker": self.label, "host": socket.gethostname(),
                                                   "pid": os.getpid(), "run_id": self.job.run_id,
                                                   "n_evaluated": n_ev, "time": time.time()})
        try:
            for ps in w.bucket.page_sizes:
                w.runner.prepare(ps)
            groups = collect(w.study, w.space, w.runner, self.spec)
        except BaseException:
            w.study.set_user_attr("verify_claim", None)
            raise
        w.study.set_user_attr("verified", {"n_evaluated": n_ev, "worker": self.label, "date": now_iso(),
                                           "groups": [group_to_dict(g) for g in groups]})
        parts = [f"{g.latency_us:.2f} us vs default {g.default_latency_us:.2f} us ({g.speedup:.3f}x)"
                 if g.speedup else f"{g.latency_us:.2f} us" for g in groups]
        self.log(f"verified {w.name} ({n_ev} trials): " + ("; ".join(parts) or "no config passed the check"))
        return True

    # -- the loop

    def _work_on(self, w: BucketWork, deadline: float | None, left: int) -> str:
        if w.error is not None:
            return FINISHED
        if w.study is None:
            self._open(w)
        if w.timeout is None:
            w.timeout = self.spec.timeout or math.inf
            if deadline is not None:
                w.timeout = min(w.timeout, max(1.0, (deadline - time.monotonic()) / max(1, left)))
        ran = 0
        while True:
            self._check_stop()
            over = w.spent >= w.timeout or (deadline is not None and time.monotonic() >= deadline)
            if not over and ran == 0 and self._room(w, over) == RUN:
                try:  # inputs before taking the lock (building them can take seconds)
                    for ps in w.bucket.page_sizes:
                        w.runner.prepare(ps)
                except torch.OutOfMemoryError as exc:
                    w.error = f"out of memory building the inputs: {str(exc).splitlines()[0]}"
                    self.pool.clear()
                    self.log(f"{w.name}: {w.error}")
                    return FINISHED
            verdict = self._admit(w, over)
            if verdict != RUN:
                break
            t0 = time.monotonic()
            try:
                w.study.optimize(self._objective(w), n_trials=1, callbacks=[self._on_trial], gc_after_trial=False)
            except optuna.exceptions.UpdateFinishedTrialError:
                self.log(f"a trial of {w.name} was failed by another worker (our heartbeat was late); "
                         "its retry will run it again")
            except AssertionError as exc:  # Optuna asserts when recording a trial fails on a storage error
                cause = _storage_cause(exc)
                if cause is None:
                    raise
                raise cause from None
            finally:
                w.lock.release_quietly()
                w.spent += time.monotonic() - t0
            ran += 1
            self.trials_run += 1
        if verdict == BUSY or not self._verify(w):
            return WORKED if ran else IDLE
        return FINISHED

    def _check_stop(self) -> None:
        if self._stop or os.getppid() != self._ppid:
            raise KeyboardInterrupt("launcher gone" if os.getppid() != self._ppid else "stopped")

    # -- stopping: a signal interrupts kernel runs and waits at once, storage writes never
    # (Optuna would leave a half-recorded trial running); those stop at the next safe point.

    @contextlib.contextmanager
    def _interruptible_section(self):
        self._check_stop()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _guarded(self, evaluate):
        def run(cand, trial=None):
            with self._interruptible_section():
                return evaluate(cand, trial)

        return run

    def _sleep(self, seconds: float) -> None:
        with self._interruptible_section():
            time.sleep(seconds)

    def on_signal(self, signum, frame) -> None:
        """SIGINT/SIGTERM handler of the worker process."""
        self._stop = True
        if self._interruptible:
            self._interruptible = False
            raise KeyboardInterrupt(f"signal {signum}")

    def abandon(self) -> int:
        """After an interruption, record this worker's trials that are still running as
        failed (interrupted), e.g. when the signal came while Optuna was recording one;
        returns how many. Without this they would wait for the heartbeat grace period."""
        n = 0
        for study, number in self.started:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat storages expect optimize()": this is the clean-up
                if study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING:
                    study.tell(number, state=TrialState.FAIL)
                    n += 1
        return n

    def run(self) -> None:
        """Tune until every bucket is finished here (raises StorageLost, KeyboardInterrupt, FatalDeviceError)."""
        with _quiet_optuna():
            self.storage = self.backoff.call(lambda: open_storage(self.url, heartbeat_s=self.job.heartbeat_s,
                                                                  grace_s=self.job.grace_s, prepared=self.job.prepared))
            pending = self._buckets()
            deadline = time.monotonic() + self.spec.max_time if self.spec.max_time else None
            self.log(f"worker {self.label} (pid {os.getpid()}) on {self.spec.device_name}: {len(pending)} buckets, "
                     f"starting at {pending[0].name if pending else '-'}")
            while pending:
                worked = False
                for w in list(pending):
                    state = self.backoff.call(lambda w=w: self._work_on(w, deadline, len(pending)))
                    if state == FINISHED:
                        pending.remove(w)
                    worked |= state in (WORKED, FINISHED)
                if pending and not worked:
                    self._check_stop()
                    self._sleep(self.job.poll_s)  # every bucket left has trials running on other workers
            self.pool.clear()
        self.log(f"worker {self.label} done: {self.trials_run} trials run here")


def _storage_cause(exc: BaseException) -> BaseException | None:
    """The storage error behind ``exc`` (in its context chain), if any."""
    errors, seen = storage_errors(), set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, errors):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _claim_alive(claim: dict) -> bool:
    """Whether the worker that claimed a verification may still be at it: its process
    exists (same host) and the claim is younger than VERIFY_STALE_S."""
    if time.time() - claim.get("time", 0) > VERIFY_STALE_S:
        return False
    if claim.get("host") == socket.gethostname():
        try:
            pid = int(claim.get("pid", 0))
            if pid <= 0:
                return False
            os.kill(pid, 0)
        except (ProcessLookupError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
    return True


@contextlib.contextmanager
def _no_warn():
    """Silence Optuna's ExperimentalWarning (heartbeat helpers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def group_to_dict(g: GroupResult) -> dict:
    return {"page_size": g.page_size, "budget": g.budget, "config": g.config, "latency_us": g.latency_us,
            "default_config": g.default_config, "default_latency_us": g.default_latency_us, "trial": g.trial,
            "quality": g.quality, "verified": g.verified}


def group_from_dict(bucket, d: dict) -> GroupResult:
    return GroupResult(d["page_size"], d["budget"], bucket.entry_key(d["page_size"], d["budget"]), d["config"],
                       d["latency_us"], d["default_config"], d["default_latency_us"], d["trial"], d.get("quality"),
                       d.get("verified", False))


# ----------------------------------------------------------------------------- process entry


def main() -> int:
    """``python -m questkern.tuning.worker``: the job comes from ``$QUESTKERN_WORKER_JOB``."""
    from questkern._details import select_backend

    select_backend()
    from questkern.configs.gpus import current_gpu_name, normalize_gpu_name

    text = os.environ.get(ENV_JOB)
    if not text:
        print(f"questkern worker: ${ENV_JOB} is not set (workers are started by questkern tune --devices)",
              file=sys.stderr)
        return 2
    job = WorkerJob.from_env(text)
    spec = spec_from_dict(job.spec)
    detected = current_gpu_name()
    if normalize_gpu_name(detected) != spec.gpu_key:
        print(f"worker {job.label}: this device is {detected!r}, the run tunes {spec.gpu_key!r} "
              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})", file=sys.stderr)
        return 2

    worker = Worker(job)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, worker.on_signal)
    if os.environ.get(ENV_TEST_TIMER):
        worker.log(f"NOTE: ${ENV_TEST_TIMER} is set: latencies are made up (tests only)")
    code = 0
    try:
        worker.run()
    except KeyboardInterrupt:
        worker.abandon()
        print(f"worker {job.label}: interrupted; its running trial is recorded as interrupted and runs again on resume",
              flush=True)
        code = 130
    except StorageLost as exc:
        print(f"worker {job.label}: {exc}. Its unfinished trial fails once its heartbeat is {job.grace_s} s old and "
              "another worker retries it; run the same command again to rejoin.", file=sys.stderr, flush=True)
        code = EXIT_STORAGE_LOST
    except FatalDeviceError as exc:
        print(f"worker {job.label}: {exc}; this worker stops (the others go on)", file=sys.stderr, flush=True)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    if worker.storage is not None:
        with contextlib.suppress(Exception):
            worker.storage.engine.dispose()  # close the database connections politely
    return code


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # everything is committed: skip torch/Triton teardown (seconds per worker)

"""Distributed tuning without a database server: ``--devices`` parsing, storage URL
checks, the SQLite study lock across processes, storage back-off, the retry of dead
workers' trials, cross-worker duplicates and admission, progress lines, the
one-vs-many-GPU comparison, and one end-to-end run of two worker processes on the
default one-host storage (SQLite)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from questkern.cli import build_parser, main
from questkern.configs import paths
from questkern.tuning.distributed import Progress, compare_lines, compare_summaries, resolve_devices
from questkern.configs.gpus import CPU_KEY
from questkern.tuning.storage import (FileStudyLock, LockTimeout, StorageError, absolute_sqlite, check_url, redact,
                                      retry_stale_trial)
from questkern.configs.table import load_table
from questkern.tuning.tuner import TuneSpec
from questkern.tuning.worker import (QUIET, BUSY, RUN, Backoff, StorageLost, Worker, WorkerJob, _claim_alive,
                                     fake_latency, spec_from_dict, spec_to_dict)

from distributed_helpers import TINY, check_consistent, load, timer_env


# ----------------------------------------------------------------------------- flags and URLs


@pytest.mark.parametrize("text,want", [("0,1", [0, 1]), (" 3 ", [3]), ("all", "all"), ("0, 2,1", [0, 2, 1])])
def test_devices_parsing(text, want):
    assert build_parser().parse_args(["tune", "--gpu", "cpu", "--seq", "1k", "--devices", text]).devices == want


@pytest.mark.parametrize("text,expect", [("0,0", "must not repeat"), ("-1", "expected 'all' or GPU indices"),
                                          ("gpu0", "expected 'all' or GPU indices"), (",", "expected 'all'")])
def test_bad_devices_are_clear_errors(text, expect, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--gpu", "cpu", "--seq", "1k", "--devices", text])
    err = capsys.readouterr().err
    assert "argument --devices" in err and expect in err


def test_cpu_devices_are_worker_slots():
    slots = resolve_devices([0, 1])
    assert [s.label.split(":")[1] for s in slots] == ["cpu0", "cpu1"] and {s.visible for s in slots} == {""}
    with pytest.raises(ValueError, match="no CUDA device here"):
        resolve_devices("all")


@pytest.mark.parametrize("url,distributed,expect", [
    ("postgres://u@h/db", True, "write postgresql://, not postgres://"),
    ("redis://h:6379", False, "unsupported storage URL; expected sqlite:///PATH"),
    ("inmemory", True, "cannot be shared"),
    ("sqlite:///:memory:", True, "in-memory database"),
    ("sqlite://rel.db", False, "an SQLite URL is sqlite:///relative/path.db"),
    ("mysql://u@h/db", True, "MySQL works only for a single process"),
    ("postgresql://u@h", True, "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"),
    ("postgresql://u:s3cret@h", True, "u:***@h"),
])
def test_storage_url_errors(url, distributed, expect):
    with pytest.raises(StorageError) as e:
        check_url(url, distributed=distributed)
    assert expect in str(e.value) and "s3cret" not in str(e.value)


def test_storage_urls_accepted_and_normalized(tmp_path, monkeypatch):
    for url in ("sqlite:///x.db", "sqlite:////abs/x.db", "postgresql://u@h:5/db", "postgresql+psycopg2://u:p@h/db"):
        check_url(url, distributed=True)
    check_url("inmemory", distributed=False)
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///s/x.db") == f"sqlite:///{tmp_path}/s/x.db"
    assert redact("postgresql://u:pw@h:1/db") == "postgresql://u:***@h:1/db"


def test_cli_refuses_inmemory_with_devices_before_starting_anything(dirs, capsys):
    assert main(["tune", "--gpu", "cpu", *TINY, "--devices", "0,1", "--storage", "inmemory"]) == 2
    cap = capsys.readouterr()
    assert "--storage inmemory cannot be shared" in cap.err and "distributed tuning:" not in cap.out


def test_dry_run_lists_the_workers(dirs, capsys):
    assert main(["tune", "--gpu", "cpu", *TINY, "--devices", "0,1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "workers: " in out and ":cpu0 (CUDA_VISIBLE_DEVICES='')" in out and ":cpu1" in out
    assert not list(dirs["data"].iterdir())


# ----------------------------------------------------------------------------- lock, back-off, retries


HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2]))
print("held", flush=True)
sys.stdin.read()
"""


def test_file_lock_excludes_other_processes(tmp_path):
    lock = FileStudyLock(tmp_path / "studies.db", "some:study")
    other = subprocess.Popen([sys.executable, "-c", HOLD, lock.path, str(lock.offset)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="could not take the lock of study 'some:study' within 0 s"):
            lock.acquire(timeout=0.3)
        FileStudyLock(tmp_path / "studies.db", "another:study").acquire(timeout=0.3)  # one byte per study
    finally:
        other.stdin.close()
        other.wait()
    lock.acquire(timeout=5)
    assert lock.held
    probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                            "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))",
                            lock.path, str(lock.offset)], capture_output=True, text=True)
    assert probe.returncode != 0 and ("Resource temporarily unavailable" in probe.stderr
                                      or "Permission denied" in probe.stderr)
    lock.release()
    assert not lock.held


def _op_error(msg):
    import sqlalchemy.exc

    err = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(msg))
    err.__cause__ = ConnectionError(msg)  # as SQLAlchemy raises it: from the driver's error
    return err


def test_backoff_retries_then_gives_up_with_the_reason():
    waits, logs = [], []
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise _op_error("server closed the connection unexpectedly")
        return "ok"

    b = Backoff(60, "postgresql://u:***@h/db", logs.append, sleep=waits.append)
    assert b.call(flaky) == "ok" and waits == [1.0, 2.0] and len(logs) == 2
    assert logs[0] == "storage error (ConnectionError: server closed the connection unexpectedly); retrying in 1 s"

    clock = {"t": 0.0}
    b = Backoff(5, "postgresql://u:***@h/db", logs.append, sleep=lambda s: clock.__setitem__("t", clock["t"] + s),
                clock=lambda: clock["t"])
    with pytest.raises(StorageLost, match=r"lost the study storage postgresql://u:\*\*\*@h/db and gave up after "
                                          r"5 s of retries: ConnectionError: down"):
        b.call(lambda: (_ for _ in ()).throw(_op_error("down")))
    assert clock["t"] == 5.0  # waited 1 + 2 + 2 (the rest of the window)
    with pytest.raises(ValueError):  # not a storage error: no retry
        b.call(lambda: (_ for _ in ()).throw(ValueError("bug")))


def test_stale_trial_is_re_enqueued_with_its_history():
    study = optuna.create_study()
    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    dead = optuna.create_trial(state=TrialState.FAIL, params={"x": 2}, distributions=dist,
                               user_attrs={"default": True, "worker": "h:cuda1", "evaluating": "h:cuda1"})
    retry_stale_trial(study, dead)
    (w,) = study.get_trials(states=(TrialState.WAITING,))
    assert w.params == {"x": 2} and w.user_attrs == {"default": True}
    assert w.system_attrs == {"failed_trial": dead.number, "retry_history": [dead.number]}
    # a point that killed its workers MAX_RETRIES times is not retried again
    many = optuna.create_trial(state=TrialState.FAIL, params={"x": 1}, distributions=dist,
                               system_attrs={"failed_trial": 0, "retry_history": [0, 3, 5]})
    retry_stale_trial(study, many)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_claim_of_a_dead_local_worker_is_taken_over():
    import socket

    now = time.time()
    assert _claim_alive({"host": socket.gethostname(), "pid": os.getpid(), "time": now})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not _claim_alive({"host": socket.gethostname(), "pid": int(dead.stdout), "time": now})
    assert _claim_alive({"host": "elsewhere", "pid": 1, "time": now})
    assert not _claim_alive({"host": "elsewhere", "pid": 1, "time": now - 3600})


# ----------------------------------------------------------------------------- admission and duplicates


@pytest.fixture
def worker(dirs, tmp_path):
    """A worker of a 3-trial select study on SQLite, its bucket opened (no process)."""
    spec = TuneSpec(gpu_key=CPU_KEY, device_name=CPU_KEY, seqs=(128,), heads=((2, 1),), head_dims=(32,),
                    page_sizes=(16,), budgets=(32,), ops=("select",), n_trials=3, verify_rounds=0,
                    storage=f"sqlite:///{tmp_path / 's.db'}", out_dir=dirs["env"])
    assert spec_from_dict(spec_to_dict(spec)) == spec
    wk = Worker(WorkerJob(spec_to_dict(spec), label="test:w0"), timer=lambda fn, info: fake_latency(info.config),
                log=lambda msg: None)
    from questkern.tuning.storage import open_storage

    wk.storage = open_storage(wk.url, heartbeat_s=1, grace_s=2)
    (w,) = wk._buckets()
    wk._open(w)
    return wk, w


def _ask(w, params, claim: str | None = None):
    """A running trial at ``params`` (as a worker holds it), claimed by ``claim``."""
    w.study.enqueue_trial(w.space.encode(params))
    t = w.study.ask()
    assert w.space.suggest(t) == params
    if claim:
        t.set_user_attr("evaluating", claim)
    return t


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_point_another_worker_evaluates_is_waited_for_and_copied(worker):
    wk, w = worker
    study = w.study
    study.tell(study.ask(), state=TrialState.FAIL)  # pop the enqueued default out of the way
    p, q = w.space.enumerate()[:2]
    other = _ask(w, p, claim="other:w1")
    mine = _ask(w, p)
    got = {}
    th = threading.Thread(target=lambda: got.setdefault("dup", wk._dedupe(w)(mine, p)))
    th.start()
    time.sleep(0.6)
    assert th.is_alive()  # waits while the other worker evaluates the same point
    other.set_user_attr("latency_us", 12.5)
    study.tell(other, 12.5)
    th.join(timeout=10)
    assert got["dup"].number == other.number and got["dup"].value == 12.5
    assert "evaluating" not in study.get_trials()[mine.number].user_attrs

    # the other worker dies instead: the point is claimed and evaluated here
    third = _ask(w, q, claim="other:w1")
    again = _ask(w, q)
    th = threading.Thread(target=lambda: got.__setitem__("dup2", wk._dedupe(w)(again, q)))
    th.start()
    time.sleep(0.3)
    study.tell(third, state=TrialState.FAIL)
    th.join(timeout=10)
    assert got["dup2"] is None and study.get_trials()[again.number].user_attrs["evaluating"] == "test:w0"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_admission_counts_running_trials_against_the_budget(worker):
    wk, w = worker
    study = w.study
    assert wk._room(w, False) == RUN
    study.tell(study.ask(), state=TrialState.FAIL)  # pop the enqueued default (interrupted: not evaluated)
    pts = w.space.enumerate()
    for p in pts[:2]:
        t = _ask(w, p)
        t.set_user_attr("latency_us", 1.0)
        study.tell(t, 1.0)
    running = _ask(w, pts[2], claim="other:w1")
    assert wk._room(w, False) == BUSY  # 2 evaluated + 1 running = --trials 3: nothing more may start
    study.tell(running, state=TrialState.FAIL)  # it died: room again, for its retry
    assert wk._room(w, False) == RUN
    assert wk._room(w, True) == QUIET  # this worker's time is over and nothing runs


# ----------------------------------------------------------------------------- progress and comparison


def test_progress_lines_count_per_worker_and_bucket():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="gpu:select:x")
    dist = {"w": optuna.distributions.CategoricalDistribution([1, 2, 4])}
    for i, (who, state, attrs) in enumerate([("h:cuda0", TrialState.COMPLETE, {"latency_us": 9.5}),
                                             ("h:cuda1", TrialState.COMPLETE, {"latency_us": 7.25}),
                                             ("h:cuda1", TrialState.FAIL, {"fail_reason": "mismatch"}),
                                             ("h:cuda0", TrialState.FAIL, {})]):
        study.add_trial(optuna.create_trial(state=state, params={"w": [1, 2, 4][i % 3]}, distributions=dist,
                                            value=attrs.get("latency_us") if state == TrialState.COMPLETE else None,
                                            user_attrs={"worker": who, **attrs}))
    p = Progress(storage, ["gpu:select:x", "gpu:dense:y"], "gpu", 4)
    p.poll()
    head = p.headline(75)
    assert head.startswith("progress 1:15  trials 3/8 (1 failed, 0 running), buckets 0/2 finished")
    assert "h:cuda0 1 done (0 failed, 1 lost)" in head and "h:cuda1 2 done (1 failed)" in head
    assert p.changed() == ["  select:x: 3/4 trials, 1 failed, best 7.25 us, 0 running"]
    assert p.changed() == []  # nothing new


def _summary(configs_lat, wall):
    return {"distributed": {"wall_s": wall}, "buckets": [
        {"study": f"gpu:{name}", "n_evaluated": 20,
         "groups": [{"page_size": 16, "budget": 2048, "config": cfg, "latency_us": lat}]}
        for name, (cfg, lat) in configs_lat.items()]}


def test_compare_summaries_same_winners_noise_and_disagreement():
    a = _summary({"select:a": ({"w": 4}, 10.0), "dense:b": ({"w": 8}, 100.0), "dense:c": ({"w": 2}, 50.0)}, 200.0)
    b = _summary({"select:a": ({"w": 4}, 10.4), "dense:b": ({"w": 4}, 102.0), "dense:c": ({"w": 1}, 40.0)}, 105.0)
    res = compare_summaries(a, b, tolerance=0.03)
    rows = {r["bucket"]: r for r in res["rows"]}
    assert rows["select:a"]["same_config"] and rows["select:a"]["agree"]  # same winner (4% apart: noise)
    assert not rows["dense:b"]["same_config"] and rows["dense:b"]["agree"]  # other config, 2% apart
    assert not rows["dense:c"]["agree"] and not res["agree"]  # 25% apart
    assert res["speedup_b_over_a"] == pytest.approx(200 / 105, abs=1e-3)
    # re-timed back to back on one GPU, the two winners of dense:c are the same speed: noise after all
    res = compare_summaries(a, b, tolerance=0.03, retimed={"dense:c|16|2048": (41.0, 40.5)})
    rows = {r["bucket"]: r for r in res["rows"]}
    assert res["agree"] and math.isclose(rows["dense:c"]["retimed_rel_diff"], round(0.5 / 40.5, 4))
    lines = compare_lines(res)
    assert lines[-2:] == ["1/3 entries with the same winner; all agree within 3%",
                          "wall time: a 200.0 s, b 105.0 s -> 1.91x"]
    assert compare_summaries(a, _summary({"select:a": ({"w": 4}, 10.0)}, 1.0))["missing"] == [
        "('dense:b', 16, 2048)", "('dense:c', 16, 2048)"]


# ----------------------------------------------------------------------------- end to end on SQLite


def test_two_worker_processes_on_the_default_sqlite_storage(dirs, tmp_path, monkeypatch, capsys):
    """The one-host set-up: two worker processes share one SQLite study file."""
    log = timer_env(monkeypatch, tmp_path, sleep_s=0.2)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    summary = tmp_path / "summary.json"
    assert main(["tune", "--gpu", "cpu", *TINY, "--devices", "0,1", "--trials", "5", "--verify-rounds", "0",
                 "--storage", url, "--out", str(dirs["env"]), "--progress-every", "1", "--summary", str(summary),
                 "--log-dir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    trials = check_consistent(url, log, 5)
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) == 2
    assert "buckets 1/1 finished" in out and "optuna-dashboard 'sqlite:///" in out
    assert (tmp_path / ".studies.db.lock").exists()
    (e,) = load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"]
    assert e["latency_us"] == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    import json

    doc = json.loads(summary.read_text())
    assert [w["exit_code"] for w in doc["distributed"]["workers"]] == [0, 0]
    assert sum(w["done"] for w in doc["distributed"]["workers"]) == 5 and doc["buckets"][0]["n_evaluated"] == 5
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 2 and all("verified" in (tmp_path / "logs" / n).read_text() or "done:" in
                                  (tmp_path / "logs" / n).read_text() for n in logs)
    assert load(url).user_attrs["verified"]["n_evaluated"] == 5

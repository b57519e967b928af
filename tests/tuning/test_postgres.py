"""Distributed tuning against a real PostgreSQL server (scripts/test.sh starts one on
127.0.0.1 and sets $QUESTKERN_TEST_PG_DSN): worker processes on one study, a killed
worker, Ctrl-C and resume, a lost database, wrong URLs.

Kernels really run (Triton interpreter, tiny shapes); the workers' clock is the
made-up one of $QUESTKERN_TEST_TIMER, which also logs every timing, so the tests can
see which process timed which point and kill a worker while it is inside a trial.
Each test gets its own database.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
from optuna.trial import TrialState

from questkern.cli import main
from questkern.configs import paths
from questkern.tuning import storage as storage_mod
from questkern.configs.gpus import CPU_KEY
from questkern.configs.table import load_table
from questkern.tuning.tuner import TuneSpec
from questkern.tuning.worker import StorageLost, Worker, WorkerJob, fake_latency, spec_to_dict

from distributed_helpers import STUDY, TINY, check_consistent, load, timer_env, timings, wait_for

DSN_ENV = "QUESTKERN_TEST_PG_DSN"


@pytest.fixture
def pg_url():
    """A fresh database on the test server, dropped afterwards."""
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        pytest.fail(f"${DSN_ENV} is not set: run scripts/test.sh (it installs Debian's postgresql, starts a server on "
                    "127.0.0.1 and sets it), or: bash scripts/test_postgres.sh .venv/bin/python -m pytest "
                    "tests/tuning/test_postgres.py", pytrace=False)
    import psycopg2

    name = f"qk_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
    yield url
    for u in [u for u in storage_mod._pg_conns if name in u]:  # this process's lock connections
        storage_mod._pg_conns.pop(u).close()
    admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def tune_argv(url, dirs, *extra):
    return ["tune", "--gpu", "cpu", *TINY, "--devices", "0,1", "--storage", url, "--out", str(dirs["env"]),
            "--progress-every", "1", "--heartbeat", "1", "--grace", "3", *extra]


def test_two_workers_share_a_study_through_ctrl_c_and_resume(dirs, pg_url, tmp_path, monkeypatch, capsys):
    """Two worker processes on one study; Ctrl-C stops both cleanly; the same command
    resumes and finishes with exactly --trials evaluated trials, none lost or run twice."""
    log = timer_env(monkeypatch, tmp_path, sleep_s=0.3)
    argv = tune_argv(pg_url, dirs, "--trials", "8", "--verify-rounds", "1")

    reader = {}

    def completed_by() -> set:  # the workers that completed a trial (a light reader: no table creation)
        try:
            if "s" not in reader:
                reader["s"] = optuna.storages.RDBStorage(storage_mod.driver_url(pg_url), skip_table_creation=True,
                                                         skip_compatibility_check=True)
            study = optuna.load_study(study_name=STUDY, storage=reader["s"])
            return {t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
        except Exception:  # no tables or no study yet
            return set()

    def ctrl_c_once_both_work():  # what a terminal does: SIGINT to the launcher (workers have their own group)
        wait_for(lambda: len(completed_by()) == 2, 120, "both workers to complete a trial")
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_both_work, daemon=True).start()
    assert main(argv) == 130
    out = capsys.readouterr().out
    assert "stopping the workers (SIGINT)" in out and out.count("stopped (interrupted)") == 2, out
    assert "rerun the same command to resume" in out
    first = load(pg_url).get_trials()
    assert not [t for t in first if t.state == TrialState.RUNNING]  # each worker recorded its trial on the way out
    assert sum(t.state == TrialState.COMPLETE for t in first) < 8

    assert main(argv) == 0
    out = capsys.readouterr().out
    trials = check_consistent(pg_url, log, 8)
    assert len(trials) > len(first)  # the resumed run finished the study
    assert len({t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}) == 2
    assert "buckets 1/1 finished" in out and "wrote " in out
    (e,) = load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"]
    best = min(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert e["latency_us"] == best and e["trials"] == 8  # re-timed by the fake clock: the same numbers


def test_killed_worker_trial_is_retried(dirs, pg_url, tmp_path, monkeypatch, capsys):
    """SIGKILL one worker inside a trial: its trial goes stale (no heartbeat), the other
    worker fails it, re-runs its point and finishes the study."""
    log = timer_env(monkeypatch, tmp_path, sleep_s=0.3, hang_once=True)  # the first trial timed never ends
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", main(
        tune_argv(pg_url, dirs, "--trials", "5", "--verify-rounds", "0"))))
    t.start()
    victim = wait_for(lambda: next(iter(timings(log)), None), 120, "a worker inside a trial")
    os.kill(victim["pid"], signal.SIGKILL)
    t.join(timeout=180)
    assert not t.is_alive() and result["rc"] == 0
    out = capsys.readouterr().out
    assert f"worker {victim['worker']} died (signal 9)" in out
    trials = check_consistent(pg_url, log, 5)
    dead = [x for x in trials if x.number == victim["trial"]][0]
    assert dead.state == TrialState.FAIL and "fail_reason" not in dead.user_attrs
    assert dead.user_attrs["worker"] == victim["worker"]
    (retry,) = [x for x in trials if x.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["worker"] != victim["worker"]
    assert load_table(paths.table_path(dirs["env"], CPU_KEY))["entries"][0]["trials"] == 5


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> the test server that can be cut and restored
    (the database "goes away" for the worker, not for the other tests)."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = None
        self.conns: list[socket.socket] = []
        self.listener = None
        self.open()

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port or 0))
        s.listen(16)
        self.port = s.getsockname()[1]
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            u = socket.create_connection(self.target)
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns.clear()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # Optuna's heartbeat thread
def test_worker_that_loses_the_database_retries_then_exits_and_the_study_resumes(dirs, pg_url, capsys):
    parts = urlsplit(pg_url)
    proxy = Proxy(parts.hostname, parts.port)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    spec = TuneSpec(gpu_key=CPU_KEY, device_name=CPU_KEY, seqs=(128,), heads=((2, 1),), head_dims=(32,),
                    page_sizes=(16,), budgets=(32,), ops=("select",), n_trials=4, verify_rounds=0, storage=url,
                    out_dir=dirs["env"])
    job = WorkerJob(spec_to_dict(spec), label="test:w0", heartbeat_s=1, grace_s=2, storage_retry_s=2.0, poll_s=0.2)
    calls = []

    def cut_on_second(fn, info):
        calls.append(info.trial)
        if len(calls) == 2:
            proxy.cut()  # the database vanishes while the second trial is being timed
        return fake_latency(info.config)

    t0 = time.monotonic()
    with pytest.raises(StorageLost) as exc:
        Worker(job, timer=cut_on_second).run()
    msg = str(exc.value)
    assert msg.startswith(f"lost the study storage {url} and gave up after 2 s of retries: OperationalError")
    assert time.monotonic() - t0 >= 2.0
    out = capsys.readouterr().out
    assert "storage error (OperationalError" in out and "retrying in 1 s" in out

    proxy.open()  # the database is back: the same job resumes; the trial cut off mid-way goes stale and is retried
    Worker(job, timer=lambda fn, info: fake_latency(info.config)).run()
    trials = load(pg_url).get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    cut = [t for t in trials if t.number == calls[1]][0]
    assert cut.state == TrialState.FAIL and "fail_reason" not in cut.user_attrs
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == cut.number]
    assert retry.state == TrialState.COMPLETE and retry.params == cut.params
    proxy.cut()


def test_wrong_storage_urls_are_clear_errors(dirs, pg_url, capsys):
    base = ["tune", "--gpu", "cpu", *TINY, "--devices", "0,1", "--out", str(dirs["env"])]
    parts = urlsplit(pg_url)
    cases = {
        urlunsplit(parts._replace(path="/no_such_db")): 'database "no_such_db" does not exist',
        f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/qk": "Connection refused",
        "postgres://postgres@127.0.0.1/qk": "write postgresql://, not postgres://",
    }
    for url, reason in cases.items():
        assert main([*base, "--storage", url]) == 2, url
        captured = capsys.readouterr()
        assert reason in captured.err, captured.err
        assert "hunter2" not in captured.err + captured.out and "distributed tuning:" not in captured.out
    assert "postgres:***@127.0.0.1" in main_err([*base, "--storage", f"postgresql://postgres:hunter2@127.0.0.1:"
                                                  f"{free_port()}/qk"], capsys)
    # the single-process path checks the server too, instead of a driver traceback
    assert main(["tune", "--gpu", "cpu", *TINY, "--storage", urlunsplit(parts._replace(path="/no_such_db"))]) == 2
    assert 'cannot use the study storage' in capsys.readouterr().err


def main_err(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

"""Study storage shared by several tuning processes: URL checks, an Optuna RDB storage
with heartbeats, and a cross-process lock per study.

Which storage, and why:

* **One host, several GPUs: SQLite** (``sqlite:///PATH``, the default). Optuna's
  heartbeats - the mechanism that marks the trial of a worker that died as failed so
  that another worker retries it - exist only for RDB storages (Optuna 5's
  ``JournalStorage`` has none), so the journal file is not an option. SQLite
  serialises writers with file locks, which is safe between processes on one local
  file system (not NFS); a worker writes a few rows per trial, about one trial per
  second per GPU, far below what SQLite sustains, and a 60 s busy timeout absorbs the
  contention.
* **Several hosts: PostgreSQL** (``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``, needs
  ``pip install -e '.[postgres]'`` in the clone). Every host runs the same command.
* MySQL URLs work for single-process tuning (Optuna supports them) but not for
  ``--devices``: the study lock below is implemented for SQLite and PostgreSQL only.

The study lock (:func:`study_lock`) serialises the few milliseconds in which a worker
decides to start a trial, samples its point and claims it, so that the trial budget is
never overshot and no two workers evaluate the same point at once. It is a POSIX
byte-range lock on a file beside the SQLite database (one byte per study), or a
PostgreSQL advisory lock; both are released by the operating system or the server
when the holding process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.trial import FrozenTrial, TrialState

SUPPORTED = ("sqlite:///PATH (one host) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (several hosts)")
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 10
LOCK_TIMEOUT_S = 300.0
MAX_RETRIES = 3  # a trial whose worker died is retried at most this many times (a config that kills workers stops)
# user attributes of a trial copied to its retry (the others describe the dead attempt)
RETRY_KEEPS = ("default",)


class StorageError(RuntimeError):
    """The study storage cannot be used: a bad URL, a missing driver, an unreachable server."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def scheme(url: str) -> str:
    """'sqlite', 'postgresql', 'mysql', ... (the dialect without its driver)."""
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def check_url(url: str, *, distributed: bool) -> None:
    """Check the shape of a storage URL (no connection). ``distributed``: shared by
    several processes (``--devices``), which needs SQLite or PostgreSQL."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"--storage must be a URL: {SUPPORTED}; got {url!r}")
    if url == "inmemory":
        if distributed:
            raise StorageError("--storage inmemory cannot be shared: --devices starts one process per GPU, which "
                               f"need a storage they all reach: {SUPPORTED}")
        return
    s = scheme(url)
    if s == "postgres":
        raise StorageError(f"--storage {redact(url)!r}: write postgresql://, not postgres:// (SQLAlchemy does not "
                           "accept the short form)")
    if s == "sqlite":
        if not url.startswith("sqlite:///"):
            raise StorageError(f"--storage {url!r}: an SQLite URL is sqlite:///relative/path.db or "
                               "sqlite:////absolute/path.db")
        path = url[len("sqlite:///"):]
        if distributed and path in ("", ":memory:"):
            raise StorageError(f"--storage {url!r} is an in-memory database, which the worker processes of --devices "
                               "cannot share; give a file: sqlite:///path/to/studies.db")
        return
    if s == "postgresql" or (s == "mysql" and not distributed):
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise StorageError(f"--storage {redact(url)!r}: expected {s}://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        return
    if s == "mysql":
        raise StorageError(f"--storage {redact(url)!r}: distributed tuning (--devices) supports {SUPPORTED}; "
                           "MySQL works only for a single process")
    raise StorageError(f"--storage {redact(url)!r}: unsupported storage URL; expected {SUPPORTED}, or 'inmemory' "
                       "for a single process that keeps nothing")


def absolute_sqlite(url: str) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db`` (worker processes
    resolve the same file whatever their working directory)."""
    if scheme(url) == "sqlite" and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///"):]
        if path not in ("", ":memory:"):
            return "sqlite:///" + str(Path(path).expanduser().resolve())
    return url


def driver_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` (or ``+psycopg``), whichever driver
    is installed: SQLAlchemy 2.0 defaults to psycopg2, 2.1 to psycopg 3, and questkern's
    ``postgres`` extra installs psycopg2. URLs naming a driver are left alone."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://" + url[len("postgresql://"):]
    return url


def _engine_kwargs(url: str) -> dict:
    s = scheme(url)
    if s == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if s == "postgresql":
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {}


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Heartbeat callback: re-enqueue the point of a trial whose worker stopped beating.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback`` (system attributes
    ``failed_trial`` = the first attempt, ``retry_history``), but the retry keeps only
    the ``default`` flag of the dead attempt's user attributes (not its ``worker`` or
    ``evaluating`` claim), and a point is retried at most ``MAX_RETRIES`` times.
    """
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRIES:
        return
    system = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k in RETRY_KEEPS}, system_attrs=system))


def _first_line(exc: BaseException) -> str:
    """The useful part of a driver error (SQLAlchemy appends SQL and a help link)."""
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, ImportError):
        cause = cause.__cause__
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip() and not ln.strip().startswith("(Background")]
    return (lines[0] if lines else type(cause).__name__)[:300]


def open_storage(url: str, *, heartbeat_s: int = 30, grace_s: int = 120,
                 prepared: bool = False) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for workers: heartbeats every ``heartbeat_s`` seconds, a
    running trial without a heartbeat for ``grace_s`` seconds is failed and its point
    re-enqueued (:func:`retry_stale_trial`). Creates the tables on first use, unless
    ``prepared`` (the launcher did, and checked the schema version: saves a second per worker).

    Raises :class:`StorageError` with the reason (missing driver, unreachable server,
    unknown database, ...) instead of a driver traceback.
    """
    check_url(url, distributed=True)
    if int(heartbeat_s) < 1 or int(grace_s) <= int(heartbeat_s):
        raise StorageError(f"--heartbeat must be >= 1 s and --grace longer than it; got {heartbeat_s} and {grace_s}")
    if scheme(url) == "sqlite":
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    import sqlalchemy.exc

    try:
        for attempt in range(4):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=_engine_kwargs(url),
                                                      skip_compatibility_check=prepared, skip_table_creation=prepared,
                                                      heartbeat_interval=int(heartbeat_s), grace_period=int(grace_s),
                                                      heartbeat_stale_trial_callback=retry_stale_trial)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # another process (another host's launcher) was creating the same tables: they exist now
                if attempt == 3:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable: the last attempt returns or raises")
    except ImportError as exc:
        extra = " (in the questkern clone: pip install -e '.[postgres]')" if scheme(url) == "postgresql" else ""
        raise StorageError(f"--storage {redact(url)}: the database driver is not installed{extra}: "
                           f"{_first_line(exc)}") from None
    except Exception as exc:  # sqlalchemy / driver errors
        raise StorageError(f"cannot use the study storage {redact(url)}: {_first_line(exc)}"
                           + (" (is the server running, and are host, port, user and database right?)"
                              if scheme(url) == "postgresql" else "")) from None


def check_storage(url: str) -> None:
    """Open ``url`` once (connect, create Optuna's tables) and close it; StorageError if that fails."""
    check_url(url, distributed=False)
    if url == "inmemory" or url in ("sqlite://", "sqlite:///", "sqlite:///:memory:") or scheme(url) == "mysql":
        return  # nothing to reach (in memory), or single-process MySQL: Optuna reports its own errors
    open_storage(url).engine.dispose()


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the storage is (maybe temporarily) unreachable"."""
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, StorageError, LockTimeout)


# ----------------------------------------------------------------------------- study lock


class LockTimeout(RuntimeError):
    """The study lock could not be taken in time (another worker hung while holding it)."""


class StudyLock:
    """A cross-process mutex for one study; ``acquire`` may be called before a trial
    starts and ``release`` from inside the objective (same thread)."""

    name: str
    held = False

    def acquire(self, timeout: float = LOCK_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self._try():
            if time.monotonic() > deadline:
                raise LockTimeout(f"could not take the lock of study {self.name!r} within {timeout:.0f} s: another "
                                  "worker holds it (a hung worker? stop it and rerun)")
            time.sleep(delay)
            delay = min(0.1, delay * 2)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._unlock()

    def release_quietly(self) -> None:
        """Release during error handling (the connection may be gone, which frees it anyway)."""
        try:
            self.release()
        except Exception:
            self.held = False

    @contextlib.contextmanager
    def section(self):
        """Hold the lock for a block (taking it unless already held); released at the end."""
        if not self.held:
            self.acquire()
        try:
            yield
        finally:
            self.release_quietly()

    def _try(self) -> bool:
        raise NotImplementedError

    def _unlock(self) -> None:
        raise NotImplementedError


class NullLock(StudyLock):
    """One process (in-memory storage): nothing to exclude."""

    def __init__(self, name: str):
        self.name = name

    def _try(self) -> bool:
        return True

    def _unlock(self) -> None:
        pass


_lock_fds: dict[str, int] = {}  # one descriptor per lock file per process: closing any would drop all POSIX locks


class FileStudyLock(StudyLock):
    """POSIX byte-range lock: byte ``crc32(study) mod 2^30`` of ``.<db name>.lock``
    beside the SQLite file (SQLite already needs that directory writable for its journal)."""

    def __init__(self, db_path: Path, name: str):
        self.name = name
        self.path = str(db_path.parent / f".{db_path.name}.lock")
        self.offset = zlib.crc32(name.encode()) % (1 << 30)

    def _fd(self) -> int:
        if self.path not in _lock_fds:
            _lock_fds[self.path] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return _lock_fds[self.path]

    def _try(self) -> bool:
        try:
            fcntl.lockf(self._fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.offset)
            return True
        except (BlockingIOError, PermissionError):
            return False

    def _unlock(self) -> None:
        fcntl.lockf(self._fd(), fcntl.LOCK_UN, 1, self.offset)


_pg_conns: dict[str, Any] = {}  # one connection per URL per process holds this process's advisory locks


class PgStudyLock(StudyLock):
    """PostgreSQL session advisory lock ``(0x5154, crc32(study))`` on a dedicated
    autocommit connection; the server drops it when the connection ends."""

    NAMESPACE = 0x5154

    def __init__(self, url: str, name: str):
        self.url, self.name = url, name
        k = zlib.crc32(name.encode())
        self.key = k - (1 << 32) if k >= (1 << 31) else k  # int4 range

    def _conn(self):
        if self.url not in _pg_conns:
            import sqlalchemy

            engine = sqlalchemy.create_engine(driver_url(self.url), poolclass=sqlalchemy.pool.NullPool,
                                              isolation_level="AUTOCOMMIT", **{"connect_args": {
                                                  "connect_timeout": CONNECT_TIMEOUT_S}})
            _pg_conns[self.url] = engine.connect()
        return _pg_conns[self.url]

    def _sql(self, fn: str) -> bool:
        import sqlalchemy

        try:
            return bool(self._conn().execute(sqlalchemy.text(f"SELECT {fn}(:a, :b)"),
                                             {"a": self.NAMESPACE, "b": self.key}).scalar())
        except Exception:
            conn = _pg_conns.pop(self.url, None)  # broken: the next call reconnects
            with contextlib.suppress(Exception):
                conn.invalidate()
            raise

    def _try(self) -> bool:
        return self._sql("pg_try_advisory_lock")

    def _unlock(self) -> None:
        self._sql("pg_advisory_unlock")


def study_lock(url: str, name: str) -> StudyLock:
    """The lock of study ``name`` in storage ``url``."""
    s = scheme(url)
    if s == "sqlite":
        return FileStudyLock(Path(url[len("sqlite:///"):]).expanduser(), name)
    if s == "postgresql":
        return PgStudyLock(url, name)
    if url == "inmemory":
        return NullLock(name)
    raise StorageError(f"no study lock for {redact(url)}: distributed tuning supports {SUPPORTED}")

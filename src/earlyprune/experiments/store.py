"""The results store: one SQLite file per results directory (WAL mode), one row per finished run.

A run's row and its per-epoch curve are written in one transaction, keyed by the run's settings hash,
so a run is stored completely or not at all and never twice, whatever kills the process and however
many workers write at once.

Runs that failed are kept apart, in ``failures`` (the last error of each, and how many attempts failed):
they are not finished, so a sweep runs them again, and a run that then finishes clears its failure.

Sweeps sharing one store claim each cell before running it (``claims``: the owner's host, pid and process
start time, a heartbeat and an expiry), so that concurrent sweeps compute every cell once. A claim whose
process is gone (same host: the pid is dead or reused) or whose heartbeat stopped (``expires`` passed)
is taken over. A finished or failed run clears its claim in the same transaction as its row.

Errors say what they are: a full disk or an I/O error is a :class:`~earlyprune.atomic.StorageError`
(``ENOSPC`` and the store's path), never hidden behind a failing rollback; a file that is not a results
store (corrupt, or another file) is a :class:`StoreError` naming it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..atomic import StorageError, atomic_write_text
from .config import target_sparsity

STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    dataset TEXT, model TEXT, method TEXT, sparsity REAL, seed INTEGER, "when" TEXT, structured INTEGER,
    final_accuracy REAL, best_accuracy REAL,
    record TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS curves (
    key TEXT NOT NULL REFERENCES runs(key),
    epoch INTEGER NOT NULL,
    test_accuracy REAL, train_loss REAL, seconds REAL,
    PRIMARY KEY (key, epoch)
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    failed_at TEXT
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT,
    heartbeat REAL NOT NULL,
    expires REAL NOT NULL
);
"""

#: seconds a claim lives without a heartbeat (a sweep renews its claims every CLAIM_TTL / 4 seconds)
CLAIM_TTL = 120.0

_SQLITE_FULL, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB = 13, 10, 11, 26


class StoreError(sqlite3.DatabaseError):
    """A results store that cannot be read: the file is corrupt or is not a results store at all."""


def _sqlite_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF  # the primary code of an extended one (SQLITE_IOERR_WRITE -> SQLITE_IOERR)
    text = str(error).lower()
    if "database or disk is full" in text:
        return _SQLITE_FULL
    if "disk i/o error" in text:
        return _SQLITE_IOERR
    if "file is not a database" in text:
        return _SQLITE_NOTADB
    if "malformed" in text:
        return _SQLITE_CORRUPT
    return None


def translate_error(error: BaseException, path: Path) -> BaseException:
    """SQLite's error as what it is: a full disk or I/O error -> :class:`StorageError` (ENOSPC when the
    device has no room left, EIO otherwise, with the path); a corrupt file or another kind of file ->
    :class:`StoreError` naming it; anything else unchanged."""
    if not isinstance(error, sqlite3.Error) or isinstance(error, StoreError):
        return error
    code = _sqlite_code(error)
    if code in (_SQLITE_FULL, _SQLITE_IOERR):
        full = code == _SQLITE_FULL or _no_room_left(path.parent)
        number = errno.ENOSPC if full else errno.EIO
        new: BaseException = StorageError(
            number, f"{errno.errorcode[number]} ({os.strerror(number)}) writing the results store {path} "
                    f"(SQLite: {error}); free some space and run again: finished runs are kept")
        new.filename = str(path)  # type: ignore[attr-defined]
        return new
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreError(f"{path} is not a readable results store (SQLite: {error}): move it aside and run again "
                          "(`sqlite3 FILE .recover` may save what it held)")
    return error


def _no_room_left(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return stat.f_bavail * stat.f_frsize < 64 * 1024


@dataclass(frozen=True)
class Claimant:
    """Who claims cells: this host, this process and the process's start time (a reused pid is not the
    same process)."""

    host: str
    pid: int
    started: str | None

    @classmethod
    def current(cls) -> "Claimant":
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()))

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` (started at ``started``) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


class ResultsStore:
    """Open (creating if needed) the store of ``results_dir``."""

    def __init__(self, results_dir: str | Path, create: bool = True):
        self.dir = Path(results_dir)
        self.path = self.dir / STORE_NAME
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{self.dir} is a file, not a results directory", str(self.dir))
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a results store")
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no results store in {self.dir} (expected {self.path})")
        with self._errors():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            with self._errors():
                self._initialise()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's and the OS's errors as what they are (see :func:`translate_error`)."""
        try:
            yield
        except sqlite3.Error as error:
            translated = translate_error(error, self.path)
            if translated is error:
                raise
            raise translated from error
        except OSError as error:
            from ..atomic import is_storage_error, storage_error

            if is_storage_error(error) and not isinstance(error, StorageError):
                raise storage_error(error, self.path) from error
            raise

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on failure a rollback that can never hide the error that
        caused it (after a disk-full error SQLite may have rolled back already: "no transaction is
        active")."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one that matters
                raise

    def _initialise(self, patience: float = 60.0) -> None:
        """WAL mode and the schema. Switching a new file to WAL needs the database to itself, and SQLite
        answers "database is locked" at once (no busy wait) when another process opens it at the same
        moment: retry with a short backoff until ``patience`` seconds have passed."""
        deadline = time.monotonic() + patience
        delay = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(0.5, delay * 2)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def keys(self) -> set[str]:
        """The keys of the finished runs (failed runs are not among them)."""
        with self._errors():
            return {row[0] for row in self._db.execute("SELECT key FROM runs")}

    def add_failure(self, key: str, settings: dict[str, Any], error: str, traceback: str | None = None) -> None:
        """Record that run ``key`` failed with ``error`` (replacing its earlier failure, counting attempts).
        A failed run is not finished: :meth:`keys` does not list it. Its claim, if any, is released."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO failures (key, settings, error, traceback, attempts, failed_at) VALUES (?,?,?,?,1,?) "
                "ON CONFLICT(key) DO UPDATE SET settings=excluded.settings, error=excluded.error, "
                "traceback=excluded.traceback, attempts=failures.attempts + 1, failed_at=excluded.failed_at",
                (key, json.dumps(settings, sort_keys=True, default=str), error, traceback,
                 time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            )
            self._db.execute("DELETE FROM claims WHERE key=?", (key,))

    def failures(self) -> dict[str, dict[str, Any]]:
        """The runs whose last attempt failed and that have not finished since: key -> settings, error,
        traceback, attempts, failed_at."""
        with self._errors():
            rows = self._db.execute("SELECT key, settings, error, traceback, attempts, failed_at FROM failures "
                                    "WHERE key NOT IN (SELECT key FROM runs) ORDER BY rowid").fetchall()
        return {key: {"settings": json.loads(settings), "error": error, "traceback": tb, "attempts": attempts,
                      "failed_at": failed_at}
                for key, settings, error, tb, attempts, failed_at in rows}

    def add(self, record: dict[str, Any]) -> bool:
        """Store a finished run; returns False (and changes nothing) if its key is already stored. Its
        failure and its claim, if any, are cleared in the same transaction."""
        curve = record.get("curve", [])
        blob = json.dumps(record, sort_keys=True, default=str)
        with self._transaction():
            cursor = self._db.execute(
                'INSERT OR IGNORE INTO runs (key, dataset, model, method, sparsity, seed, "when", structured, '
                "final_accuracy, best_accuracy, record, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record["key"], record.get("dataset"), record.get("model"), record.get("method"),
                 _sparsity_column(record), record.get("seed"), record.get("when"), int(bool(record.get("structured"))),
                 record.get("final_accuracy"), record.get("best_accuracy"), blob, record.get("finished_at")),
            )
            inserted = cursor.rowcount == 1
            if inserted:
                self._db.executemany(
                    "INSERT INTO curves (key, epoch, test_accuracy, train_loss, seconds) VALUES (?,?,?,?,?)",
                    [(record["key"], p["epoch"], p.get("test_accuracy"), p.get("train_loss"), p.get("seconds"))
                     for p in curve],
                )
            self._db.execute("DELETE FROM failures WHERE key=?", (record["key"],))
            self._db.execute("DELETE FROM claims WHERE key=?", (record["key"],))
        return inserted

    def records(self) -> Iterator[dict[str, Any]]:
        with self._errors():
            blobs = self._db.execute("SELECT record FROM runs ORDER BY rowid").fetchall()
        for (blob,) in blobs:
            yield json.loads(blob)

    def curve(self, key: str) -> list[dict[str, Any]]:
        with self._errors():
            rows = self._db.execute(
                "SELECT epoch, test_accuracy, train_loss, seconds FROM curves WHERE key=? ORDER BY epoch", (key,)
            ).fetchall()
        return [dict(zip(("epoch", "test_accuracy", "train_loss", "seconds"), r)) for r in rows]

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def export_jsonl(self, path: str | Path) -> int:
        """Write every finished run to ``path`` as JSON lines, atomically (replacing the file: see
        :func:`earlyprune.experiments.records.merge_records` to keep the records already there)."""
        rows = list(self.records())
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return len(rows)

    def export_csv(self, path: str | Path) -> int:
        """Write every finished run to ``path`` as CSV (scalar fields), atomically."""
        return write_csv(path, self.records())

    # --- claims: concurrent sweeps compute each cell once ---------------------------------------------

    def claim(self, key: str, claimant: Claimant, ttl: float = CLAIM_TTL) -> bool:
        """Claim cell ``key`` for ``claimant``: True when it is now ours (free, already ours, or held by a
        process that is gone or stopped renewing its claim); False when it is finished or another live
        process holds it."""
        now = time.time()
        with self._transaction():
            if self._db.execute("SELECT 1 FROM runs WHERE key=?", (key,)).fetchone():
                return False
            row = self._db.execute("SELECT owner, host, pid, started, expires FROM claims WHERE key=?",
                                   (key,)).fetchone()
            if row is not None and row[0] != claimant.owner and not self._stale(row, claimant, now):
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO claims (key, owner, host, pid, started, heartbeat, expires) "
                "VALUES (?,?,?,?,?,?,?)",
                (key, claimant.owner, claimant.host, claimant.pid, claimant.started, now, now + ttl))
        return True

    @staticmethod
    def _stale(row: tuple, claimant: Claimant, now: float) -> bool:
        _, host, pid, started, expires = row
        if expires < now:
            return True
        return host == claimant.host and not _process_alive(pid, started)

    def release(self, key: str, claimant: Claimant) -> None:
        """Give up ``claimant``'s claim on ``key`` (nothing if it holds none)."""
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE key=? AND owner=?", (key, claimant.owner))

    def release_all(self, claimant: Claimant) -> None:
        """Give up every claim ``claimant`` holds."""
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE owner=?", (claimant.owner,))

    def heartbeat(self, claimant: Claimant, ttl: float = CLAIM_TTL) -> int:
        """Renew every claim of ``claimant`` for ``ttl`` seconds; returns how many it holds."""
        now = time.time()
        with self._transaction():
            cursor = self._db.execute("UPDATE claims SET heartbeat=?, expires=? WHERE owner=?",
                                      (now, now + ttl, claimant.owner))
        return cursor.rowcount

    def claims(self) -> dict[str, dict[str, Any]]:
        """The current claims: key -> owner, host, pid, heartbeat, expires (stale ones included)."""
        with self._errors():
            rows = self._db.execute("SELECT key, owner, host, pid, heartbeat, expires FROM claims").fetchall()
        return {key: {"owner": owner, "host": host, "pid": pid, "heartbeat": beat, "expires": expires}
                for key, owner, host, pid, beat, expires in rows}


def _sparsity_column(record: dict[str, Any]) -> float | None:
    """The ``sparsity`` column: the run's target (NULL for dense, activation density and cost budgets, whose
    records carry the unused default), or the record's field as it is where it lacks what that needs."""
    try:
        return target_sparsity(record)
    except (KeyError, TypeError, ValueError):
        return record.get("sparsity")


def write_csv(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` to ``path`` as CSV (their scalar fields, one column per field), atomically."""
    rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in records]
    columns = sorted({k for r in rows for k in r})
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return len(rows)


class ClaimQueue:
    """The cells of a sweep still to run, each claimed in the store just before it is handed out:
    iterating gives the cells this process now holds, one at a time and only when the executor takes the
    next one (cells finished meanwhile or held by another live sweep are passed over and listed in
    :attr:`taken_elsewhere`). While open (a ``with`` block) it renews its claims in the background, so
    that a long cell keeps its claim and a dead sweep's claims expire."""

    def __init__(self, results_dir: str | Path, cells: Iterable[Any], key: Callable[[Any], str],
                 claimant: Claimant | None = None, ttl: float = CLAIM_TTL) -> None:
        self.results_dir = Path(results_dir)
        self._cells = list(cells)
        self._key = key
        self.claimant = claimant or Claimant.current()
        self.ttl = ttl
        self.taken_elsewhere: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        """The cells not handed out nor passed over yet."""
        return len(self._cells)

    def remaining(self) -> list[Any]:
        """The cells not handed out nor passed over yet."""
        return list(self._cells)

    def __iter__(self) -> Iterator[Any]:
        while self._cells:
            cell = self._cells.pop(0)
            with ResultsStore(self.results_dir) as store:
                mine = store.claim(self._key(cell), self.claimant, self.ttl)
            if mine:
                yield cell
            else:
                self.taken_elsewhere.append(cell)

    def release(self, cell: Any) -> None:
        """Give up the claim on ``cell`` (a cell that did not finish and will not be retried now)."""
        with ResultsStore(self.results_dir) as store:
            store.release(self._key(cell), self.claimant)

    def __enter__(self) -> "ClaimQueue":
        self._thread = threading.Thread(target=self._renew, name="earlyprune-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        """Stop renewing and give up every claim still held (cells handed out that did not end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            with ResultsStore(self.results_dir) as store:
                store.release_all(self.claimant)
        except (sqlite3.Error, OSError):  # a full disk: they expire with this process
            pass

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                with ResultsStore(self.results_dir) as store:
                    store.heartbeat(self.claimant, self.ttl)
            except (sqlite3.Error, OSError):  # a full disk: the claims expire, the sweep reports the error
                pass

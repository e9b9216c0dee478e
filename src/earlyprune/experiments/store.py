"""The results store: one SQLite file per results directory (WAL mode), one row per finished run.

A run's row and its per-epoch curve are written in one transaction, keyed by the run's settings hash,
so a run is stored completely or not at all and never twice, whatever kills the process and however
many workers write at once.

Runs that failed are kept apart, in ``failures`` (the last error of each, and how many attempts failed):
they are not finished, so a sweep runs them again, and a run that then finishes clears its failure.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

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
"""


class ResultsStore:
    """Open (creating if needed) the store of ``results_dir``."""

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / STORE_NAME
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._initialise()

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
        return {row[0] for row in self._db.execute("SELECT key FROM runs")}

    def add_failure(self, key: str, settings: dict[str, Any], error: str, traceback: str | None = None) -> None:
        """Record that run ``key`` failed with ``error`` (replacing its earlier failure, counting attempts).
        A failed run is not finished: :meth:`keys` does not list it."""
        self._db.execute(
            "INSERT INTO failures (key, settings, error, traceback, attempts, failed_at) VALUES (?,?,?,?,1,?) "
            "ON CONFLICT(key) DO UPDATE SET settings=excluded.settings, error=excluded.error, "
            "traceback=excluded.traceback, attempts=failures.attempts + 1, failed_at=excluded.failed_at",
            (key, json.dumps(settings, sort_keys=True, default=str), error, traceback,
             time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        )

    def failures(self) -> dict[str, dict[str, Any]]:
        """The runs whose last attempt failed and that have not finished since: key -> settings, error,
        traceback, attempts, failed_at."""
        rows = self._db.execute("SELECT key, settings, error, traceback, attempts, failed_at FROM failures "
                                "WHERE key NOT IN (SELECT key FROM runs) ORDER BY rowid")
        return {key: {"settings": json.loads(settings), "error": error, "traceback": tb, "attempts": attempts,
                      "failed_at": failed_at}
                for key, settings, error, tb, attempts, failed_at in rows}

    def add(self, record: dict[str, Any]) -> bool:
        """Store a finished run; returns False (and changes nothing) if its key is already stored."""
        curve = record.get("curve", [])
        blob = json.dumps(record, sort_keys=True, default=str)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                'INSERT OR IGNORE INTO runs (key, dataset, model, method, sparsity, seed, "when", structured, '
                "final_accuracy, best_accuracy, record, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record["key"], record.get("dataset"), record.get("model"), record.get("method"),
                 record.get("sparsity"), record.get("seed"), record.get("when"), int(bool(record.get("structured"))),
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
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return inserted

    def records(self) -> Iterator[dict[str, Any]]:
        for (blob,) in self._db.execute("SELECT record FROM runs ORDER BY rowid"):
            yield json.loads(blob)

    def curve(self, key: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT epoch, test_accuracy, train_loss, seconds FROM curves WHERE key=? ORDER BY epoch", (key,)
        )
        return [dict(zip(("epoch", "test_accuracy", "train_loss", "seconds"), r)) for r in rows]

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def export_jsonl(self, path: str | Path) -> int:
        rows = list(self.records())
        Path(path).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        return len(rows)

    def export_csv(self, path: str | Path) -> int:
        rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in self.records()]
        columns = sorted({k for r in rows for k in r})
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return len(rows)

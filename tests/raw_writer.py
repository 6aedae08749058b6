"""Measuring SQLite's write lock beside the operator: how long each of the operator's write transactions
held it, and what a raw SQL writer in another process (5 s busy timeout, as the sqlite3 shell with
`.timeout 5000`) experienced meanwhile. Used by tests/unit/test_raw_sql_writers.py and the 10k benchmark."""

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, event

from state import Store

# One autocommit statement per transaction: what a billing engineer's shell does.
_WRITER = r"""
import json, os, sqlite3, sys, time
database, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(database, timeout=5.0, isolation_level=None)
done, failed, worst, errors, n = 0, 0, 0.0, [], 0
while not os.path.exists(stop):
    for sql, args in (("INSERT INTO tenants (name, template) VALUES (?, 'base')", (f"raw-{n}",)),
                      ("UPDATE tenants SET labels = '{\"by\": \"shell\"}' WHERE name = ?", (f"raw-{n}",)),
                      ("DELETE FROM tenants WHERE name = ?", (f"raw-{n}",))):
        started = time.perf_counter()
        try:
            conn.execute(sql, args)
            done += 1
        except sqlite3.OperationalError as error:
            failed += 1
            errors.append(str(error))
        worst = max(worst, time.perf_counter() - started)
    n += 1
    time.sleep(0.005)  # a busy script, not a tight loop
print(json.dumps({"done": done, "failed": failed, "worst_ms": worst * 1000, "errors": errors[:3]}))
"""


class WriteHolds:
    """How long each write transaction of `store` held SQLite's write lock: from BEGIN IMMEDIATE to the
    COMMIT (or ROLLBACK) being issued."""

    def __init__(self, store: Store) -> None:
        self._started: dict[int, float] = {}
        self.holds: list[float] = []
        event.listen(store.engine, "begin", self._begin)
        event.listen(store.engine, "commit", self._end)
        event.listen(store.engine, "rollback", self._end)

    def _begin(self, conn: Connection) -> None:
        if conn.get_execution_options().get("sqlite_begin") == "IMMEDIATE":
            self._started[id(conn)] = time.perf_counter()

    def _end(self, conn: Connection) -> None:
        started = self._started.pop(id(conn), None)
        if started is not None:
            self.holds.append(time.perf_counter() - started)

    @property
    def longest_ms(self) -> float:
        return max(self.holds, default=0.0) * 1000

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.holds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000 if ordered else 0.0


@dataclass(frozen=True)
class WriterReport:
    done: int
    failed: int
    worst_ms: float
    errors: list[str]


class RawWriter:
    """Another process writing the store's tenants with raw SQL until `stop()`."""

    def __init__(self, store: Store) -> None:
        self._directory = tempfile.TemporaryDirectory()
        self._stop = Path(self._directory.name) / "stop"
        database = store.url.removeprefix("sqlite:///")
        self._process = subprocess.Popen([sys.executable, "-c", _WRITER, database, str(self._stop)],
                                         stdout=subprocess.PIPE, text=True)

    def stop(self) -> WriterReport:
        self._stop.touch()
        output, _ = self._process.communicate(timeout=60)
        self._directory.cleanup()
        return WriterReport(**json.loads(output))

"""What a dialect provides to the store."""

from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Connection, Engine, Table


class Dialect(Protocol):
    name: str

    def create_engine(self, url: str) -> Engine: ...

    def install_triggers(self, conn: Connection) -> None:
        """Generation, revision, soft delete, template existence, append-only events."""
        ...

    def reinstall_triggers(self, conn: Connection) -> None:
        """Replace the triggers of `install_triggers`, e.g. after a spec column was added (migration 6)."""
        ...

    def install_tombstone_triggers(self, conn: Connection) -> None:
        """A revision stamp on every tenant tombstone (migration 4)."""
        ...

    def install_page_rules(self, conn: Connection) -> None:
        """Memory limits must be whole 4Ki pages, for tenants and templates (migration 5)."""
        ...

    def write_options(self) -> dict[str, object]:
        """Execution options for a connection that will write."""
        ...

    def write_lock(self) -> AbstractContextManager[object]:
        """Held around each write transaction of this process: writers queue on it instead of polling the
        database's own lock (SQLite's busy handler sleeps up to 100 ms between tries)."""
        ...

    def lock_for_migration(self, conn: Connection) -> None:
        """Keep two processes starting together from migrating the same store at once."""
        ...

    def current_revision_sql(self) -> str:
        """SQL for the newest revision stamped."""
        ...

    def epoch_now_sql(self) -> str:
        """A SQL expression: the database's clock in seconds since the epoch (leases use one clock)."""
        ...

    def insert(self, table: Table) -> Any:
        """An INSERT of this dialect on `table`, one that offers `on_conflict_do_nothing`."""
        ...

    def greatest(self, first: ColumnElement[Any], second: ColumnElement[Any]) -> ColumnElement[Any]:
        """The larger of two SQL values."""
        ...

    def change_listener(self, url: str) -> "ChangeListener":
        """Something to wait on for writes to tenants (LISTEN/NOTIFY), or a plain sleep."""
        ...


class ChangeListener(Protocol):
    def wait(self, timeout: float) -> bool:
        """Return True when woken by a change, False when `timeout` seconds passed."""
        ...

    def close(self) -> None: ...

"""What a dialect provides to the store."""

from typing import Protocol

from sqlalchemy import Connection, Engine


class Dialect(Protocol):
    name: str

    def create_engine(self, url: str) -> Engine: ...

    def install_triggers(self, conn: Connection) -> None:
        """Generation, revision, soft delete, template existence, append-only events."""
        ...

    def write_options(self) -> dict[str, object]:
        """Execution options for a connection that will write."""
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

    def change_listener(self, url: str) -> "ChangeListener":
        """Something to wait on for writes to tenants (LISTEN/NOTIFY), or a plain sleep."""
        ...


class ChangeListener(Protocol):
    def wait(self, timeout: float) -> bool:
        """Return True when woken by a change, False when `timeout` seconds passed."""
        ...

    def close(self) -> None: ...

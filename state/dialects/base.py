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

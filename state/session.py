"""The store's transaction seam: one read or one write transaction over the store's engine.

Every module of `state/` that speaks SQL opens its transactions here, so the rules live in one place:
a write holds this process's write lock (writers queue on it instead of polling the database's lock),
uses the dialect's write options, and commits or rolls back as one; database errors leave as Fleet's
errors (`state.errors.translate`). It never builds a query itself.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from state.dialects import Dialect
from state.errors import translate


class Session:
    """Opens transactions on one engine; shared by the store and every per-concept module beside it.
    Thread-safe: each transaction takes its own connection."""

    def __init__(self, engine: Engine, dialect: Dialect) -> None:
        self.engine = engine
        self.dialect = dialect

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; no write lock."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as error:
            raise translate(error) from error

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises."""
        try:
            with self.writing() as conn, conn.begin():
                yield conn
        except DBAPIError as error:
            raise translate(error) from error

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection under the write lock whose transaction the caller begins and ends itself (a dry run
        rolls back what it wrote). Database errors are not translated here."""
        with (
            self.dialect.write_lock(),
            self.engine.connect().execution_options(**self.dialect.write_options()) as conn,
        ):
            yield conn

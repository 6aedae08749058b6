"""Everything one SQL dialect needs that the others do not: engine settings, CHECKs, triggers.

Each engine's dialect-specific SQL lives in exactly one module here, imported only for a store of that
engine (PostgreSQL's pulls in SQLAlchemy's PostgreSQL dialect, which a SQLite store never needs).
"""

from state.dialects.base import ChangeListener, Dialect


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite"):
        from state.dialects.sqlite import SQLiteDialect

        return SQLiteDialect()
    if url.startswith("postgresql"):
        from state.dialects.postgresql import PostgreSQLDialect

        return PostgreSQLDialect()
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


__all__ = ["ChangeListener", "Dialect", "dialect_for"]

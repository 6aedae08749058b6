"""Everything one SQL dialect needs that the others do not: engine settings, CHECKs, triggers.

Each engine's dialect-specific SQL lives in exactly one module here.
"""

from state.dialects.base import Dialect
from state.dialects.sqlite import SQLiteDialect


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite"):
        return SQLiteDialect()
    if url.startswith("postgresql"):
        raise NotImplementedError("the PostgreSQL store arrives with the fleet (issue 6); use a sqlite:/// URL")
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///PATH")


__all__ = ["Dialect", "dialect_for"]

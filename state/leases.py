"""Leases: named locks with an expiry on the database's clock (a node's heartbeat, the scheduler's lead).

Every change is a compare-and-set, so two processes never both believe they hold one lease, and every
time comes from the database (`Dialect.epoch_now_sql`), so no process trusts its own clock. What it must
never do: decide what a lease is for.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Integer, Text, and_, literal, literal_column, select

from state.nodes_schema import LEASES
from state.session import Session


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    expires_in: float
    transitions: int


def database_now(session: Session) -> Any:
    """The database's clock in seconds since the epoch, as a SQL expression."""
    return literal_column(f"({session.dialect.epoch_now_sql()})", type_=Float)


class Leases:
    """Leases over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._now = database_now(session)

    def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew `name` for `holder` for `ttl` seconds: only when free, expired, or already ours."""
        now = self._now
        with self.session.write() as conn:
            renewed = conn.execute(
                LEASES.update()
                .where(and_(LEASES.c.name == name, (LEASES.c.holder == holder) | (LEASES.c.expires_at < now)))
                .values(
                    renewed_at=now,
                    expires_at=now + ttl,
                    transitions=LEASES.c.transitions + (LEASES.c.holder != holder).cast(Integer),
                    holder=holder,
                )
                .returning(LEASES.c.name)
            ).first()
            if renewed is not None:
                return True
            created = conn.execute(
                self.session.dialect.insert(LEASES)
                .from_select(
                    ["name", "holder", "renewed_at", "expires_at"],
                    select(literal(name, Text), literal(holder, Text), now, now + ttl),
                )
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(LEASES.c.name)
            ).first()
            return created is not None

    def take_over(self, name: str, dead_holder: str, holder: str, ttl: float) -> bool:
        """Compare-and-set the lease from a holder known to be dead to `holder`, before it expires."""
        now = self._now
        with self.session.write() as conn:
            taken = conn.execute(
                LEASES.update()
                .where(and_(LEASES.c.name == name, LEASES.c.holder == dead_holder))
                .values(renewed_at=now, expires_at=now + ttl, transitions=LEASES.c.transitions + 1, holder=holder)
                .returning(LEASES.c.name)
            ).first()
        return taken is not None

    def release(self, name: str, holder: str) -> None:
        with self.session.write() as conn:
            conn.execute(LEASES.delete().where(and_(LEASES.c.name == name, LEASES.c.holder == holder)))

    def get(self, name: str) -> Lease | None:
        with self.session.read() as conn:
            row = conn.execute(
                select(LEASES, (LEASES.c.expires_at - self._now).label("expires_in")).where(LEASES.c.name == name)
            ).first()
        return None if row is None else Lease(row.name, row.holder, float(row.expires_in), row.transitions)

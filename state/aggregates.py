"""Counts over the whole store for operators' views (`/metrics`, `fleet get --field-selector`): each one
query that aggregates in SQL, so its cost grows with the number of groups, not of tenants.

What it must never do: write, or return rows per tenant where a count would do.
"""

from dataclasses import dataclass

from sqlalchemy import func, select

from state.access_schema import SUBSCRIPTIONS
from state.schema import STATUS, TENANTS
from state.store import Store


@dataclass(frozen=True)
class TenantCount:
    phase: str  # Pending for a tenant no reconcile has reported on yet
    node: str | None  # the node it is bound to, None while unbound
    tenants: int


class Aggregates:
    """Aggregates over a `Store`'s engine (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.session = store.session

    def tenants_by_phase_and_node(self) -> list[TenantCount]:
        phase = func.coalesce(STATUS.c.phase, "Pending")
        query = (
            select(phase.label("phase"), TENANTS.c.node, func.count().label("tenants"))
            .select_from(TENANTS)
            .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
            .group_by(phase, TENANTS.c.node)
            .order_by(phase, TENANTS.c.node)
        )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        return [TenantCount(row.phase, row.node, int(row.tenants)) for row in rows]

    def plans_by_tenant(self) -> dict[str, str]:
        """The billing plan each tenant is provisioned with, for tenants a live subscription owns."""
        query = select(SUBSCRIPTIONS.c.tenant, SUBSCRIPTIONS.c.plan).where(
            SUBSCRIPTIONS.c.plan.is_not(None), SUBSCRIPTIONS.c.deleted_at.is_(None)
        )
        with self.session.read() as conn:
            return {row.tenant: row.plan for row in conn.execute(query)}


__all__ = ["Aggregates", "TenantCount"]

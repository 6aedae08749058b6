"""Bindings: which node each tenant is placed on, and what the scheduler reads to decide it.

A binding is a compare-and-set (only while unbound and not being deleted) that also re-counts the node's
room under the node's row lock, so two schedulers can neither double-book a tenant nor overfill a node.
What it must never do: decide placement (that is the scheduler's pure code).
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select

from specs import Event, TenantStatus
from state.events import append_events
from state.nodes_schema import NODES
from state.schema import STATUS, TEMPLATES, TENANTS
from state.session import Session
from state.status import STATUS_COLUMNS, status_from_row, status_parameters, write_statuses

_CHUNK_GAP_SECONDS = 0.005


@dataclass(frozen=True)
class PendingTenant:
    """An unbound tenant as the scheduler sees it: what it asks for, and where it may go."""

    name: str
    revision: int
    template: str  # name@version
    cpu_millicores: int
    memory_bytes: int
    disk_bytes: int
    labels: dict[str, str]


@dataclass(frozen=True)
class Binding:
    name: str
    node: str
    # What the tenant asks for, so the store can re-check the node's room at bind time.
    cpu_millicores: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0


@dataclass(frozen=True)
class BindResult:
    bound: list[Binding]
    taken: list[str]  # bound by someone else first (or deleted) meanwhile
    no_room: list[Binding]  # the node filled up since the scheduler looked


def _requested(column: str) -> Any:
    """What bound tenants ask for of one resource column: their own value, else their template's."""
    return func.coalesce(TENANTS.c[column], TEMPLATES.c[column])


def _awake(column: str) -> Any:
    """What an awake tenant asks for of `column`; a sleeping one runs nothing, so it asks for none."""
    return case((TENANTS.c.asleep_since.is_(None), _requested(column)), else_=0)


def usage_query() -> Any:
    """Per node (group by `TENANTS.c.node`): tenants bound (a sleeping one takes a slot and its disk) and the
    cpu and memory the awake ones ask for, so allocatable memory follows what really runs."""
    return (
        select(
            TENANTS.c.node,
            func.count().label("tenants"),
            func.coalesce(func.sum(_awake("cpu_millicores")), 0).label("cpu"),
            func.coalesce(func.sum(_awake("memory_bytes")), 0).label("memory"),
            func.coalesce(func.sum(_requested("disk_bytes")), 0).label("disk"),
            func.coalesce(func.sum(case((TENANTS.c.asleep_since.is_(None), 0), else_=1)), 0).label("sleeping"),
        )
        .select_from(TENANTS)
        .outerjoin(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
        .where(TENANTS.c.node.is_not(None))
    )


class Bindings:
    """Bindings and the scheduler's reads over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pending(self, *, limit: int = 100_000) -> list[PendingTenant]:
        query = (
            select(
                TENANTS.c.name,
                TENANTS.c.revision,
                TENANTS.c.labels,
                TENANTS.c.template,
                TEMPLATES.c.version,
                _requested("cpu_millicores").label("cpu"),
                _requested("memory_bytes").label("memory"),
                _requested("disk_bytes").label("disk"),
            )
            .select_from(TENANTS)
            .join(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .where(and_(TENANTS.c.node.is_(None), TENANTS.c.deletion_requested_at.is_(None)))
            .order_by(TENANTS.c.revision)
            .limit(limit)
        )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        return [
            PendingTenant(
                row.name, row.revision, f"{row.template}@{row.version}", int(row.cpu), int(row.memory), int(row.disk),
                json.loads(row.labels),
            )
            for row in rows
        ]

    def unbound_deletions(self, *, limit: int = 500) -> list[str]:
        query = (
            select(TENANTS.c.name)
            .where(and_(TENANTS.c.node.is_(None), TENANTS.c.deletion_requested_at.is_not(None)))
            .order_by(TENANTS.c.deletion_requested_at, TENANTS.c.name)
            .limit(limit)
        )
        with self.session.read() as conn:
            return list(conn.execute(query).scalars())

    def bind_many(self, bindings: Sequence[Binding]) -> BindResult:
        if not bindings:
            return BindResult([], [], [])
        names = sorted({b.node for b in bindings})
        bound: list[Binding] = []
        taken: list[str] = []
        no_room: list[Binding] = []
        with self.session.write() as conn:
            # Node rows first, then tenants: the same lock order as every other writer (no deadlock).
            nodes = {
                row.name: row
                for row in conn.execute(select(NODES).where(NODES.c.name.in_(names)).with_for_update()).all()
            }
            used = {
                row.node: [int(row.tenants), int(row.cpu), int(row.memory), int(row.disk)]
                for row in conn.execute(usage_query().where(TENANTS.c.node.in_(names)).group_by(TENANTS.c.node))
            }
            accepted: dict[str, list[Binding]] = {}
            for binding in bindings:
                node = nodes.get(binding.node)
                counts = used.setdefault(binding.node, [0, 0, 0, 0])
                fits = node is not None and (
                    counts[0] + 1 <= node.alloc_tenants
                    and counts[1] + binding.cpu_millicores <= node.alloc_cpu_millicores
                    and counts[2] + binding.memory_bytes <= node.alloc_memory_bytes
                    and counts[3] + binding.disk_bytes <= node.alloc_disk_bytes
                )
                if not fits:
                    no_room.append(binding)
                    continue
                counts[0] += 1
                counts[1] += binding.cpu_millicores
                counts[2] += binding.memory_bytes
                counts[3] += binding.disk_bytes
                accepted.setdefault(binding.node, []).append(binding)
            for node_name, group in accepted.items():
                by_name = {b.name: b for b in group}
                rows = conn.execute(
                    TENANTS.update()
                    .where(
                        and_(
                            TENANTS.c.name.in_(list(by_name)),
                            TENANTS.c.node.is_(None),
                            TENANTS.c.deletion_requested_at.is_(None),
                        )
                    )
                    .values(node=node_name)
                    .returning(TENANTS.c.name)
                ).all()
                won = {row.name for row in rows}
                bound.extend(b for n, b in by_name.items() if n in won)
                taken.extend(n for n in by_name if n not in won)
            # The binding and its event commit together: whoever sees the binding sees why.
            append_events(
                conn,
                [
                    Event(tenant=b.name, node=b.node, reason="Scheduled", message=f"bound to {b.node} by the scheduler")
                    for b in bound
                ],
            )
        return BindResult(bound, taken, no_room)

    def statuses_on(self, node: str) -> list[tuple[str, TenantStatus | None]]:
        query = (
            select(TENANTS.c.name, *STATUS_COLUMNS)
            .select_from(TENANTS)
            .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
            .where(TENANTS.c.node == node)
            .order_by(TENANTS.c.name)
        )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        return [(row.name, status_from_row(row)) for row in rows]

    def write_statuses(
        self, statuses: Sequence[tuple[str, TenantStatus]], events: Sequence[Event] = (), *, chunk: int = 100
    ) -> None:
        parameters = [status_parameters(name, status, None) for name, status in statuses]
        for start in range(0, max(len(parameters), len(events)), chunk):
            if start:
                # Leave the lock free a moment between chunks: SQLite's busy handler polls, so a raw SQL
                # writer (the billing system's shell, 5 s timeout) starves if the chunks come back to back.
                time.sleep(_CHUNK_GAP_SECONDS)
            with self.session.write() as conn:
                write_statuses(conn, parameters[start : start + chunk])
                append_events(conn, events[start : start + chunk])

    def bindings(self) -> dict[str, str]:
        with self.session.read() as conn:
            rows = conn.execute(select(TENANTS.c.name, TENANTS.c.node).where(TENANTS.c.node.is_not(None))).all()
        return {row.name: row.node for row in rows}

    def tenants_on(self, node: str) -> list[str]:
        with self.session.read() as conn:
            return list(conn.execute(select(TENANTS.c.name).where(TENANTS.c.node == node).order_by(TENANTS.c.name))
                        .scalars())

"""Nodes, leases and bindings of a fleet: the coordination half of the store.

Why it exists: with several agents and schedulers sharing one database, every decision that two processes
could take at once is a compare-and-set here (a lease is taken only when free or expired, a tenant is
bound only while unbound and only if the node still has room), so no process needs to trust another's
memory. Lease times come from the database's clock. What it must never do: decide placement (that is the
scheduler's pure code) or touch a host.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Integer, Text, and_, func, literal, literal_column, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from specs import DriverInfo, Event, NodeCapacity, NotFound, TenantStatus
from state.nodes_schema import LEASES, NODES
from state.schema import STATUS, TEMPLATES, TENANTS
from state.store import _UPSERT_STATUS, STATUS_COLUMNS, Store, _status_from_row, status_parameters

NODE_LEASE_PREFIX = "node/"
SCHEDULER_LEASE = "scheduler"


@dataclass(frozen=True)
class Allocatable:
    """What the scheduler may hand out on a node: capacity after reserves and overcommit."""

    cpu_millicores: int
    memory_bytes: int
    disk_bytes: int
    tenants: int


@dataclass(frozen=True)
class NodeRegistration:
    name: str
    labels: dict[str, str]
    driver: DriverInfo
    capacity: NodeCapacity
    allocatable: Allocatable
    templates: tuple[str, ...]  # name@version of every template the node holds


@dataclass(frozen=True)
class Usage:
    cpu_millicores: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    tenants: int = 0


@dataclass(frozen=True)
class NodeRecord:
    name: str
    labels: dict[str, str]
    driver: str
    capacity: NodeCapacity
    allocatable: Allocatable
    templates: tuple[str, ...]
    cordoned: bool
    ready: bool
    not_ready_reason: str
    heartbeat_age: float  # seconds since the last heartbeat, on the database's clock
    used: Usage = field(default_factory=Usage)


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


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    expires_in: float
    transitions: int


class NodeStore:
    """Nodes, leases and bindings over a `Store`'s engine (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._now = literal_column(f"({store.dialect.epoch_now_sql()})", type_=Float)

    # -- leases ------------------------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew `name` for `holder` for `ttl` seconds: only when free, expired, or already ours."""
        now = self._now
        with self.store._write() as conn:
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
            insert = pg_insert if self.store.dialect.name == "postgresql" else sqlite_insert
            created = conn.execute(
                insert(LEASES)
                .from_select(
                    ["name", "holder", "renewed_at", "expires_at"],
                    select(literal(name, Text), literal(holder, Text), now, now + ttl),
                )
                .on_conflict_do_nothing(index_elements=["name"])
                .returning(LEASES.c.name)
            ).first()
            return created is not None

    def take_over_lease(self, name: str, dead_holder: str, holder: str, ttl: float) -> bool:
        """Compare-and-set the lease from a holder known to be dead to `holder`, before it expires."""
        now = self._now
        with self.store._write() as conn:
            taken = conn.execute(
                LEASES.update()
                .where(and_(LEASES.c.name == name, LEASES.c.holder == dead_holder))
                .values(renewed_at=now, expires_at=now + ttl, transitions=LEASES.c.transitions + 1, holder=holder)
                .returning(LEASES.c.name)
            ).first()
        return taken is not None

    def release_lease(self, name: str, holder: str) -> None:
        with self.store._write() as conn:
            conn.execute(LEASES.delete().where(and_(LEASES.c.name == name, LEASES.c.holder == holder)))

    def lease(self, name: str) -> Lease | None:
        with self.store._read() as conn:
            row = conn.execute(
                select(LEASES, (LEASES.c.expires_at - self._now).label("expires_in")).where(LEASES.c.name == name)
            ).first()
        return None if row is None else Lease(row.name, row.holder, float(row.expires_in), row.transitions)

    # -- nodes -------------------------------------------------------------------------------------
    def register(self, registration: NodeRegistration, holder: str, ttl: float) -> bool:
        """Write what the node is and take its heartbeat lease. False when another live agent holds it."""
        if not self.acquire_lease(NODE_LEASE_PREFIX + registration.name, holder, ttl):
            return False
        capacity, allocatable = registration.capacity, registration.allocatable
        values: dict[str, Any] = {
            "labels": json.dumps(registration.labels, sort_keys=True),
            "driver": registration.driver.name,
            "driver_info": registration.driver.model_dump_json(),
            "cpu_millicores": capacity.cpu_millicores,
            "memory_bytes": capacity.memory_bytes,
            "disk_bytes": capacity.disk_bytes,
            "max_tenants": capacity.max_tenants,
            "alloc_cpu_millicores": allocatable.cpu_millicores,
            "alloc_memory_bytes": allocatable.memory_bytes,
            "alloc_disk_bytes": allocatable.disk_bytes,
            "alloc_tenants": allocatable.tenants,
            "templates": json.dumps(sorted(registration.templates)),
            "ksm_pages_shared": capacity.ksm_pages_shared,
            "ksm_pages_sharing": capacity.ksm_pages_sharing,
            "ready": True,
            "not_ready_reason": "",
            "heartbeat_at": self._now,
        }
        with self.store._write() as conn:
            updated = conn.execute(NODES.update().where(NODES.c.name == registration.name).values(**values)).rowcount
            if not updated:
                conn.execute(NODES.insert().values(name=registration.name, **values))
        return True

    def heartbeat(
        self, name: str, holder: str, ttl: float, *, templates: Sequence[str] | None = None,
        capacity: NodeCapacity | None = None,
    ) -> tuple[bool, bool]:
        """Renew the node's lease and mark it Ready. Returns (still ours, was NotReady before)."""
        if not self.acquire_lease(NODE_LEASE_PREFIX + name, holder, ttl):
            return False, False
        values: dict[str, Any] = {"ready": True, "not_ready_reason": "", "heartbeat_at": self._now}
        if templates is not None:
            values["templates"] = json.dumps(sorted(templates))
        if capacity is not None:
            values["ksm_pages_shared"] = capacity.ksm_pages_shared
            values["ksm_pages_sharing"] = capacity.ksm_pages_sharing
        with self.store._write() as conn:
            was_ready = conn.execute(select(NODES.c.ready).where(NODES.c.name == name)).scalar_one_or_none()
            conn.execute(NODES.update().where(NODES.c.name == name).values(**values))
        return True, was_ready is False

    def expire_nodes(self) -> list[str]:
        """Mark NotReady every Ready node whose heartbeat lease expired; return their names."""
        lease_alive = (
            select(LEASES.c.name)
            .where(
                and_(LEASES.c.name == literal(NODE_LEASE_PREFIX, Text) + NODES.c.name, LEASES.c.expires_at >= self._now)
            )
            .exists()
        )
        with self.store._write() as conn:
            rows = conn.execute(
                NODES.update()
                .where(and_(NODES.c.ready.is_(True), ~lease_alive))
                .values(ready=False, not_ready_reason="the node's heartbeat lease expired")
                .returning(NODES.c.name)
            ).all()
        return sorted(row.name for row in rows)

    def set_cordoned(self, name: str, cordoned: bool) -> None:
        with self.store._write() as conn:
            if not conn.execute(NODES.update().where(NODES.c.name == name).values(cordoned=cordoned)).rowcount:
                raise NotFound(f"node {name} is not registered; see fleet nodes")

    def list_nodes(self) -> list[NodeRecord]:
        usage = self._usage_query().group_by(TENANTS.c.node)
        with self.store._read() as conn:
            rows = conn.execute(select(NODES, (self._now - NODES.c.heartbeat_at).label("age")).order_by(NODES.c.name))
            nodes = rows.all()
            used = {row.node: row for row in conn.execute(usage).all()}
        return [self._node_from_row(row, used.get(row.name)) for row in nodes]

    def usage(self) -> dict[str, Usage]:
        """What the tenants bound to each node ask for, by node name, registered or not (a single-node
        `fleet up` binds to its node without registering it)."""
        with self.store._read() as conn:
            rows = conn.execute(self._usage_query().group_by(TENANTS.c.node)).all()
        return {row.node: Usage(int(row.cpu), int(row.memory), int(row.disk), int(row.tenants)) for row in rows}

    def get_node(self, name: str) -> NodeRecord:
        for node in self.list_nodes():
            if node.name == name:
                return node
        raise NotFound(f"node {name} is not registered; see fleet nodes")

    @staticmethod
    def _usage_query() -> Any:
        return (
            select(
                TENANTS.c.node,
                func.count().label("tenants"),
                func.coalesce(func.sum(func.coalesce(TENANTS.c.cpu_millicores, TEMPLATES.c.cpu_millicores)), 0).label(
                    "cpu"
                ),
                func.coalesce(func.sum(func.coalesce(TENANTS.c.memory_bytes, TEMPLATES.c.memory_bytes)), 0).label(
                    "memory"
                ),
                func.coalesce(func.sum(func.coalesce(TENANTS.c.disk_bytes, TEMPLATES.c.disk_bytes)), 0).label("disk"),
            )
            .select_from(TENANTS)
            .outerjoin(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .where(TENANTS.c.node.is_not(None))
        )

    @staticmethod
    def _node_from_row(row: Any, used: Any) -> NodeRecord:
        return NodeRecord(
            name=row.name,
            labels=json.loads(row.labels),
            driver=row.driver,
            capacity=NodeCapacity(
                cpu_millicores=row.cpu_millicores, memory_bytes=row.memory_bytes, disk_bytes=row.disk_bytes,
                max_tenants=row.max_tenants, ksm_pages_shared=row.ksm_pages_shared,
                ksm_pages_sharing=row.ksm_pages_sharing,
            ),
            allocatable=Allocatable(
                row.alloc_cpu_millicores, row.alloc_memory_bytes, row.alloc_disk_bytes, row.alloc_tenants
            ),
            templates=tuple(json.loads(row.templates)),
            cordoned=bool(row.cordoned),
            ready=bool(row.ready),
            not_ready_reason=row.not_ready_reason,
            heartbeat_age=float(row.age),
            used=Usage() if used is None else Usage(int(used.cpu), int(used.memory), int(used.disk), int(used.tenants)),
        )

    # -- scheduling --------------------------------------------------------------------------------
    def pending(self, *, limit: int = 100_000) -> list[PendingTenant]:
        """Unbound tenants not being deleted, oldest write first, with their requests resolved."""
        query = (
            select(
                TENANTS.c.name,
                TENANTS.c.revision,
                TENANTS.c.labels,
                TENANTS.c.template,
                TEMPLATES.c.version,
                func.coalesce(TENANTS.c.cpu_millicores, TEMPLATES.c.cpu_millicores).label("cpu"),
                func.coalesce(TENANTS.c.memory_bytes, TEMPLATES.c.memory_bytes).label("memory"),
                func.coalesce(TENANTS.c.disk_bytes, TEMPLATES.c.disk_bytes).label("disk"),
            )
            .select_from(TENANTS)
            .join(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .where(and_(TENANTS.c.node.is_(None), TENANTS.c.deletion_requested_at.is_(None)))
            .order_by(TENANTS.c.revision)
            .limit(limit)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).all()
        return [
            PendingTenant(
                row.name, row.revision, f"{row.template}@{row.version}", int(row.cpu), int(row.memory), int(row.disk),
                json.loads(row.labels),
            )
            for row in rows
        ]

    def unbound_deletions(self, *, limit: int = 500) -> list[str]:
        """Tenants deleted before any node was bound to them, oldest request first: nothing of theirs is on
        any host, so no agent will ever finish their delete (the scheduler does, with `Store.finalize_delete`
        and `only_unbound`)."""
        query = (
            select(TENANTS.c.name)
            .where(and_(TENANTS.c.node.is_(None), TENANTS.c.deletion_requested_at.is_not(None)))
            .order_by(TENANTS.c.deletion_requested_at, TENANTS.c.name)
            .limit(limit)
        )
        with self.store._read() as conn:
            return list(conn.execute(query).scalars())

    def bind_many(self, bindings: Sequence[Binding]) -> BindResult:
        """Bind in one transaction, each a compare-and-set (only while unbound and not being deleted), and
        only as far as each node still has room, re-counted under the node's row lock: two schedulers can
        neither double-book a tenant nor overfill a node."""
        if not bindings:
            return BindResult([], [], [])
        names = sorted({b.node for b in bindings})
        bound: list[Binding] = []
        taken: list[str] = []
        no_room: list[Binding] = []
        with self.store._write() as conn:
            # Node rows first, then tenants: the same lock order as every other writer (no deadlock).
            nodes = {
                row.name: row
                for row in conn.execute(select(NODES).where(NODES.c.name.in_(names)).with_for_update()).all()
            }
            used = {
                row.node: [int(row.tenants), int(row.cpu), int(row.memory), int(row.disk)]
                for row in conn.execute(self._usage_query().where(TENANTS.c.node.in_(names)).group_by(TENANTS.c.node))
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
            self.store._append_events(
                conn,
                [
                    Event(tenant=b.name, node=b.node, reason="Scheduled", message=f"bound to {b.node} by the scheduler")
                    for b in bound
                ],
            )
        return BindResult(bound, taken, no_room)

    def statuses_on(self, node: str) -> list[tuple[str, TenantStatus | None]]:
        """Every tenant bound to `node` with its last status (for marking them Unknown)."""
        query = (
            select(
                TENANTS.c.name,
                *STATUS_COLUMNS,
            )
            .select_from(TENANTS)
            .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
            .where(TENANTS.c.node == node)
            .order_by(TENANTS.c.name)
        )
        with self.store._read() as conn:
            rows = conn.execute(query).all()
        return [(row.name, _status_from_row(row)) for row in rows]

    def write_statuses(
        self, statuses: Sequence[tuple[str, TenantStatus]], events: Sequence[Event] = (), *, chunk: int = 100
    ) -> None:
        """Many statuses (and events): what a node going NotReady, or a pass of unschedulable tenants,
        writes. In transactions of at most `chunk` of each, the values built before the write lock is
        taken: thousands at once would hold SQLite's lock for seconds, and a raw SQL writer waiting on it
        would time out."""
        parameters = [status_parameters(name, status, None) for name, status in statuses]
        for start in range(0, max(len(parameters), len(events)), chunk):
            with self.store._write() as conn:
                if parameters[start : start + chunk]:
                    conn.execute(_UPSERT_STATUS, parameters[start : start + chunk])
                self.store._append_events(conn, events[start : start + chunk])

    def bindings(self) -> dict[str, str]:
        """Every bound tenant and its node."""
        with self.store._read() as conn:
            rows = conn.execute(select(TENANTS.c.name, TENANTS.c.node).where(TENANTS.c.node.is_not(None))).all()
        return {row.name: row.node for row in rows}

    def tenants_on(self, node: str) -> list[str]:
        with self.store._read() as conn:
            return list(conn.execute(select(TENANTS.c.name).where(TENANTS.c.node == node).order_by(TENANTS.c.name))
                        .scalars())


__all__ = [
    "NODE_LEASE_PREFIX",
    "SCHEDULER_LEASE",
    "Allocatable",
    "BindResult",
    "Binding",
    "Lease",
    "NodeRecord",
    "NodeRegistration",
    "NodeStore",
    "PendingTenant",
    "Usage",
]

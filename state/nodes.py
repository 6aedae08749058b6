"""Nodes of a fleet, and `NodeStore`: the coordination half of the store (nodes, leases, bindings).

Why it exists: with several agents and schedulers sharing one database, every decision that two processes
could take at once is a compare-and-set here (a lease is taken only when free or expired, a tenant is
bound only while unbound and only if the node still has room), so no process needs to trust another's
memory. Lease times come from the database's clock. What it must never do: decide placement (that is the
scheduler's pure code) or touch a host. Leases live in `state.leases`, bindings and the scheduler's reads
in `state.bindings`; `NodeStore` delegates to them.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, and_, literal, select

from specs import DriverInfo, Event, NodeCapacity, NotFound, TenantStatus
from state.bindings import Binding, Bindings, BindResult, PendingTenant, usage_query
from state.leases import Lease, Leases, database_now
from state.nodes_schema import LEASES, NODES
from state.schema import TENANTS
from state.store import Store

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
    sleeping: int = 0  # of `tenants`: asleep (their cpu and memory are not counted)

    @property
    def running(self) -> int:
        return self.tenants - self.sleeping


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


class NodeStore:
    """Nodes, leases and bindings over a `Store`'s engine (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session = store.session
        self._now = database_now(store.session)
        self._leases = Leases(store.session)
        self._bindings = Bindings(store.session)

    # -- leases ------------------------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew `name` for `holder` for `ttl` seconds: only when free, expired, or already ours."""
        return self._leases.acquire(name, holder, ttl)

    def take_over_lease(self, name: str, dead_holder: str, holder: str, ttl: float) -> bool:
        """Compare-and-set the lease from a holder known to be dead to `holder`, before it expires."""
        return self._leases.take_over(name, dead_holder, holder, ttl)

    def release_lease(self, name: str, holder: str) -> None:
        self._leases.release(name, holder)

    def lease(self, name: str) -> Lease | None:
        return self._leases.get(name)

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
            "disk_shared_bytes": capacity.disk_shared_bytes,
            "ready": True,
            "not_ready_reason": "",
            "heartbeat_at": self._now,
        }
        with self.session.write() as conn:
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
            values["disk_shared_bytes"] = capacity.disk_shared_bytes
        with self.session.write() as conn:
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
        with self.session.write() as conn:
            rows = conn.execute(
                NODES.update()
                .where(and_(NODES.c.ready.is_(True), ~lease_alive))
                .values(ready=False, not_ready_reason="the node's heartbeat lease expired")
                .returning(NODES.c.name)
            ).all()
        return sorted(row.name for row in rows)

    def set_cordoned(self, name: str, cordoned: bool) -> None:
        with self.session.write() as conn:
            if not conn.execute(NODES.update().where(NODES.c.name == name).values(cordoned=cordoned)).rowcount:
                raise NotFound(f"node {name} is not registered; see fleet nodes")

    def list_nodes(self) -> list[NodeRecord]:
        usage = usage_query().group_by(TENANTS.c.node)
        with self.session.read() as conn:
            rows = conn.execute(select(NODES, (self._now - NODES.c.heartbeat_at).label("age")).order_by(NODES.c.name))
            nodes = rows.all()
            used = {row.node: row for row in conn.execute(usage).all()}
        return [_node_from_row(row, used.get(row.name)) for row in nodes]

    def usage(self) -> dict[str, Usage]:
        """What the tenants bound to each node ask for, by node name, registered or not (a single-node
        `fleet up` binds to its node without registering it)."""
        with self.session.read() as conn:
            rows = conn.execute(usage_query().group_by(TENANTS.c.node)).all()
        return {row.node: _usage(row) for row in rows}

    def get_node(self, name: str) -> NodeRecord:
        for node in self.list_nodes():
            if node.name == name:
                return node
        raise NotFound(f"node {name} is not registered; see fleet nodes")

    # -- scheduling and bindings -------------------------------------------------------------------
    def pending(self, *, limit: int = 100_000) -> list[PendingTenant]:
        """Unbound tenants not being deleted, oldest write first, with their requests resolved."""
        return self._bindings.pending(limit=limit)

    def unbound_deletions(self, *, limit: int = 500) -> list[str]:
        """Tenants deleted before any node was bound to them, oldest request first: nothing of theirs is on
        any host, so no agent will ever finish their delete (the scheduler does, with `Store.finalize_delete`
        and `only_unbound`)."""
        return self._bindings.unbound_deletions(limit=limit)

    def bind_many(self, bindings: Sequence[Binding]) -> BindResult:
        """Bind in one transaction, each a compare-and-set (only while unbound and not being deleted), and
        only as far as each node still has room, re-counted under the node's row lock: two schedulers can
        neither double-book a tenant nor overfill a node."""
        return self._bindings.bind_many(bindings)

    def statuses_on(self, node: str) -> list[tuple[str, TenantStatus | None]]:
        """Every tenant bound to `node` with its last status (for marking them Unknown)."""
        return self._bindings.statuses_on(node)

    def write_statuses(
        self, statuses: Sequence[tuple[str, TenantStatus]], events: Sequence[Event] = (), *, chunk: int = 100
    ) -> None:
        """Many statuses (and events): what a node going NotReady, or a pass of unschedulable tenants,
        writes. In transactions of at most `chunk` of each, the values built before the write lock is
        taken: thousands at once would hold SQLite's lock for seconds, and a raw SQL writer waiting on it
        would time out."""
        self._bindings.write_statuses(statuses, events, chunk=chunk)

    def bindings(self) -> dict[str, str]:
        """Every bound tenant and its node."""
        return self._bindings.bindings()

    def tenants_on(self, node: str) -> list[str]:
        return self._bindings.tenants_on(node)


def _node_from_row(row: Any, used: Any) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        labels=json.loads(row.labels),
        driver=row.driver,
        capacity=NodeCapacity(
            cpu_millicores=row.cpu_millicores, memory_bytes=row.memory_bytes, disk_bytes=row.disk_bytes,
            max_tenants=row.max_tenants, ksm_pages_shared=row.ksm_pages_shared,
            ksm_pages_sharing=row.ksm_pages_sharing, disk_shared_bytes=row.disk_shared_bytes,
        ),
        allocatable=Allocatable(
            row.alloc_cpu_millicores, row.alloc_memory_bytes, row.alloc_disk_bytes, row.alloc_tenants
        ),
        templates=tuple(json.loads(row.templates)),
        cordoned=bool(row.cordoned),
        ready=bool(row.ready),
        not_ready_reason=row.not_ready_reason,
        heartbeat_age=float(row.age),
        used=Usage() if used is None else _usage(used),
    )


def _usage(row: Any) -> Usage:
    return Usage(int(row.cpu), int(row.memory), int(row.disk), int(row.tenants), int(row.sleeping))


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

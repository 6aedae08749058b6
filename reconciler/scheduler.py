"""The scheduler: binds each unbound tenant to one node, and notices nodes that stopped heartbeating.

Why it exists: on a fleet, placement is one decision for all nodes, taken by one active scheduler (a
leader lease in the store). Filtering and scoring are pure functions over a snapshot (`place`), so they
are tested without a database; the loop writes bindings with a compare-and-set that also re-checks room,
so a second scheduler that wrongly believes it leads still cannot double-book a tenant or overfill a node.
What it must never do: move a bound tenant (its data lives on its node; moving is explicit), or reconcile
containers (agents do).
"""

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from loguru import logger

from reconciler.clock import Clock, MonotonicClock
from reconciler.conditions import node_lost_status, unschedulable_status
from reconciler.metrics import Metrics
from specs import Event, FleetError, TenantStatus
from state import Store
from state.nodes import SCHEDULER_LEASE, Binding, NodeRecord, NodeStore, PendingTenant

SELECTOR_PREFIX = "node.fleet/"  # a tenant label node.fleet/zone=eu asks for a node labelled zone=eu


class Strategy(StrEnum):
    BINPACK = "binpack"  # fill the fullest node that fits: fewer nodes busy, room kept for big tenants
    SPREAD = "spread"  # the emptiest node: load and failure spread evenly


@dataclass
class NodeSlot:
    """A node as placement sees it, with what it has handed out so far in this pass."""

    name: str
    labels: dict[str, str]
    templates: frozenset[str]
    ready: bool
    cordoned: bool
    cpu: int
    memory: int
    disk: int
    tenants: int
    used_cpu: int = 0
    used_memory: int = 0
    used_disk: int = 0
    used_tenants: int = 0

    @classmethod
    def of(cls, node: NodeRecord, max_tenants_per_node: int | None = None) -> "NodeSlot":
        slots = node.allocatable.tenants
        if max_tenants_per_node is not None:
            slots = min(slots, max_tenants_per_node)
        return cls(
            node.name, node.labels, frozenset(node.templates), node.ready, node.cordoned,
            node.allocatable.cpu_millicores, node.allocatable.memory_bytes, node.allocatable.disk_bytes, slots,
            node.used.cpu_millicores, node.used.memory_bytes, node.used.disk_bytes, node.used.tenants,
        )


# Each filter: (name used in the "why" message, predicate that is True when the node is rejected).
def _selector(tenant: PendingTenant) -> dict[str, str]:
    return {k.removeprefix(SELECTOR_PREFIX): v for k, v in tenant.labels.items() if k.startswith(SELECTOR_PREFIX)}


def rejection(node: NodeSlot, tenant: PendingTenant) -> str | None:
    """Why `node` cannot take `tenant` (the first filter that fails), or None when it can."""
    if not node.ready:
        return "not Ready"
    if node.cordoned:
        return "cordoned"
    selector = _selector(tenant)
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return "labels do not match the tenant's node selector"
    if tenant.template not in node.templates:
        return f"template {tenant.template} not present"
    if node.used_tenants + 1 > node.tenants:
        return "no tenant slots left"
    if node.used_cpu + tenant.cpu_millicores > node.cpu:
        return "insufficient cpu"
    if node.used_memory + tenant.memory_bytes > node.memory:
        return "insufficient memory"
    if node.used_disk + tenant.disk_bytes > node.disk:
        return "insufficient disk"
    return None


def utilisation(node: NodeSlot, tenant: PendingTenant) -> float:
    """How full the node would be with the tenant, 0..1, averaged over cpu, memory, disk and slots."""
    fractions = [
        (node.used_cpu + tenant.cpu_millicores) / max(node.cpu, 1),
        (node.used_memory + tenant.memory_bytes) / max(node.memory, 1),
        (node.used_disk + tenant.disk_bytes) / max(node.disk, 1),
        (node.used_tenants + 1) / max(node.tenants, 1),
    ]
    return sum(fractions) / len(fractions)


def score(node: NodeSlot, tenant: PendingTenant, strategy: Strategy) -> float:
    """Higher is better."""
    full = utilisation(node, tenant)
    return full if strategy == Strategy.BINPACK else -full


def why_unschedulable(reasons: Counter[str], nodes: int) -> str:
    if nodes == 0:
        return "0/0 nodes are available: no node is registered (start `fleet agent` on each node)"
    parts = ", ".join(
        f"{count} {'node' if count == 1 else 'nodes'} {reason}" for reason, count in sorted(reasons.items())
    )
    return f"0/{nodes} nodes are available: {parts}"


@dataclass(frozen=True)
class Placement:
    bindings: list[Binding]
    unschedulable: dict[str, str]  # tenant -> why


def place(tenants: list[PendingTenant], nodes: list[NodeSlot], strategy: Strategy) -> Placement:
    """Choose a node for each tenant in order, counting what earlier choices used. Pure: no I/O."""
    bindings: list[Binding] = []
    unschedulable: dict[str, str] = {}
    for tenant in tenants:
        best: NodeSlot | None = None
        best_score = 0.0
        reasons: Counter[str] = Counter()
        for node in nodes:
            reason = rejection(node, tenant)
            if reason is not None:
                reasons[reason] += 1
                continue
            value = score(node, tenant, strategy)
            if best is None or value > best_score:
                best, best_score = node, value
        if best is None:
            unschedulable[tenant.name] = why_unschedulable(reasons, len(nodes))
            continue
        best.used_cpu += tenant.cpu_millicores
        best.used_memory += tenant.memory_bytes
        best.used_disk += tenant.disk_bytes
        best.used_tenants += 1
        bindings.append(
            Binding(tenant.name, best.name, tenant.cpu_millicores, tenant.memory_bytes, tenant.disk_bytes)
        )
    return Placement(bindings, unschedulable)


# -- the loop ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerConfig:
    identity: str
    strategy: Strategy = Strategy.BINPACK
    lease_seconds: float = 10.0
    interval_seconds: float = 1.0
    batch: int = 250  # bindings per transaction: short, so a raw SQL writer on SQLite never waits long
    max_tenants_per_node: int | None = None


@dataclass
class PassResult:
    leader: bool = False
    bound: int = 0
    unschedulable: int = 0
    finalized: int = 0  # deletes of unbound tenants finished
    not_ready: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        store: Store,
        config: SchedulerConfig,
        on_bound: Callable[[str, str], None] | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`on_bound(tenant, node)` is told of each binding as it commits: an agent in the same process
        (`fleet up`) takes the tenant at once instead of when the store's change feed wakes it. `metrics`:
        where bindings and failures are counted (a private set when None)."""
        self._on_bound = on_bound
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock: Clock = clock or MonotonicClock()
        self.store = store
        self.nodes = NodeStore(store)
        self.config = config
        self.leader = False
        self.bound_total = 0
        self._said: dict[str, str] = {}  # tenant -> the unschedulable message last written
        self._renewed = 0.0  # monotonic time of the last lease renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = logger.bind(scheduler=config.identity)

    def run_once(self) -> PassResult:
        """One pass: keep (or try to take) the leader lease; if leading, expire nodes and bind tenants."""
        result = PassResult()
        now = self.clock.now()
        if self.leader and now - self._renewed < self.config.lease_seconds / 3:
            leader = True  # renewed recently: the lease is ours for at least two thirds of its time
        else:
            leader = self.nodes.acquire_lease(SCHEDULER_LEASE, self.config.identity, self.config.lease_seconds)
            self._renewed = now if leader else 0.0
        if leader != self.leader:
            self._log.info("Became the active scheduler" if leader else "Lost the scheduler lease; standing by")
            self._said.clear()
        self.leader = result.leader = leader
        self.metrics.scheduler_leader.set(1 if leader else 0)
        if not leader:
            return result
        result.not_ready = self.expire_nodes()
        result.finalized = self.finalize_unbound_deletions()
        bound, unschedulable = self.schedule()
        result.bound, result.unschedulable = bound, unschedulable
        return result

    def finalize_unbound_deletions(self) -> int:
        """Finish the delete of each tenant deleted before it was bound: no node has anything of it, so no
        agent would ever finish it. A compare-and-set on "still unbound": a tenant bound meanwhile is left
        to its node's agent. The receipt says nothing was made, and the tombstone tells watchers."""
        finalized = 0
        for name in self.nodes.unbound_deletions():
            events = [
                Event(tenant=name, reason="Deleted", action="Delete",
                      message="deleted before it was bound to a node: nothing was made on any host, so nothing "
                      "was left to remove", details={"removed": [], "already_absent": []}),
                Event(tenant=name, reason="Finalized",
                      message="everything the tenant had is gone; the record is removed"),
            ]
            if self.store.finalize_delete(name, events, only_unbound=True):
                finalized += 1
                self._said.pop(name, None)
        if finalized:
            self.metrics.scheduler_finalized.inc(finalized)
            self._log.bind(tenants=finalized).info("Finalized deletes of unbound tenants")
        return finalized

    def expire_nodes(self) -> list[str]:
        """Nodes whose heartbeat lease ran out become NotReady; their tenants' Ready turns Unknown. Their
        data stays where it is: nothing is rescheduled."""
        expired = self.nodes.expire_nodes()
        now = self.clock.wall()
        for node in expired:
            statuses: list[tuple[str, TenantStatus]] = []
            events: list[Event] = []
            message = f"node {node} stopped sending heartbeats; the tenant's state is unknown until it is back"
            for name, status in self.nodes.statuses_on(node):
                if status is None:
                    continue
                statuses.append((name, node_lost_status(status, message, now)))
                events.append(Event(tenant=name, node=node, type="Warning", reason="NodeNotReady", message=message))
            self.nodes.write_statuses(statuses, events)
            self.metrics.scheduler_nodes_expired.inc()
            self._log.bind(node=node, tenants=len(statuses)).warning("Marked node NotReady")
        return expired

    def schedule(self) -> tuple[int, int]:
        pending = self.nodes.pending()
        self.metrics.scheduler_pending.set(len(pending))
        if not pending:
            return 0, 0
        records = self.nodes.list_nodes()
        slots = [NodeSlot.of(n, self.config.max_tenants_per_node) for n in records]
        started = time.perf_counter()
        placement = place(pending, slots, self.config.strategy)
        bound = 0
        retry_later: list[str] = []
        for start in range(0, len(placement.bindings), self.config.batch):
            result = self.nodes.bind_many(placement.bindings[start : start + self.config.batch])
            bound += len(result.bound)
            for binding in result.bound:
                self.metrics.scheduler_bindings.labels(node=binding.node).inc()
            if result.no_room:
                self.metrics.scheduler_failures.labels(reason="no_room").inc(len(result.no_room))
            if self._on_bound is not None:
                for binding in result.bound:
                    self._on_bound(binding.name, binding.node)
            retry_later.extend(b.name for b in result.no_room)
        self.bound_total += bound
        self._report_unschedulable(placement.unschedulable)
        if bound:
            self._log.bind(
                bound=bound, pending=len(pending), ms=round((time.perf_counter() - started) * 1000, 1),
                strategy=self.config.strategy.value,
            ).info("Bound tenants")
        return bound, len(placement.unschedulable)

    def _report_unschedulable(self, unschedulable: dict[str, str]) -> None:
        now = self.clock.wall()
        changed = [(name, why) for name, why in unschedulable.items() if self._said.get(name) != why]
        if not changed:
            return
        self.metrics.scheduler_failures.labels(reason="unschedulable").inc(len(changed))
        statuses = [(name, unschedulable_status(why, now)) for name, why in changed]
        events = [Event(tenant=n, type="Warning", reason="FailedScheduling", message=why) for n, why in changed]
        self.nodes.write_statuses(statuses, events)
        self._said.update(changed)
        self._log.bind(tenants=len(changed)).warning("Could not schedule tenants: {}", changed[0][1])

    # -- running -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        listener = self.store.listen()
        try:
            while not self._stop.is_set():
                try:
                    self.run_once()
                except FleetError as error:
                    self._log.warning("Scheduling pass failed, will retry: {}", error)
                    self.leader = False
                    self.metrics.scheduler_leader.set(0)
                # Woken early by a write to tenants (PostgreSQL NOTIFY); renew well inside the lease.
                wait = min(self.config.interval_seconds, self.config.lease_seconds / 3)
                if not self._stop.is_set():
                    listener.wait(wait)
        finally:
            listener.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.leader:
            try:
                self.nodes.release_lease(SCHEDULER_LEASE, self.config.identity)
            except FleetError as error:
                self._log.warning("Could not release the scheduler lease: {}", error)


__all__ = [
    "NodeSlot",
    "Placement",
    "Scheduler",
    "SchedulerConfig",
    "Strategy",
    "place",
    "rejection",
    "score",
]

"""Fleet's Prometheus metrics: what the reconciler, the scheduler and the webhook did (counters and
histograms, counted as it happens), and what the store and the host show (read at scrape time).

Why it is built this way: no global state. One `Metrics` owns one `CollectorRegistry` (never
prometheus_client's process-wide one); `fleet up` makes one and hands it to the controller, executor,
scheduler and web app. Gauges of the store (tenants by phase and node, nodes' room) are a collector that
asks when scraped: the store aggregates in SQL, so they cost a few grouped queries whatever the tenant
count. The host's usage per tenant is read through the driver at each scrape too, and written as text
directly (`UsageExposition`): it is six lines a tenant. Names follow Prometheus' conventions: base units in
the name (`_seconds`, `_bytes`, `_cores`), `_total` on counters. What it must never do: hold a metric in a
module-level variable, or read the host itself (the driver does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drivers import Driver
from specs import FleetError, Phase
from state import Store
from state.aggregates import Aggregates
from state.nodes import NodeStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Driver calls take from under a millisecond (a fake) to seconds (a debootstrap clone); nspawn's clone is
# ~6 ms and its start ~150 ms (HOST.md).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
PAGE_BYTES = 4096


class Metrics:
    """The metrics of one process, on a registry of its own. Counters and histograms are attributes the
    parts that count take at construction; `watch_*` registers what is read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.reconciles = Counter(
            "fleet_reconciles", "Reconcile passes, by how they ended: success, retry (transient error, "
            "backoff), failed (permanent error, recorded), skipped (not this node's, or gone)",
            ["result"], registry=registry,
        )
        self.reconcile_duration = Histogram(
            "fleet_reconcile_duration_seconds", "Time of one reconcile pass (read, plan, act, record)",
            buckets=DURATION_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "fleet_workqueue_wait_duration_seconds", "How long a tenant waited in the work queue before a "
            "worker took it (queue latency)", buckets=QUEUE_BUCKETS, registry=registry,
        )
        self.action_duration = Histogram(
            "fleet_action_duration_seconds", "Time of one driver action (Clone, ApplyResources, ApplyNetwork, "
            "Start, Stop, Delete), failed ones included", ["action", "driver"], buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.action_failures = Counter(
            "fleet_action_failures", "Driver actions that raised an error", ["action", "driver"], registry=registry,
        )
        self.webhook_events = Counter(
            "fleet_webhook_events", "Billing webhook deliveries, by outcome: applied, replayed (an event id "
            "seen before), ignored (not an event Fleet acts on), rejected_signature, invalid, conflict, "
            "unavailable", ["outcome"], registry=registry,
        )
        self.scheduler_bindings = Counter(
            "fleet_scheduler_bindings", "Tenants the scheduler bound to a node", ["node"], registry=registry,
        )
        self.scheduler_failures = Counter(
            "fleet_scheduler_binding_failures", "Bindings that did not happen: unschedulable (no node fits; "
            "counted when the reason changes, as the FailedScheduling event is) or no_room (the node filled "
            "up between placement and the compare-and-set)", ["reason"], registry=registry,
        )
        self.scheduler_finalized = Counter(
            "fleet_scheduler_unbound_deletes_finalized", "Deletes the scheduler finished: tenants deleted before "
            "they were bound to a node (no agent has anything of them to remove)", registry=registry,
        )
        self.scheduler_nodes_expired = Counter(
            "fleet_scheduler_nodes_marked_not_ready", "Nodes the scheduler marked NotReady when their heartbeat "
            "lease ran out", registry=registry,
        )
        self.scheduler_leader = Gauge(
            "fleet_scheduler_leader", "1 while this process's scheduler holds the scheduler lease (is active)",
            registry=registry,
        )
        self.scheduler_pending = Gauge(
            "fleet_scheduler_pending_tenants", "Unbound tenants at the active scheduler's last pass",
            registry=registry,
        )
        for result in ("success", "retry", "failed", "skipped"):
            self.reconciles.labels(result=result)  # every outcome shown from the start, at 0
        self._usage: list[UsageExposition] = []

    # -- read at scrape time --------------------------------------------------------------------------------
    def watch_store(self, store: Store) -> None:
        """Tenants by phase and node, and every node's capacity, allocation and KSM savings."""
        self.registry.register(StoreCollector(store))

    def watch_queue(self, node: str, depth: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.registry.register(QueueCollector(node, depth, waiting))

    def watch_usage(self, node: str, driver: Driver) -> None:
        """Every tenant's usage on this node, read from the host through the driver at each scrape."""
        self._usage.append(UsageExposition(node, driver))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes: the registry's families, then the tenants' usage."""
        return bytes(generate_latest(self.registry)) + b"".join(usage.text() for usage in self._usage)


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.aggregates = Aggregates(store)
        self.nodes = NodeStore(store)

    def collect(self) -> Iterator[Metric]:
        tenants = GaugeMetricFamily(
            "fleet_tenants", "Tenants by phase and by the node they are bound to (node \"\" while unbound)",
            labels=["phase", "node"],
        )
        counts = {(row.phase, row.node or ""): row.tenants for row in self.aggregates.tenants_by_phase_and_node()}
        for known in Phase:  # every phase shown, at 0 when empty, so a query for it never finds nothing
            counts.setdefault((known.value, ""), 0)
        for (phase, node), count in sorted(counts.items()):
            tenants.add_metric([phase, node], count)
        yield tenants
        yield from _node_families(self.nodes)


def _node_families(nodes: NodeStore) -> Iterator[Metric]:
    records = nodes.list_nodes()
    families = {
        "ready": GaugeMetricFamily("fleet_node_ready", "1 when the node's heartbeat is current", labels=["node"]),
        "cordoned": GaugeMetricFamily("fleet_node_cordoned", "1 when new bindings to the node are stopped",
                                      labels=["node"]),
        "heartbeat": GaugeMetricFamily("fleet_node_heartbeat_age_seconds", "Seconds since the node's last "
                                       "heartbeat, on the store's clock", labels=["node"]),
    }
    for record in records:
        families["ready"].add_metric([record.name], 1.0 if record.ready else 0.0)
        families["cordoned"].add_metric([record.name], 1.0 if record.cordoned else 0.0)
        families["heartbeat"].add_metric([record.name], record.heartbeat_age)
    yield from families.values()
    # capacity: what the node has; allocatable: what the scheduler may hand out (after overcommit);
    # allocated: what the tenants bound to it ask for (their limits).
    for kind, describe in (
        ("capacity", "the node has"),
        ("allocatable", "the scheduler may hand out on the node (capacity after overcommit)"),
        ("allocated", "the tenants bound to the node ask for"),
    ):
        cpu = GaugeMetricFamily(f"fleet_node_{kind}_cpu_cores", f"CPU cores {describe}", labels=["node"])
        memory = GaugeMetricFamily(f"fleet_node_{kind}_memory_bytes", f"Memory {describe}", labels=["node"])
        disk = GaugeMetricFamily(f"fleet_node_{kind}_disk_bytes", f"Disk {describe}", labels=["node"])
        slots = GaugeMetricFamily(f"fleet_node_{kind}_tenants", f"Tenant slots {describe}", labels=["node"])
        for record in records:
            values = {
                "capacity": (record.capacity.cpu_millicores, record.capacity.memory_bytes,
                             record.capacity.disk_bytes, record.capacity.max_tenants),
                "allocatable": (record.allocatable.cpu_millicores, record.allocatable.memory_bytes,
                                record.allocatable.disk_bytes, record.allocatable.tenants),
                "allocated": (record.used.cpu_millicores, record.used.memory_bytes, record.used.disk_bytes,
                              record.used.tenants),
            }[kind]
            cpu.add_metric([record.name], values[0] / 1000)
            memory.add_metric([record.name], values[1])
            disk.add_metric([record.name], values[2])
            slots.add_metric([record.name], values[3])
        yield from (cpu, memory, disk, slots)
    shared = GaugeMetricFamily("fleet_node_ksm_shared_bytes", "Memory KSM keeps as one shared copy of identical "
                               "pages (pages_shared)", labels=["node"])
    saved = GaugeMetricFamily("fleet_node_ksm_saved_bytes", "Memory KSM saved by merging identical pages "
                              "(pages_sharing)", labels=["node"])
    # Only nodes whose driver measures it: a node without the series is "not measured", never 0.
    cow = GaugeMetricFamily("fleet_node_disk_shared_bytes", "Template bytes the node's tenants refer to without "
                            "a copy of their own (copy-on-write): each template's size times its clones, an upper "
                            "bound", labels=["node"])
    for record in records:
        shared.add_metric([record.name], record.capacity.ksm_pages_shared * PAGE_BYTES)
        saved.add_metric([record.name], record.capacity.ksm_pages_sharing * PAGE_BYTES)
        if record.capacity.disk_shared_bytes is not None:
            cow.add_metric([record.name], record.capacity.disk_shared_bytes)
    yield from (shared, saved, cow)


@dataclass(frozen=True)
class QueueCollector(Collector):
    node: str
    depth: Callable[[], int]
    waiting: Callable[[], int]

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("fleet_workqueue_depth", "Tenants queued for a worker now", labels=["node"])
        depth.add_metric([self.node], self.depth())
        waiting = GaugeMetricFamily("fleet_workqueue_retries_waiting", "Tenants waiting out a retry backoff",
                                    labels=["node"])
        waiting.add_metric([self.node], self.waiting())
        yield from (depth, waiting)


# (metric name, help, Usage field, counter?)
USAGE_FAMILIES: Sequence[tuple[str, str, str, bool]] = (
    ("fleet_tenant_cpu_seconds", "CPU time the tenant used", "cpu_seconds", True),
    ("fleet_tenant_memory_bytes", "Memory the tenant uses now", "memory_bytes", False),
    ("fleet_tenant_memory_peak_bytes", "The most memory the tenant has used", "memory_peak_bytes", False),
    ("fleet_tenant_disk_exclusive_bytes", "Disk bytes held by the tenant's own writes (its quota's measure)",
     "disk_bytes", False),
    ("fleet_tenant_network_receive_bytes", "Bytes the tenant received", "network_in_bytes", True),
    ("fleet_tenant_network_transmit_bytes", "Bytes the tenant sent", "network_out_bytes", True),
)


class UsageExposition:
    """Every tenant's usage as exposition text, written here rather than through prometheus_client's
    objects: six series a tenant are most of a scrape (60,000 lines at 10,000 tenants), and formatting them
    through its generic path costs ten times more. Each tenant's label set is formatted once and kept
    while the tenant is there."""

    def __init__(self, node: str, driver: Driver) -> None:
        self.node = node
        self.driver = driver
        self._labels: dict[str, str] = {}

    def _label_set(self, tenant: str) -> str:
        labels = self._labels.get(tenant)
        if labels is None:
            labels = f'{{tenant="{_escape(tenant)}",node="{_escape(self.node)}"}}'
        return labels

    def text(self) -> bytes:
        node = f'{{node="{_escape(self.node)}"}}'
        head = ("# HELP fleet_usage_read_success 1 when this scrape read the tenants' usage from the host, 0 when "
                "the driver failed (see the log)\n# TYPE fleet_usage_read_success gauge\n")
        try:
            usage = self.driver.usage()
        except FleetError as error:
            logger.bind(node=self.node).warning("Could not read tenants' usage: {}", error)
            return f"{head}fleet_usage_read_success{node} 0.0\n".encode()
        self._labels = {item.tenant: self._label_set(item.tenant) for item in usage}
        labels = [self._labels[item.tenant] for item in usage]
        parts = [f"{head}fleet_usage_read_success{node} 1.0\n"]
        for name, help_text, field, counter in USAGE_FAMILIES:
            full = name + "_total" if counter else name
            parts.append(f"# HELP {full} {help_text}\n# TYPE {full} {'counter' if counter else 'gauge'}\n")
            values = [getattr(item, field) for item in usage]
            parts.append("".join([f"{full}{label} {value}\n" for label, value in zip(labels, values, strict=True)]))
        return "".join(parts).encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


__all__ = ["CONTENT_TYPE", "Metrics", "QueueCollector", "StoreCollector", "UsageExposition"]

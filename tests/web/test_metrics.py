"""`/metrics` and `GET /api/v1/tenants/NAME/usage` as `fleet up` wires them: one `Metrics` for the agent, the
scheduler and the API, on a real SQLite file and the fake driver. The exposition is read with Prometheus'
own parser, and every number is checked against what the store (or the driver) says."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.fake import FakeDriver
from reconciler.agent import Agent, AgentConfig
from reconciler.metrics import Metrics
from reconciler.scheduler import Scheduler, SchedulerConfig
from reconciler.web.app import create_app
from reconciler.web.context import LocalUsage, WebConfig, WebContext
from reconciler.web.server import BackgroundServer, Listen
from reconciler.web.webhooks import sign
from state import Store
from state.access import Role
from state.nodes import NodeStore
from tests.helpers import tenant, wait_for
from tests.web.conftest import subscription_event

SECRET = "whsec_metrics"
SLOTS = 3  # the node takes three tenants; the others stay Pending (Unschedulable)


@dataclass
class Up:
    api: str
    store: Store
    driver: FakeDriver
    tokens: dict[Role, str]

    def client(self, role: Role | None = Role.VIEWER) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=10)

    def scrape(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of /metrics by sample name (`fleet_reconciles_total`, `..._bucket`), parsed by
        prometheus_client's own parser."""
        with self.client() as client:
            response = client.get("/metrics")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for found_labels, v in samples.get(name, []) if all(found_labels.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    driver = FakeDriver(node="n1")
    metrics = Metrics()
    metrics.watch_store(store)
    metrics.watch_usage("n1", driver)
    agent = Agent(store, driver, AgentConfig(node="n1", max_tenants=SLOTS, lease_seconds=30, poll_seconds=0.02,
                                             resync_seconds=60), metrics=metrics)
    scheduler = Scheduler(store, SchedulerConfig(identity="up/scheduler", interval_seconds=0.02), on_bound=agent.take,
                          metrics=metrics)
    context = WebContext(store, WebConfig(webhook_secrets=(SECRET,)), metrics=metrics,
                         usage=LocalUsage("n1", driver.usage))
    tokens = {role: context.access.create_token(name=f"t-{role.value}", role=role)[1] for role in Role}
    agent.start()
    scheduler.start()
    api = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    try:
        yield Up(f"http://{api.listen}", store, driver, tokens)
    finally:
        api.stop()
        scheduler.stop()
        agent.stop()
        store.close()


def create(up: Up, name: str) -> None:
    with up.client(Role.OPERATOR) as client:
        response = client.post("/api/v1/tenants", json={"metadata": {"name": name}, "spec": {"template": "base"}})
    assert response.status_code == 201, response.text


def settled(up: Up) -> bool:
    """Three Running, the rest told they are unschedulable (their Scheduled condition written)."""
    phases = up.store.counts_by_phase()
    if phases.get("Running") != SLOTS:
        return False
    pending = [t for t in up.store.list_tenants(phase="Pending").items]
    return all(t.status is not None and t.status.condition("Scheduled") is not None for t in pending)


def test_metrics_count_what_the_store_holds(up: Up) -> None:
    names = [f"t{index}" for index in range(5)]
    for name in names:
        create(up, name)
    wait_for(lambda: settled(up), what="three tenants Running and two Unschedulable")
    running = [t.metadata.name for t in up.store.list_tenants(phase="Running").items]
    up.driver.set_usage(running[0], cpu_seconds=12.5, memory_bytes=64 << 20, memory_peak_bytes=80 << 20,
                        disk_bytes=3 << 20, network_in_bytes=1000, network_out_bytes=2000)
    samples = up.scrape()

    # Tenants by phase and node: the store's own counts.
    assert value(samples, "fleet_tenants", phase="Running", node="n1") == SLOTS
    assert value(samples, "fleet_tenants", phase="Pending", node="") == len(names) - SLOTS
    assert value(samples, "fleet_tenants", phase="Failed", node="") == 0, "every phase is shown, at 0"
    assert sum(v for _, v in samples["fleet_tenants"]) == len(up.store.list_tenants().items)

    # Node capacity and allocation: what the node registered and what its tenants ask for.
    node = NodeStore(up.store).get_node("n1")
    assert value(samples, "fleet_node_ready", node="n1") == 1
    assert value(samples, "fleet_node_allocatable_tenants", node="n1") == SLOTS
    assert value(samples, "fleet_node_allocated_tenants", node="n1") == SLOTS
    assert value(samples, "fleet_node_allocatable_cpu_cores", node="n1") == node.allocatable.cpu_millicores / 1000
    assert value(samples, "fleet_node_allocated_memory_bytes", node="n1") == node.used.memory_bytes
    assert value(samples, "fleet_node_capacity_disk_bytes", node="n1") == node.capacity.disk_bytes
    assert value(samples, "fleet_node_ksm_saved_bytes", node="n1") == node.capacity.ksm_pages_sharing * 4096

    # Reconciles and actions: each Running tenant was cloned and started once, by the fake driver.
    assert value(samples, "fleet_action_duration_seconds_count", action="Clone", driver="fake") == SLOTS
    assert value(samples, "fleet_action_duration_seconds_count", action="Start", driver="fake") == SLOTS
    assert value(samples, "fleet_reconciles_total", result="success") >= SLOTS
    assert value(samples, "fleet_reconciles_total", result="failed") == 0
    assert value(samples, "fleet_workqueue_wait_duration_seconds_count") >= SLOTS
    assert value(samples, "fleet_workqueue_depth", node="n1") == 0

    # The scheduler: three bound, two it could not place (counted once each, as their event is written).
    assert value(samples, "fleet_scheduler_bindings_total", node="n1") == SLOTS
    assert value(samples, "fleet_scheduler_binding_failures_total", reason="unschedulable") == len(names) - SLOTS
    assert value(samples, "fleet_scheduler_pending_tenants") == len(names) - SLOTS

    # Usage per tenant, from the driver at this scrape.
    assert value(samples, "fleet_usage_read_success", node="n1") == 1
    assert value(samples, "fleet_tenant_cpu_seconds_total", tenant=running[0], node="n1") == 12.5
    assert value(samples, "fleet_tenant_memory_bytes", tenant=running[0], node="n1") == 64 << 20
    assert value(samples, "fleet_tenant_memory_peak_bytes", tenant=running[0], node="n1") == 80 << 20
    assert value(samples, "fleet_tenant_disk_exclusive_bytes", tenant=running[0], node="n1") == 3 << 20
    assert value(samples, "fleet_tenant_network_receive_bytes_total", tenant=running[0], node="n1") == 1000
    assert value(samples, "fleet_tenant_network_transmit_bytes_total", tenant=running[0], node="n1") == 2000
    assert {labels["tenant"] for labels, _ in samples["fleet_tenant_memory_bytes"]} == set(running)


def test_webhook_outcomes_are_counted_by_what_each_delivery_got(up: Up) -> None:
    with up.client(Role.OPERATOR) as client:
        response = client.put("/api/v1/plans/price_basic", json={"id": "price_basic", "template": "base"})
    assert response.status_code == 200, response.text
    payload = json.dumps(subscription_event("evt_1")).encode()

    def deliver(signature: str) -> int:
        with httpx.Client(base_url=up.api, timeout=10) as client:
            return client.post("/api/v1/webhooks/billing", content=payload,
                               headers={"stripe-signature": signature, "content-type": "application/json"}).status_code

    good = sign(payload, SECRET, int(time.time()))
    assert [deliver(good), deliver(good), deliver(sign(payload, "whsec_wrong", int(time.time())))] == [200, 200, 400]
    samples = up.scrape()
    assert value(samples, "fleet_webhook_events_total", outcome="applied") == 1
    assert value(samples, "fleet_webhook_events_total", outcome="replayed") == 1
    assert value(samples, "fleet_webhook_events_total", outcome="rejected_signature") == 1


def test_metrics_need_a_token(up: Up) -> None:
    with up.client(None) as client:
        assert client.get("/metrics").status_code == 401


def test_a_tenants_usage_is_read_from_its_node(up: Up) -> None:
    create(up, "busy")
    wait_for(lambda: (t := up.store.get_tenant("busy")) and t.status and t.status.phase.value == "Running",
             what="busy to be Running")
    up.driver.set_usage("busy", cpu_seconds=3.25, memory_bytes=1 << 20, network_in_bytes=5)
    with up.client() as client:
        response = client.get("/api/v1/tenants/busy/usage")
        missing = client.get("/api/v1/tenants/nobody/usage")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "tenant": "busy", "node": "n1", "running": True, "cpu_seconds": 3.25, "memory_bytes": 1 << 20,
        "memory_peak_bytes": 0, "disk_bytes": 0, "network_in_bytes": 5, "network_out_bytes": 0,
    }
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "name: tenant nobody does not exist"


def test_an_api_without_a_driver_says_it_cannot_read_usage(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    context = WebContext(store)  # `fleet api`: no driver in the process
    token = context.access.create_token(name="viewer", role=Role.VIEWER)[1]
    store.apply_tenant(tenant("far"))
    api = BackgroundServer(create_app(context), Listen("127.0.0.1", 0), name="API").start()
    try:
        with httpx.Client(base_url=f"http://{api.listen}", headers={"authorization": f"Bearer {token}"}) as client:
            usage = client.get("/api/v1/tenants/far/usage")
            scraped = client.get("/metrics")
    finally:
        api.stop()
        store.close()
    assert usage.status_code == 404
    assert "runs no driver" in usage.json()["error"]["message"]
    # Its /metrics still has what the store knows (and no usage: it reads no host).
    families = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert "fleet_tenants" in families and "fleet_tenant_memory_bytes" not in families


def test_an_agent_serves_its_own_reconciles_and_usage_but_not_the_fleet_view(tmp_path: Path) -> None:
    """`fleet agent --metrics-listen`: what only the node knows (its passes, its tenants' usage); the store's
    view of the fleet is the API's, so a fleet of agents does not report every tenant once per node."""
    from reconciler.web.observability import create_node_app

    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    driver = FakeDriver(node="n2")
    metrics = Metrics()
    metrics.watch_usage("n2", driver)
    agent = Agent(store, driver, AgentConfig(node="n2", lease_seconds=30, poll_seconds=0.02, resync_seconds=60),
                  metrics=metrics)
    scheduler = Scheduler(store, SchedulerConfig(identity="s", interval_seconds=0.02), on_bound=agent.take)
    context = WebContext(store, metrics=metrics, usage=LocalUsage("n2", driver.usage))
    token = context.access.create_token(name="prometheus", role=Role.VIEWER)[1]
    agent.start()
    scheduler.start()
    server = BackgroundServer(create_node_app(context), Listen("127.0.0.1", 0), name="metrics").start()
    try:
        store.apply_tenant(tenant("edge"))
        wait_for(lambda: (t := store.get_tenant("edge")) and t.status and t.status.phase.value == "Running",
                 what="edge to be Running")
        driver.set_usage("edge", memory_bytes=4096)
        with httpx.Client(base_url=f"http://{server.listen}", headers={"authorization": f"Bearer {token}"}) as client:
            scraped = client.get("/metrics")
            usage = client.get("/api/v1/tenants/edge/usage")
            other = client.get("/api/v1/tenants")
    finally:
        server.stop()
        scheduler.stop()
        agent.stop()
        store.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    assert samples[("fleet_tenant_memory_bytes", (("node", "n2"), ("tenant", "edge")))] == 4096
    assert samples[("fleet_action_duration_seconds_count", (("action", "Clone"), ("driver", "fake")))] == 1
    assert not any(name == "fleet_tenants" for name, _ in samples), "the fleet's view is the API's"
    assert usage.status_code == 200 and usage.json()["memory_bytes"] == 4096
    assert other.status_code == 404, "the node serves its metrics and usage, not the API"


def test_disk_shared_by_copy_on_write_is_a_node_gauge_only_where_the_driver_measures_it(tmp_path: Path) -> None:
    from drivers.fake import TEMPLATE_BYTES
    from specs import DriverInfo, NodeCapacity
    from state.nodes import Allocatable, NodeRegistration

    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    nodes = NodeStore(store)
    for name, shared in (("measured", 5 * TEMPLATE_BYTES), ("unmeasured", None)):
        capacity = NodeCapacity(cpu_millicores=1000, memory_bytes=1 << 30, disk_bytes=1 << 30,
                                disk_shared_bytes=shared)
        assert nodes.register(NodeRegistration(name, {}, DriverInfo(name="fake"), capacity,
                                               Allocatable(1000, 1 << 30, 1 << 30, 10), ()), holder=name, ttl=60)
    nodes.heartbeat("measured", "measured", 60, capacity=NodeCapacity(
        cpu_millicores=1000, memory_bytes=1 << 30, disk_bytes=1 << 30, disk_shared_bytes=7 * TEMPLATE_BYTES))
    metrics = Metrics()
    metrics.watch_store(store)
    try:
        families = {family.name: family for family in text_string_to_metric_families(metrics.exposition().decode())}
    finally:
        store.close()
    shared = {sample.labels["node"]: sample.value for sample in families["fleet_node_disk_shared_bytes"].samples}
    assert shared == {"measured": 7 * TEMPLATE_BYTES}, "an unmeasured node has no series, never a 0"

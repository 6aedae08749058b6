"""`GET /api/v1/nodes` as `fleet nodes` shows them, and where a dry-run create says a tenant would land:
on a single `fleet up` its node, on a fleet the node the scheduler's placement would choose."""

from typing import Any

from reconciler.web.context import NodeView
from specs import DriverInfo, NodeCapacity
from state.access import Role
from state.nodes import Allocatable, NodeRegistration, NodeStore
from tests.web.conftest import Web

GIB = 1 << 30


def _register(web: Web, name: str, *, labels: dict[str, str] | None = None, memory: int = 8 * GIB,
              ksm_pages_sharing: int = 0) -> None:
    capacity = NodeCapacity(cpu_millicores=4000, memory_bytes=memory, disk_bytes=100 * GIB, max_tenants=50,
                            ksm_pages_sharing=ksm_pages_sharing)
    registration = NodeRegistration(name, labels or {}, DriverInfo(name="fake"), capacity,
                                    Allocatable(8000, memory, 100 * GIB, 50), ("base@1",))
    assert NodeStore(web.store).register(registration, holder=f"agent-{name}", ttl=30.0)


def _dry_run(web: Web, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    with web.client(Role.BILLING) as client:
        response = client.post("/api/v1/tenants", params={"dry_run": "true"}, json={
            "kind": "Tenant", "metadata": {"name": name, "labels": labels or {}}, "spec": {"template": "base"}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["dry_run"] is True and body["outcome"] == "created"
    return body


def test_nodes_lists_the_registered_nodes_and_the_local_node_of_fleet_up(web: Web) -> None:
    web.context.nodes = lambda: [NodeView("n1", "fake", None)]
    _register(web, "edge-a", labels={"zone": "eu"}, ksm_pages_sharing=256)
    NodeStore(web.store).set_cordoned("edge-a", True)
    with web.client(Role.BILLING) as client:
        assert client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                    "spec": {"template": "base"}}).status_code == 201
    web.wait_running("acme")
    with web.client(Role.VIEWER) as viewer:
        nodes = {node["name"]: node for node in viewer.get("/api/v1/nodes").json()}
    assert sorted(nodes) == ["edge-a", "n1"]
    edge = nodes["edge-a"]
    assert edge["registered"] and edge["ready"] and edge["cordoned"] and edge["labels"] == {"zone": "eu"}
    assert edge["allocatable"] == {"cpu_millicores": 8000, "memory_bytes": 8 * GIB, "disk_bytes": 100 * GIB,
                                   "tenants": 50}
    assert edge["tenants"] == 0 and edge["templates"] == ["base@1"] and edge["ksm_saved_bytes"] == 256 * 4096
    assert edge["heartbeat_age_seconds"] is not None and edge["heartbeat_age_seconds"] < 30
    local = nodes["n1"]
    assert not local["registered"] and local["ready"] and local["driver"] == "fake"
    assert local["tenants"] == 1 and local["used"]["memory_bytes"] == 256 << 20  # the base template's default


def test_a_dry_run_on_a_single_fleet_up_lands_on_its_node_and_writes_nothing(web: Web) -> None:
    web.context.nodes = lambda: [NodeView("n1", "fake", None)]
    body = _dry_run(web, "trial")
    assert body["node"] == "n1" and body["unschedulable"] is None
    assert web.store.get_tenant("trial") is None and web.store.list_tenants().items == []


def test_a_dry_run_on_a_fleet_names_the_node_the_scheduler_would_choose(web: Web) -> None:
    _register(web, "small", memory=1 * GIB)
    _register(web, "large", memory=64 * GIB, labels={"zone": "eu"})
    # Binpack (the scheduler's default) chooses the node the tenant fills most.
    assert _dry_run(web, "trial")["node"] == "small"
    assert _dry_run(web, "pinned", {"node.fleet/zone": "eu"})["node"] == "large"
    nowhere = _dry_run(web, "lost", {"node.fleet/zone": "us"})
    assert nowhere["node"] is None
    assert nowhere["unschedulable"] == "0/2 nodes are available: 2 nodes labels do not match the tenant's node selector"
    assert web.store.list_tenants().items == [] and NodeStore(web.store).bindings() == {}

"""The dashboard's aggregate reads and the ledger's node prices, on the store itself (SQLite and PostgreSQL)."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.conditions import node_lost_status
from specs import Condition, ConditionStatus, DriverInfo, NodeCapacity, Phase, TenantStatus
from state import Store
from state.dashboard import DashboardReads
from state.errors import InvalidRecord
from state.ledger import NodeSettings
from state.nodes import Allocatable, NodeRegistration, NodeStore
from tests.helpers import tenant, wait_for

pytestmark = pytest.mark.both_stores  # the `store` fixture: SQLite, then PostgreSQL


def _status(phase: Phase, node: str, *, reason: str = "", message: str = "", error: str | None = None) -> TenantStatus:
    conditions = ()
    if reason:
        now = datetime.now(UTC)
        conditions = (Condition(type="Provisioned", status=ConditionStatus.TRUE, reason="Cloned",
                                last_transition_time=now),
                      Condition(type="Ready", status=ConditionStatus.FALSE, reason=reason, message=message,
                                last_transition_time=now))
    return TenantStatus(phase=phase, node=node, conditions=conditions, last_error=error)


def test_counts_are_by_phase_with_unbound_and_deleting_and_no_status_counts_as_pending(store: Store) -> None:
    for name in ("a1", "a2", "b1", "c1", "c2"):
        store.create_tenant(tenant(name))
    for name, node in (("a1", "n1"), ("a2", "n1"), ("b1", "n2")):
        assert store.bind(name, node)
    NodeStore(store).write_statuses([("a1", _status(Phase.RUNNING, "n1")), ("a2", _status(Phase.RUNNING, "n1")),
                                     ("b1", _status(Phase.FAILED, "n2", reason="CloneFailed"))])
    store.request_delete("c2")

    counts = DashboardReads(store.session).counts()

    assert (counts.tenants, counts.unbound, counts.deleting) == (5, 2, 1)
    assert counts.phases == {"Failed": 1, "Pending": 2, "Running": 2}


def test_not_ready_lists_failed_first_with_the_ready_condition_s_reason_and_counts_them_all(store: Store) -> None:
    for name in ("p1", "p2", "z-failed", "ok", "errored"):
        store.create_tenant(tenant(name))
        store.bind(name, "n1")
    NodeStore(store).write_statuses([
        ("z-failed", _status(Phase.FAILED, "n1", reason="TemplateMissing", message="no template base@9")),
        ("ok", _status(Phase.RUNNING, "n1")),
        ("errored", _status(Phase.PROVISIONING, "n1", error="the host said no")),
    ])

    page = DashboardReads(store.session).not_ready(limit=2)

    assert page.total == 4
    assert [(line.name, line.phase, line.reason, line.message) for line in page.lines] == [
        ("z-failed", "Failed", "TemplateMissing", "no template base@9"),
        ("errored", "Provisioning", "Error", "the host said no"),
    ]


def test_search_takes_the_text_literally_and_pages(store: Store) -> None:
    for name in ("acme", "acme-2", "globex", "bacme"):
        store.create_tenant(tenant(name))
    reads = DashboardReads(store.session)

    assert [line.name for line in reads.search("acme").lines] == ["acme", "acme-2", "bacme"]
    assert reads.search("%").total == 0  # a LIKE wildcard matches only itself
    first = reads.search("e", limit=2)
    assert (len(first.lines), first.total) == (2, 4)
    second = reads.search("e", after=first.lines[-1].name, limit=2)
    assert [line.name for line in [*first.lines, *second.lines]] == ["acme", "acme-2", "bacme", "globex"]


def test_search_by_phase_alone_or_with_text(store: Store) -> None:
    for name in ("ok-1", "ok-2", "bad-1", "new-1"):
        store.create_tenant(tenant(name))
        store.bind(name, "n1")
    NodeStore(store).write_statuses([("ok-1", _status(Phase.RUNNING, "n1")), ("ok-2", _status(Phase.RUNNING, "n1")),
                                     ("bad-1", _status(Phase.FAILED, "n1", reason="CloneFailed"))])
    reads = DashboardReads(store.session)
    assert [line.name for line in reads.search(phase="Running").lines] == ["ok-1", "ok-2"]
    assert [line.name for line in reads.search(phase="Pending").lines] == ["new-1"]  # no status yet
    assert [line.name for line in reads.search("2", phase="Running").lines] == ["ok-2"]
    assert reads.search(phase="Failed").lines[0].reason == "CloneFailed"


def test_a_node_s_monthly_price_is_set_changed_and_removed_in_cents(store: Store) -> None:
    prices = NodeSettings(store.session)
    prices.set_monthly_price("n1", 45_000)
    prices.set_monthly_price("n2", 12_345)
    prices.set_monthly_price("n1", 50_000)
    prices.set_monthly_price("n2", None)
    assert prices.monthly_prices() == {"n1": 50_000}
    with pytest.raises(InvalidRecord):
        prices.set_monthly_price("n3", -1)


def test_fleet_node_configure_sets_the_price_and_refuses_what_is_not_an_amount(store: Store, tmp_path: Path) -> None:
    runner = CliRunner()
    db = ["--db", store.url]
    result = runner.invoke(app, ["node", "configure", "edge-1", "--monthly-price", "450.50", *db])
    assert result.exit_code == 0, result.output
    assert NodeSettings(store.session).monthly_prices() == {"edge-1": 45_050}
    for bad in ("12.345", "-1", "lots"):
        result = runner.invoke(app, ["node", "configure", "edge-1", "--monthly-price", bad, *db])
        assert result.exit_code != 0
    assert NodeSettings(store.session).monthly_prices() == {"edge-1": 45_050}
    capacity = NodeCapacity(cpu_millicores=4000, memory_bytes=8 << 30, disk_bytes=100 << 30)
    assert NodeStore(store).register(NodeRegistration("edge-1", {}, DriverInfo(name="fake"), capacity,
                                                      Allocatable(8000, 8 << 30, 100 << 30, 50), ()), "a", 60.0)
    listed = runner.invoke(app, ["nodes", "-o", "json", *db])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["monthly_price"] == 450.5


def test_running_tenants_of_a_node_that_stopped_heartbeating_are_not_ready_with_the_reason(store: Store) -> None:
    nodes = NodeStore(store)
    capacity = NodeCapacity(cpu_millicores=4000, memory_bytes=8 << 30, disk_bytes=100 << 30)
    for name in ("alive", "lost"):
        registration = NodeRegistration(name, {}, DriverInfo(name="fake"), capacity,
                                        Allocatable(8000, 8 << 30, 100 << 30, 50), ("base@1",))
        assert nodes.register(registration, holder=f"agent-{name}", ttl=3600.0 if name == "alive" else 0.05)
    for name, node in (("on-alive", "alive"), ("on-lost", "lost")):
        store.create_tenant(tenant(name))
        store.bind(name, node)
    nodes.write_statuses([("on-alive", _status(Phase.RUNNING, "alive")), ("on-lost", _status(Phase.RUNNING, "lost"))])
    wait_for(lambda: nodes.expire_nodes() == ["lost"], what="the lost node's lease to expire")
    now = datetime.now(UTC)
    lost = node_lost_status(_status(Phase.RUNNING, "lost"), "node lost stopped heartbeating", now)
    nodes.write_statuses([("on-lost", lost)])

    page = DashboardReads(store.session).not_ready()

    assert page.total == 1
    assert [(line.name, line.phase, line.reason) for line in page.lines] == [("on-lost", "Running", "NodeNotReady")]

"""Scheduler: pure filters and scoring, then leases and compare-and-set bindings against both stores."""

from collections import Counter

import pytest

from reconciler.scheduler import NodeSlot, Scheduler, SchedulerConfig, Strategy, place, rejection
from specs import DriverInfo, NodeCapacity
from state import Store
from state.nodes import Allocatable, Binding, NodeRegistration, NodeStore, PendingTenant
from tests.helpers import tenant

pytestmark = pytest.mark.both_stores

MI = 1 << 20


def slot(name: str, **overrides: object) -> NodeSlot:
    values: dict[str, object] = dict(
        name=name, labels={}, templates=frozenset({"base@1"}), ready=True, cordoned=False,
        cpu=8000, memory=4096 * MI, disk=100 * 1024 * MI, tenants=10,
    )
    values.update(overrides)
    return NodeSlot(**values)  # type: ignore[arg-type]


def pending(name: str, **overrides: object) -> PendingTenant:
    values: dict[str, object] = dict(
        name=name, revision=1, template="base@1", cpu_millicores=500, memory_bytes=256 * MI, disk_bytes=1024 * MI,
        labels={},
    )
    values.update(overrides)
    return PendingTenant(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node", "tenant_overrides", "why"),
    [
        (slot("a", ready=False), {}, "not Ready"),
        (slot("a", cordoned=True), {}, "cordoned"),
        (slot("a", labels={"zone": "us"}), {"labels": {"node.fleet/zone": "eu"}}, "node selector"),
        (slot("a", templates=frozenset()), {}, "template base@1 not present"),
        (slot("a", tenants=0), {}, "no tenant slots left"),
        (slot("a", cpu=100), {}, "insufficient cpu"),
        (slot("a", memory=10 * MI), {}, "insufficient memory"),
        (slot("a", disk=10 * MI), {}, "insufficient disk"),
    ],
)
def test_each_filter_says_why_a_node_was_rejected(
    node: NodeSlot, tenant_overrides: dict[str, object], why: str
) -> None:
    reason = rejection(node, pending("t", **tenant_overrides))
    assert reason is not None and why in reason


def test_binpack_fills_one_node_before_the_next_and_spread_evens_them_out() -> None:
    tenants = [pending(f"t{i}") for i in range(12)]
    packed = place(tenants, [slot("a"), slot("b"), slot("c")], Strategy.BINPACK)
    spread = place(tenants, [slot("a"), slot("b"), slot("c")], Strategy.SPREAD)
    assert Counter(b.node for b in packed.bindings) == {"a": 10, "b": 2}
    assert Counter(b.node for b in spread.bindings) == {"a": 4, "b": 4, "c": 4}


def test_an_unschedulable_tenant_is_told_which_filter_failed_on_how_many_nodes() -> None:
    nodes = [slot("a", cordoned=True), slot("b", memory=MI), slot("c", memory=MI)]
    result = place([pending("big")], nodes, Strategy.BINPACK)
    assert result.bindings == []
    assert result.unschedulable["big"] == "0/3 nodes are available: 1 node cordoned, 2 nodes insufficient memory"


def test_placement_never_exceeds_a_nodes_slots() -> None:
    result = place([pending(f"t{i}") for i in range(50)], [slot("a", tenants=7), slot("b", tenants=5)], Strategy.SPREAD)
    assert Counter(b.node for b in result.bindings) == {"a": 7, "b": 5}
    assert len(result.unschedulable) == 38


# -- against the store ---------------------------------------------------------------------------------


def register(nodes: NodeStore, name: str, *, slots: int = 100, holder: str = "agent") -> None:
    capacity = NodeCapacity(cpu_millicores=64_000, memory_bytes=256 << 30, disk_bytes=4 << 40, max_tenants=slots)
    assert nodes.register(
        NodeRegistration(name, {}, DriverInfo(name="fake"), capacity,
                         Allocatable(256_000, 256 << 30, 4 << 40, slots), ("base@1",)),
        holder, 30.0,
    )


def test_a_lease_is_held_by_one_holder_until_it_expires(store: Store) -> None:
    nodes = NodeStore(store)
    assert nodes.acquire_lease("scheduler", "s1", 30.0)
    assert not nodes.acquire_lease("scheduler", "s2", 30.0)
    assert nodes.acquire_lease("scheduler", "s1", 30.0), "the holder renews"
    assert nodes.acquire_lease("other", "s2", -1.0)  # an already expired lease
    assert nodes.acquire_lease("other", "s3", 30.0), "an expired lease is taken over"
    lease = nodes.lease("other")
    assert lease is not None and lease.holder == "s3" and lease.transitions == 1


def test_binding_is_compare_and_set_and_rechecks_room(store: Store) -> None:
    nodes = NodeStore(store)
    register(nodes, "a", slots=2)
    store.apply_tenants([tenant(f"t{i}") for i in range(4)])
    first = nodes.bind_many([Binding("t0", "a"), Binding("t1", "a")])
    assert [b.name for b in first.bound] == ["t0", "t1"]
    again = nodes.bind_many([Binding("t0", "a")])
    assert again.bound == [] and [b.name for b in again.no_room] == ["t0"]
    assert nodes.bindings() == {"t0": "a", "t1": "a"}


def test_a_second_scheduler_stands_by_and_binds_nothing(store: Store) -> None:
    nodes = NodeStore(store)
    register(nodes, "a")
    store.apply_tenants([tenant(f"t{i}") for i in range(5)])
    leader = Scheduler(store, SchedulerConfig(identity="one"))
    standby = Scheduler(store, SchedulerConfig(identity="two"))
    assert leader.run_once().bound == 5
    result = standby.run_once()
    assert (result.leader, result.bound) == (False, 0)


def test_an_expired_node_is_not_ready_and_its_tenants_ready_turns_unknown(store: Store) -> None:
    from specs import Phase, TenantStatus

    nodes = NodeStore(store)
    register(nodes, "a")
    store.apply_tenant(tenant("t0"))
    Scheduler(store, SchedulerConfig(identity="one")).run_once()
    store.record("t0", TenantStatus(phase=Phase.RUNNING, node="a"), None, [])
    assert nodes.acquire_lease("node/a", "agent", -1.0)  # the agent stopped renewing
    result = Scheduler(store, SchedulerConfig(identity="one")).run_once()
    assert result.not_ready == ["a"]
    got = store.get_tenant("t0")
    assert got is not None and got.status is not None
    ready = got.status.condition("Ready")
    assert ready is not None and (ready.status.value, ready.reason) == ("Unknown", "NodeNotReady")
    assert nodes.bindings() == {"t0": "a"}, "nothing is rescheduled"


def test_a_tenant_deleted_before_it_was_bound_is_finalized_with_a_receipt_and_its_name_comes_back(
    store: Store,
) -> None:
    nodes = NodeStore(store)
    register(nodes, "a", slots=1)
    store.apply_tenants([tenant("bound"), tenant("waiting")])
    scheduler = Scheduler(store, SchedulerConfig(identity="one"))
    assert scheduler.run_once().bound == 1  # the node has one slot: "waiting" stays Pending (Unschedulable)
    assert nodes.bindings() == {"bound": "a"}
    before = store.current_revision()
    store.request_delete("waiting")
    store.request_delete("bound")

    result = scheduler.run_once()

    assert result.finalized == 1
    assert store.get_tenant("waiting") is None, "the unbound delete is finished: nothing of it is on any host"
    reasons = [e.reason for e in store.events(tenant="waiting")]
    assert reasons[-2:] == ["Deleted", "Finalized"]
    receipt = next(e for e in store.events(tenant="waiting") if e.reason == "Deleted")
    assert receipt.details == {"removed": [], "already_absent": []} and "before it was bound" in receipt.message
    assert [d.name for d in store.deletions_since(before)] == ["waiting"], "a tombstone tells watchers"
    bound = store.get_tenant("bound")
    assert bound is not None and bound.deleting, "a bound tenant's delete is its node agent's to finish"
    assert store.create_tenant(tenant("waiting")).outcome.value == "created", "the name can be used again"


def test_the_unbound_delete_loses_to_a_binding_made_meanwhile(store: Store) -> None:
    """The finalize is a compare-and-set on "still unbound": a tenant bound between the scheduler's look and
    its write is left to the node's agent (which deletes what it made)."""
    nodes = NodeStore(store)
    register(nodes, "a")
    store.apply_tenant(tenant("racer"))
    store.request_delete("racer")
    assert nodes.unbound_deletions() == ["racer"]
    assert store.bind("racer", "a"), "a single-node controller binds (compare-and-set on node IS NULL)"
    assert not store.finalize_delete("racer", [], only_unbound=True)
    racer = store.get_tenant("racer")
    assert racer is not None and racer.deleting and store.events(tenant="racer") == []


def test_each_binding_is_told_as_it_commits_so_an_agent_in_the_same_process_takes_it_at_once(store: Store) -> None:
    nodes = NodeStore(store)
    register(nodes, "a")
    for i in range(3):
        store.apply_tenant(tenant(f"t{i}"))
    told: list[tuple[str, str]] = []
    result = Scheduler(store, SchedulerConfig(identity="one"), on_bound=lambda t, n: told.append((t, n))).run_once()
    assert result.bound == 3
    assert sorted(told) == [("t0", "a"), ("t1", "a"), ("t2", "a")]
    assert nodes.bindings() == {"t0": "a", "t1": "a", "t2": "a"}, "told only of what is committed"

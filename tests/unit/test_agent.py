"""The node agent with the scheduler, composed as `fleet up` composes them (one process, one node), against
both stores: registration with templates missing on the node, and deletes of tenants never bound."""

from collections.abc import Iterator

import pytest

from drivers.fake import FakeDriver, Faults
from reconciler.agent import Agent, AgentConfig
from reconciler.scheduler import Scheduler, SchedulerConfig
from specs import PermanentError, Resources, Template
from state import Store
from state.nodes import NodeStore
from tests.helpers import tenant, wait_for

pytestmark = pytest.mark.both_stores

BIG = Template(name="big", version="2", resources=Resources.model_validate(
    {"cpu": "1", "memory": "512Mi", "disk": "2Gi", "pids": 512}))


@pytest.fixture
def one_node(store: Store) -> Iterator[tuple[Agent, Scheduler]]:
    """`fleet up`: this node's agent (one tenant slot) and the scheduler, in one process."""
    agent = Agent(store, FakeDriver(node="n1"), AgentConfig(node="n1", max_tenants=1, lease_seconds=30,
                                                             poll_seconds=0.02, resync_seconds=60))
    scheduler = Scheduler(store, SchedulerConfig(identity="up/scheduler", interval_seconds=0.05))
    agent.start()
    scheduler.start()
    yield agent, scheduler
    scheduler.stop()
    agent.stop()


def test_an_agent_starts_and_reports_its_node_when_a_template_is_absent_there(store: Store) -> None:
    store.upsert_template(BIG)
    missing = PermanentError("template big@2 is not on node n1; import a rootfs or tarball for it",
                             reason="TemplateMissing")
    # Templates are ensured in name order: base, then big.
    driver = FakeDriver(node="n1", faults=Faults().fail("ensure_template", 2, missing))
    agent = Agent(store, driver, AgentConfig(node="n1", lease_seconds=30, poll_seconds=0.02, resync_seconds=60))
    agent.start()
    try:
        node = NodeStore(store).get_node("n1")
        assert node.ready and node.templates == ("base@1",), "registered, with the templates it has"
        assert agent.missing_templates == {"big@2": str(missing)}
        store.apply_tenants([tenant("small"), tenant("large", template="big")])
        Scheduler(store, SchedulerConfig(identity="s")).run_once()
        assert NodeStore(store).bindings() == {"small": "n1"}
        large = store.get_tenant("large")
        assert large is not None and large.status is not None
        scheduled = large.status.condition("Scheduled")
        assert scheduled is not None and (scheduled.status.value, scheduled.reason) == ("False", "Unschedulable")
        assert "1 node template big@2 not present" in scheduled.message
    finally:
        agent.stop()


def test_a_template_missing_at_start_is_tried_again_and_then_reported(store: Store) -> None:
    store.upsert_template(BIG)
    driver = FakeDriver(node="n1", faults=Faults().fail("ensure_template", 2, PermanentError("no image")))
    agent = Agent(store, driver, AgentConfig(node="n1", lease_seconds=30, template_refresh_beats=1))
    agent.register()
    assert NodeStore(store).get_node("n1").templates == ("base@1",)
    agent.heartbeat()  # every template refresh tries the missing ones again
    assert NodeStore(store).get_node("n1").templates == ("base@1", "big@2") and agent.missing_templates == {}
    agent.stop()


def test_on_one_node_tenants_deleted_before_and_after_binding_all_finish_and_their_names_come_back(
    store: Store, one_node: tuple[Agent, Scheduler]
) -> None:
    store.apply_tenants([tenant("first"), tenant("second"), tenant("third")])
    nodes = NodeStore(store)
    wait_for(lambda: (t := store.get_tenant("first")) and t.status and t.status.phase.value == "Running",
             what="the tenant that fits to run")
    assert nodes.bindings() == {"first": "n1"}, "one slot: the other two wait, unbound"
    before = store.current_revision()
    for name in ("first", "second", "third"):
        assert store.request_delete(name)

    wait_for(lambda: all(store.get_tenant(n) is None for n in ("first", "second", "third")),
             what="every delete to finish, bound or not")
    assert sorted(d.name for d in store.deletions_since(before)) == ["first", "second", "third"]
    for name in ("second", "third"):
        assert [e.reason for e in store.events(tenant=name)][-2:] == ["Deleted", "Finalized"]
    store.apply_tenants([tenant("second"), tenant("third")])  # the names are free again
    wait_for(lambda: nodes.bindings().keys() == {"second"} or nodes.bindings().keys() == {"third"},
             what="a reused name to be scheduled again")

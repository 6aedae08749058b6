"""The controller against the fake driver: convergence, drift repair, errors, crashes at every step."""

import pytest

from drivers.fake import STEPS, Crash, FakeDriver, Faults
from reconciler.clock import ManualClock
from reconciler.controller import Controller, Outcome
from specs import PermanentError, Phase, Resources, TransientError
from state import Store
from tests.conftest import make_controller
from tests.helpers import drain, tenant

pytestmark = pytest.mark.both_stores


def phases(store: Store) -> dict[str, str]:
    return {t.metadata.name: (t.status.phase.value if t.status else "Pending") for t in store.list_tenants().items}


def test_a_new_tenant_converges_to_running_with_conditions_and_events(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme", resources={"memory": "512Mi"}))
    controller.poll_changes()
    drain(controller, clock=clock)
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None
    assert got.status.phase == Phase.RUNNING
    assert got.status.observed_generation == 1
    assert got.status.node == "n1" and got.status.address
    assert {c.type: c.status.value for c in got.status.conditions} == {
        "Scheduled": "True", "Provisioned": "True", "ResourcesApplied": "True", "NetworkReady": "True", "Ready": "True"
    }
    assert fake.containers["acme"].resources.memory == 512 << 20
    reasons = [e.reason for e in store.events(tenant="acme")]
    assert reasons == ["Scheduled", "Cloned", "ResourcesApplied", "Started", "NetworkApplied", "Running"]


def test_a_spec_change_is_reapplied_and_observed_generation_follows(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    store.apply_tenant(tenant("acme", resources={"memory": "1Gi"}))
    assert controller.poll_changes() == 1
    drain(controller, clock=clock)
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None
    assert (got.metadata.generation, got.status.observed_generation) == (2, 2)
    assert fake.containers["acme"].resources.memory == 1 << 30
    assert fake.completed_clones["acme"] == 1
    assert [e.reason for e in store.events(tenant="acme")][-1] == "ResourcesApplied"


def test_a_status_write_does_not_retrigger_the_controller(
    store: Store, controller: Controller, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    assert controller.poll_changes() == 1  # the binding itself was a write
    assert drain(controller, clock=clock) == 1
    assert controller.poll_changes() == 0


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        ("removed", "the container is gone from the host"),
        ("quota", "limits changed: memory 64Mi (want 256Mi)"),
        ("killed", "the container is not running"),
    ],
)
def test_drift_behind_the_operators_back_is_repaired_on_resync_with_an_event(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock, drift: str, expected: str
) -> None:
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    if drift == "removed":
        fake.remove_behind_back("acme")
    elif drift == "quota":
        current = fake.containers["acme"].resources
        fake.change_resources_behind_back("acme", current.model_copy(update={"memory": 64 << 20}))
    else:
        fake.kill_behind_back("acme")
    assert controller.resync() == 1
    drain(controller, clock=clock)
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None and got.status.phase == Phase.RUNNING
    assert fake.containers["acme"].pid is not None
    assert fake.containers["acme"].resources.memory == 256 << 20
    drift_events = [e for e in store.events(tenant="acme") if e.reason == "DriftDetected"]
    assert len(drift_events) == 1 and expected in drift_events[0].message
    assert controller.resync() == 0, "a repaired tenant needs nothing more"


def test_a_transient_error_is_retried_with_backoff_and_recorded(
    store: Store, fake: FakeDriver, clock: ManualClock
) -> None:
    fake.faults.fail("start", 1, TransientError("device busy"))
    controller = make_controller(store, fake, clock)
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    key = controller.queue.get(timeout=0)
    assert key == "acme"
    assert controller.process(key) == Outcome.RETRY
    controller.queue.done(key)
    mid = store.get_tenant("acme")
    assert mid is not None and mid.status is not None
    assert mid.status.phase == Phase.PROVISIONING and "device busy" in (mid.status.last_error or "")
    ready = mid.status.condition("Ready")
    assert ready is not None and ready.status.value == "False"
    assert controller.queue.get(timeout=0) is None, "not retried before its backoff"
    drain(controller, clock=clock)
    final = store.get_tenant("acme")
    assert final is not None and final.status is not None and final.status.phase == Phase.RUNNING
    assert any(e.reason == "StartFailed" and e.type == "Warning" for e in store.events(tenant="acme"))


def test_a_permanent_error_fails_the_tenant_without_a_hot_loop(
    store: Store, fake: FakeDriver, clock: ManualClock
) -> None:
    fake.faults.fail("clone", 1, PermanentError("template base@1 is corrupt", reason="TemplateBroken"))
    controller = make_controller(store, fake, clock)
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    assert drain(controller, clock=clock) == 1
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None
    assert got.status.phase == Phase.FAILED
    provisioned = got.status.condition("Provisioned")
    assert provisioned is not None and provisioned.reason == "TemplateBroken"
    assert controller.resync() == 0, "a failed tenant is not retried until its spec changes"
    store.apply_tenant(tenant("acme", resources={"memory": "512Mi"}))
    controller.poll_changes()
    drain(controller, clock=clock)
    again = store.get_tenant("acme")
    assert again is not None and again.status is not None and again.status.phase == Phase.RUNNING


def test_pause_observes_only_and_resume_reconciles_again(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    store.set_paused("acme", True)
    fake.kill_behind_back("acme")
    controller.poll_changes()
    drain(controller, clock=clock)
    paused = store.get_tenant("acme")
    assert paused is not None and paused.status is not None and paused.status.phase == Phase.PAUSED
    assert fake.containers["acme"].pid is None, "paused: the reconciler must not act"
    store.set_paused("acme", False)
    controller.poll_changes()
    drain(controller, clock=clock)
    resumed = store.get_tenant("acme")
    assert resumed is not None and resumed.status is not None and resumed.status.phase == Phase.RUNNING


def test_delete_removes_everything_then_the_row_with_a_receipt(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme"))
    store.apply_tenant(tenant("neighbour"))
    controller.poll_changes()
    drain(controller, clock=clock)
    store.request_delete("acme")
    controller.poll_changes()
    drain(controller, clock=clock)
    assert store.get_tenant("acme") is None
    assert "acme" not in fake.containers and "neighbour" in fake.containers
    assert fake.leftovers() == []
    receipt = next(e for e in store.events(tenant="acme") if e.reason == "Deleted")
    assert "subvolume" in receipt.details["removed"]
    assert store.events(tenant="acme")[-1].reason == "Finalized"


def test_a_delete_that_fails_permanently_keeps_retrying_with_the_reason_in_a_condition(
    store: Store, fake: FakeDriver, clock: ManualClock
) -> None:
    controller = make_controller(store, fake, clock)
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    refusal = PermanentError("tenants/acme does not carry Fleet's marker", reason="NotOwned")
    fake.faults.fail("delete", 1, refusal).fail("delete", 2, refusal)
    store.request_delete("acme")
    controller.poll_changes()
    key = controller.queue.get(timeout=0)
    assert key == "acme" and controller.process(key) == Outcome.RETRY
    controller.queue.done(key)
    stuck = store.get_tenant("acme")
    assert stuck is not None and stuck.status is not None
    assert stuck.status.phase == Phase.DELETING
    deleted = stuck.status.condition("Deleted")
    assert deleted is not None and deleted.reason == "NotOwned" and "marker" in deleted.message
    assert controller.queue.get(timeout=0) is None, "retried after a backoff, not in a hot loop"
    assert controller.queue.waiting()
    drain(controller, clock=clock)
    assert store.get_tenant("acme") is None, "the third try finished the delete"
    assert fake.leftovers() == []


def test_a_missing_template_is_a_failed_condition_not_a_crash(
    store: Store, controller: Controller, clock: ManualClock
) -> None:
    import sqlite3

    import psycopg

    store.apply_tenant(tenant("acme"))
    if store.url.startswith("postgresql"):
        with psycopg.connect(store.url) as pg:
            pg.execute("DELETE FROM templates WHERE name = 'base'")
    else:
        with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM templates WHERE name = 'base'")
    controller.poll_changes()
    drain(controller, clock=clock)
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None
    assert got.status.phase == Phase.FAILED and "template 'base' does not exist" in (got.status.last_error or "")


CRASH_POINTS = [(method, step) for method, steps in STEPS.items() for step in steps]


def _run_until_crash(controller: Controller, clock: ManualClock) -> bool:
    try:
        drain(controller, clock=clock)
    except Crash:
        return True
    return False


@pytest.mark.parametrize(("method", "step"), CRASH_POINTS, ids=[f"{m}-{s}" for m, s in CRASH_POINTS])
def test_a_crash_after_any_step_converges_on_the_next_controller(
    store: Store, clock: ManualClock, method: str, step: str
) -> None:
    """kill -9 after each step of each action; a new controller on the same store and host converges
    with no duplicate clone and nothing half made."""
    host = FakeDriver(node="n1")
    names = ["t1", "t2", "t3"]
    deleting = method in ("delete", "stop")
    first = make_controller(store, host, clock)
    for name in names:
        store.apply_tenant(tenant(name))
    if deleting:
        first.poll_changes()
        drain(first, clock=clock)
        for name in names:
            store.request_delete(name)
    host.faults.crash_after(method, step)
    first.poll_changes()
    crashed = _run_until_crash(first, clock)
    assert crashed, f"the crash after {method}/{step} was never reached"

    second = make_controller(store, host, clock)  # a new process: empty queue, revision 0
    second.poll_changes()
    second.resync()
    drain(second, clock=clock)

    if deleting:
        assert store.list_tenants().items == []
        assert host.containers == {}
    else:
        assert phases(store) == {name: "Running" for name in names}
        assert all(host.completed_clones[name] == 1 for name in names), host.completed_clones
    assert host.leftovers() == []


@pytest.mark.parametrize("method", ["clone", "apply_resources", "apply_network", "start", "inspect"])
def test_a_failure_of_any_driver_call_is_retried_until_converged(
    store: Store, clock: ManualClock, method: str
) -> None:
    host = FakeDriver(node="n1", faults=Faults().fail(method, 1).fail(method, 2))
    controller = make_controller(store, host, clock)
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    assert phases(store) == {"acme": "Running"}
    assert host.completed_clones["acme"] == 1


def test_resources_equal_the_spec_after_convergence(store: Store, controller: Controller, fake: FakeDriver,
                                                    clock: ManualClock) -> None:
    store.apply_tenant(tenant("acme", resources={"cpu": "250m", "pids": 64}))
    controller.poll_changes()
    drain(controller, clock=clock)
    assert fake.containers["acme"].resources == Resources.model_construct(
        cpu=250, memory=256 << 20, disk=1 << 30, pids=64, io=100 << 20
    )


def test_status_times_come_from_the_injected_clock(store: Store, fake: FakeDriver, clock: ManualClock) -> None:
    controller = make_controller(store, fake, clock)
    clock.advance(90)
    store.apply_tenant(tenant("acme"))
    controller.poll_changes()
    drain(controller, clock=clock)
    got = store.get_tenant("acme")
    assert got is not None and got.status is not None
    # the store stamps updated_at itself (its own clock, for raw SQL readers); the reconciler's times are these
    assert {c.last_transition_time for c in got.status.conditions} == {clock.wall()}

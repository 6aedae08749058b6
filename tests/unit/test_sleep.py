"""Idle tenants sleep and wake, against the fake driver and a real store (SQLite and PostgreSQL): the spec
rule and its defaults, the store's compare-and-set, the reconciler's stop and start, a container started
by hand while asleep, the node's accounting, and the gateway's idle rule."""

import asyncio
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from drivers.fake import FakeDriver
from reconciler.clock import ManualClock
from reconciler.controller import Controller
from reconciler.web.context import GatewayLimits
from reconciler.web.gateway_routes import Routes
from reconciler.web.gateway_sleep import Sleeper
from specs import Phase, Sleep, Template, TenantSpec, format_duration, parse_duration
from state import Store
from state.nodes import NodeStore
from tests.helpers import drain, tenant

pytestmark = pytest.mark.both_stores


def converge(controller: Controller, clock: ManualClock) -> None:
    controller.poll_changes()
    drain(controller, clock=clock)


def phase(store: Store, name: str) -> Phase | None:
    got = store.get_tenant(name)
    return got.status.phase if got is not None and got.status is not None else None


# -- the rule ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "seconds", "shown"), [
    ("15m", 900, "15m"), ("90s", 90, "90s"), ("2h", 7200, "2h"), ("1d", 86400, "1d"), (120, 120, "2m"),
    ("never", None, "never"), (None, None, "never"),
])
def test_sleep_after_reads_durations_and_writes_the_shortest_form(given: object, seconds: int | None,
                                                                 shown: str) -> None:
    assert parse_duration(given) == seconds
    assert format_duration(seconds) == shown
    assert TenantSpec(template="base", sleep={"after": given}).model_dump(mode="json")["sleep"] == {"after": shown}


@pytest.mark.parametrize("bad", ["0s", "31d", "15 minutes", "-5m", "1.5h", True, 0, 2_592_001, "", "15M"])
def test_a_bad_sleep_after_names_the_field_and_the_rule(bad: object) -> None:
    with pytest.raises(ValidationError) as error:
        TenantSpec(template="base", sleep={"after": bad})
    assert error.value.errors()[0]["loc"] == ("sleep", "after")
    assert "must be a duration from 1s to 30d" in str(error.value)


def test_a_raw_sql_write_out_of_range_is_refused_by_the_store(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    with pytest.raises(Exception) as error, store.engine.begin() as conn:
        conn.execute(text("UPDATE tenants SET sleep_after_seconds = -1 WHERE name = 'acme'"))
    assert "sleep_after_seconds_must_be_between_0_and_2592000" in str(error.value)


def test_the_rule_comes_from_the_tenant_else_its_template_and_never_overrides_it(store: Store) -> None:
    store.upsert_template(Template(name="idle", resources={"cpu": "1", "memory": "64Mi", "disk": "64Mi", "pids": 64},
                                   sleep=Sleep(after=600)))
    store.apply_tenant(tenant("inherits", template="idle"))
    store.apply_tenant(tenant("own", template="idle", sleep={"after": "30s"}))
    store.apply_tenant(tenant("never", template="idle", sleep={"after": "never"}))
    store.apply_tenant(tenant("plain"))
    rules = {name: store.desired(name).spec.sleep_after for name in ("inherits", "own", "never", "plain")}  # type: ignore[union-attr]
    assert rules == {"inherits": 600, "own": 30, "never": None, "plain": None}
    got = store.get_tenant("never")
    assert got is not None and got.spec.sleep == Sleep(after=None)  # said so, unlike "plain" (None: the template's)
    assert store.get_tenant("plain").spec.sleep is None  # type: ignore[union-attr]


# -- the store ---------------------------------------------------------------------------------------------
def test_sleep_and_wake_are_a_compare_and_set_with_an_event_and_a_revision_but_no_generation(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    before = store.get_tenant("acme")
    assert before is not None
    assert store.set_asleep("acme", True) is True
    assert store.set_asleep("acme", True) is False  # already asleep: nothing written
    record = store.desired("acme")
    assert record is not None and record.spec is not None and record.spec.asleep
    after = store.get_tenant("acme")
    assert after is not None and after.metadata.generation == before.metadata.generation
    assert after.metadata.revision > before.metadata.revision  # the controller's feed sees it
    from specs import Event

    assert store.set_asleep("acme", False, Event(tenant="acme", reason="WakeRequested", message="test")) is True
    assert store.set_asleep("acme", False) is False
    assert [e.reason for e in store.events(tenant="acme")][-1:] == ["WakeRequested"]
    with pytest.raises(Exception, match="not found"):
        store.set_asleep("nobody", True)


def test_a_tenant_being_deleted_is_not_put_to_sleep(store: Store) -> None:
    store.apply_tenant(tenant("acme"))
    store.request_delete("acme")
    assert store.set_asleep("acme", True) is False


# -- the reconciler ----------------------------------------------------------------------------------------
def test_an_asleep_tenant_is_stopped_with_all_else_kept_and_a_wake_starts_it(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme", sleep={"after": "2s"}))
    converge(controller, clock)
    running = store.get_tenant("acme")
    assert running is not None and running.status is not None and running.status.phase == Phase.RUNNING
    assert running.status.condition("Sleeping").reason == "Awake"  # type: ignore[union-attr]
    limits = fake.containers["acme"].resources
    store.set_asleep("acme", True)
    converge(controller, clock)
    asleep = store.get_tenant("acme")
    assert asleep is not None and asleep.status is not None
    assert asleep.status.phase == Phase.SLEEPING
    assert asleep.status.address == running.status.address  # kept, so a wake is one start
    sleeping = asleep.status.condition("Sleeping")
    assert sleeping is not None and sleeping.status.value == "True" and "asleep since" in sleeping.message
    assert fake.containers["acme"].pid is None
    assert fake.containers["acme"].resources == limits
    store.set_asleep("acme", False)
    converge(controller, clock)
    assert phase(store, "acme") == Phase.RUNNING and fake.containers["acme"].pid is not None
    reasons = [e.reason for e in store.events(tenant="acme")]
    assert reasons[-4:] == ["Stopped", "Sleeping", "Started", "Woke"], reasons
    assert "DriftDetected" not in reasons  # a sleep is the plan, not drift
    assert fake.completed_clones["acme"] == 1


def test_a_container_started_by_hand_while_asleep_is_kept_running_and_woken(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme", sleep={"after": "2s"}))
    converge(controller, clock)
    store.set_asleep("acme", True)
    converge(controller, clock)
    assert phase(store, "acme") == Phase.SLEEPING
    fake.start("acme")  # an administrator starts it behind Fleet's back
    controller.queue.add("acme")
    drain(controller, clock=clock)
    assert fake.containers["acme"].pid is not None, "never killed: it may be serving a request"
    assert phase(store, "acme") == Phase.RUNNING
    record = store.desired("acme")
    assert record is not None and record.spec is not None and not record.spec.asleep
    assert "WokenOutsideFleet" in [e.reason for e in store.events(tenant="acme")]


def test_a_tenant_created_asleep_is_made_but_not_started(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    store.apply_tenant(tenant("acme"))
    store.set_asleep("acme", True)
    converge(controller, clock)
    assert "acme" in fake.containers and fake.containers["acme"].pid is None
    assert phase(store, "acme") == Phase.SLEEPING


def test_a_sleeping_tenant_takes_a_slot_and_its_disk_but_no_cpu_or_memory(
    store: Store, controller: Controller, clock: ManualClock
) -> None:
    for name in ("a", "b"):
        store.apply_tenant(tenant(name, resources={"cpu": "1", "memory": "256Mi", "disk": "1Gi"}))
    converge(controller, clock)
    store.set_asleep("b", True)
    used = NodeStore(store).usage()["n1"]
    assert (used.tenants, used.sleeping, used.running) == (2, 1, 1)
    assert (used.cpu_millicores, used.memory_bytes, used.disk_bytes) == (1000, 256 << 20, 2 << 30)


# -- the gateway's idle rule -------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeper(store: Store) -> Iterator[tuple[Sleeper, Clock]]:
    clock = Clock()
    yield Sleeper(store, Routes(store), GatewayLimits(), clock=clock), clock


def test_the_idle_rule_sleeps_a_tenant_only_after_its_time_without_a_visitor(
    store: Store, controller: Controller, clock: ManualClock, sleeper: tuple[Sleeper, Clock]
) -> None:
    rule, time_ = sleeper
    store.apply_tenant(tenant("idle", sleep={"after": "10s"}))
    store.apply_tenant(tenant("busy", sleep={"after": "10s"}))
    store.apply_tenant(tenant("forever"))
    converge(controller, clock)
    assert asyncio.run(rule.sweep()) == []  # first seen now: each has its full time
    time_.now += 9
    assert asyncio.run(rule.sweep()) == []
    with rule.visiting("busy") as visit:  # a request (or websocket) under way: never idle
        visit.admit()  # its claim was good
        time_.now += 5
        assert asyncio.run(rule.sweep()) == ["idle"]
    assert asyncio.run(rule.sweep()) == []  # its idle time starts again when the request ends
    time_.now += 9
    with rule.visiting("busy"):  # a visitor without a valid claim (answered 401) keeps nobody awake...
        time_.now += 1
        assert asyncio.run(rule.sweep()) == ["busy"]  # ...not even while its request is under way
    converge(controller, clock)
    assert (phase(store, "idle"), phase(store, "busy"), phase(store, "forever")) == (
        Phase.SLEEPING, Phase.SLEEPING, Phase.RUNNING)
    event = next(e for e in store.events(tenant="idle") if e.reason == "SleepRequested")
    assert "idle at the gateway for 10s" in event.message


def test_a_tenant_woken_outside_the_gateway_gets_a_new_idle_period(
    store: Store, controller: Controller, clock: ManualClock, sleeper: tuple[Sleeper, Clock]
) -> None:
    rule, time_ = sleeper
    store.apply_tenant(tenant("acme", sleep={"after": "10s"}))
    converge(controller, clock)
    asyncio.run(rule.sweep())
    time_.now += 11
    assert asyncio.run(rule.sweep()) == ["acme"]
    converge(controller, clock)
    store.set_asleep("acme", False)  # `fleet wake`
    converge(controller, clock)
    assert asyncio.run(rule.sweep()) == []
    time_.now += 11
    assert asyncio.run(rule.sweep()) == ["acme"]


def test_the_gateway_refuses_to_queue_more_than_its_limit_for_one_wake(store: Store) -> None:
    from reconciler.web.gateway_routes import TenantBusy

    limits = GatewayLimits(wake_queue_per_tenant=2, wake_timeout_seconds=0.2)
    rule = Sleeper(store, Routes(store), limits)
    store.apply_tenant(tenant("acme"))
    store.set_asleep("acme", True)  # no reconciler runs here: the wake cannot finish

    async def three() -> list[object]:
        return await asyncio.gather(*(rule.wake("acme") for _ in range(3)), return_exceptions=True)

    outcomes = asyncio.run(three())
    assert sum(isinstance(o, TenantBusy) for o in outcomes) == 1
    assert all(type(o).__name__ == "WakeFailed" for o in outcomes if not isinstance(o, TenantBusy))
    assert rule.wakes == 1  # one wake, however many waited


def test_two_gateways_waking_one_tenant_write_one_wake_that_says_a_visitor_woke_it(store: Store) -> None:
    limits = GatewayLimits(wake_timeout_seconds=0.2)
    gateways = [Sleeper(store, Routes(store), limits) for _ in range(2)]
    store.apply_tenant(tenant("acme"))
    store.set_asleep("acme", True)  # no reconciler runs here: the wakes cannot finish

    async def many() -> list[object]:
        return await asyncio.gather(*(gateway.wake("acme") for gateway in gateways for _ in range(5)),
                                    return_exceptions=True)

    outcomes = asyncio.run(many())
    assert all(type(o).__name__ == "WakeFailed" for o in outcomes), outcomes
    assert [gateway.wakes for gateway in gateways] == [1, 1]  # one wake each, however many waited
    woken = [e for e in store.events(tenant="acme") if e.reason == "WakeRequested"]
    assert [e.message for e in woken] == ["woken by a visitor's request at the gateway"]  # one write in all
    record = store.desired("acme")
    assert record is not None and record.spec is not None and not record.spec.asleep


def test_a_plans_sleep_rule_is_stored_and_given_to_the_tenants_it_makes(store: Store) -> None:
    from reconciler.web.webhooks import BillingWebhook, SubscriptionObject
    from specs.billing_plan import Plan
    from state.plans import Plans

    plans = Plans(store.session)
    plans.apply_plans([Plan(id="price_idle", template="base", sleep={"after": "15m"}),
                       Plan(id="price_plain", template="base")])
    idle, plain = plans.get_plan("price_idle"), plans.get_plan("price_plain")
    assert idle is not None and idle.sleep == Sleep(after=900)
    assert plain is not None and plain.sleep is None
    item = {"price": {"id": "price_idle", "product": "prod_1"}}
    subscription = SubscriptionObject.model_validate({"id": "sub_1", "customer": "cus_1", "items": {"data": [item]}})
    assert BillingWebhook._tenant("acme", subscription, idle).spec.sleep == Sleep(after=900)


def test_a_sleeping_tenant_is_not_listed_as_not_ready_on_the_dashboard(
    store: Store, controller: Controller, clock: ManualClock
) -> None:
    from state.dashboard import DashboardReads

    for name in ("awake", "dozy"):
        store.apply_tenant(tenant(name))
    converge(controller, clock)
    store.set_asleep("dozy", True)
    converge(controller, clock)
    reads = DashboardReads(store.session)
    assert reads.counts().phases == {"Running": 1, "Sleeping": 1}
    assert reads.not_ready().total == 0 and reads.not_ready().lines == []


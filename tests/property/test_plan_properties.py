"""plan() is idempotent: applying its actions to what was observed leaves nothing more to do."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from reconciler.actions import Action, ApplyNetwork, ApplyResources, Clone, Delete, Start, Stop
from reconciler.plan import plan
from specs import Network, Observed, ResolvedSpec, Resources, Template

resources = st.builds(
    Resources.model_construct,
    cpu=st.sampled_from([100, 500, 2000]),
    memory=st.sampled_from([64 << 20, 256 << 20, 1 << 30]),
    disk=st.sampled_from([256 << 20, 1 << 30]),
    pids=st.sampled_from([64, 256]),
    io=st.sampled_from([None, 50 << 20]),
)
networks = st.builds(
    Network.model_construct, ingress=st.one_of(st.none(), st.sampled_from([(80,), (80, 443), (8080,)]))
)
specs_ = st.builds(
    ResolvedSpec.model_construct,
    name=st.just("acme"),
    generation=st.integers(1, 5),
    template=st.just(Template(name="base", version="1")),
    resources=resources,
    network=networks,
    paused=st.booleans(),
    deleting=st.booleans(),
    asleep_since=st.one_of(st.none(), st.just(datetime(2026, 12, 1, tzinfo=UTC))),
)
observed_ = st.one_of(
    st.none(),
    st.builds(
        Observed.model_construct,
        name=st.just("acme"),
        template=st.just("base@1"),
        resources=st.one_of(resources, st.just(Resources())),
        network=st.one_of(networks, st.just(Network())),
        running=st.booleans(),
        address=st.one_of(st.none(), st.just("10.0.0.2")),
        pid=st.none(),
        problems=st.just(()),
        restart_reason=st.sampled_from([None, "runs without a user namespace"]),
    ),
)


def apply(actions: list[Action], observed: Observed | None) -> Observed | None:
    """What a correct driver leaves behind after each action."""
    for action in actions:
        match action:
            case Clone(template=template):
                observed = observed or Observed(name="acme", template=template.ref)
            case ApplyResources(resources=r):
                assert observed is not None, "resources applied to nothing"
                observed = observed.model_copy(update={"resources": r})
            case ApplyNetwork(network=n):
                assert observed is not None, "network applied to nothing"
                observed = observed.model_copy(update={"network": n, "address": "10.0.0.2"})
            case Start():
                assert observed is not None, "started nothing"
                assert not observed.running, "started a running container"
                # A (re)started container runs the way the driver starts containers now.
                observed = observed.model_copy(update={"running": True, "restart_reason": None})
            case Stop():
                observed = observed.model_copy(update={"running": False}) if observed else None
            case Delete():
                observed = None
    return observed


@given(specs_, observed_)
def test_applying_the_plan_leaves_an_empty_plan(desired: ResolvedSpec, observed: Observed | None) -> None:
    after = apply(plan(desired, observed), observed)
    assert plan(desired, after) == []


@given(specs_, observed_)
def test_plan_is_deterministic_and_never_repeats_an_action(desired: ResolvedSpec, observed: Observed | None) -> None:
    actions = plan(desired, observed)
    assert actions == plan(desired, observed)
    assert len({type(a) for a in actions}) == len(actions)


@given(specs_, observed_)
def test_a_deleting_tenant_ends_with_nothing_on_the_host(desired: ResolvedSpec, observed: Observed | None) -> None:
    deleting = desired.model_copy(update={"deleting": True})
    assert apply(plan(deleting, observed), observed) is None


@given(specs_, observed_)
def test_an_asleep_tenant_ends_stopped_with_all_else_in_place_and_an_awake_one_running(
    desired: ResolvedSpec, observed: Observed | None
) -> None:
    if desired.paused or desired.deleting:
        return
    after = apply(plan(desired, observed), observed)
    assert after is not None and after.running is not desired.asleep
    assert after.resources == desired.resources and after.network == desired.network and after.address


@given(specs_, observed_)
def test_sleep_and_wake_are_a_stop_and_a_start_and_nothing_else(
    desired: ResolvedSpec, observed: Observed | None
) -> None:
    awake = desired.model_copy(update={"asleep_since": None, "paused": False, "deleting": False})
    converged = apply(plan(awake, observed), observed)
    asleep = awake.model_copy(update={"asleep_since": datetime(2026, 12, 1, tzinfo=UTC)})
    assert plan(asleep, converged) == [Stop()]
    stopped = apply([Stop()], converged)
    assert plan(awake, stopped) == [Start()]

from reconciler.actions import ApplyNetwork, ApplyResources, Clone, Delete, Start, Stop
from reconciler.plan import plan
from specs import Network, Observed, ResolvedSpec, Resources, Template

RESOURCES = Resources.model_validate({"cpu": "500m", "memory": "256Mi", "disk": "1Gi", "pids": 256})
NETWORK = Network(ingress=(80,))
BASE = Template(name="base", version="1", resources=RESOURCES, network=NETWORK)


def spec(**changes: object) -> ResolvedSpec:
    base = ResolvedSpec(
        name="acme", generation=1, template=BASE, resources=RESOURCES, network=NETWORK
    )
    return base.model_copy(update=changes)


def running(**changes: object) -> Observed:
    base = Observed(
        name="acme", template="base@1", resources=RESOURCES, network=NETWORK, running=True, address="10.0.0.2"
    )
    return base.model_copy(update=changes)


def test_a_new_tenant_is_cloned_quota_d_networked_and_started_in_that_order() -> None:
    assert plan(spec(), None) == [Clone(BASE), ApplyResources(RESOURCES), Start(), ApplyNetwork(NETWORK)]
    assert plan(spec(), None)[0].describe() == "clone from template base@1"


def test_a_converged_tenant_needs_nothing() -> None:
    assert plan(spec(), running()) == []


def test_a_memory_change_re_quotas_in_place_without_restart() -> None:
    bigger = RESOURCES.model_copy(update={"memory": 1 << 30})
    assert plan(spec(resources=bigger), running()) == [ApplyResources(bigger)]


def test_a_stopped_container_is_started() -> None:
    assert plan(spec(), running(running=False)) == [Start()]


def test_missing_network_is_reapplied() -> None:
    assert plan(spec(), running(address=None, network=Network())) == [ApplyNetwork(NETWORK)]


def test_deleting_a_running_tenant_stops_then_deletes() -> None:
    assert plan(spec(deleting=True), running()) == [Stop(), Delete()]


def test_deleting_a_tenant_with_nothing_left_needs_nothing() -> None:
    assert plan(spec(deleting=True), None) == []


def test_a_paused_tenant_is_only_observed() -> None:
    assert plan(spec(paused=True), running(running=False, resources=Resources())) == []
    assert plan(spec(paused=True), None) == []


def test_a_container_the_driver_must_restart_is_stopped_then_started_once() -> None:
    # e.g. started by an older Fleet without a user namespace: the next pass moves it into its own.
    outdated = running(restart_reason="runs without a user namespace")
    assert plan(spec(), outdated) == [Stop(), Start()]
    assert plan(spec(), outdated.model_copy(update={"running": False})) == [Start()]
    assert plan(spec(paused=True), outdated) == []  # paused: observed, never restarted

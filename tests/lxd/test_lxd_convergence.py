"""Drift made by hand and kill -9 at each step: the LXD driver's next pass converges, and a delete leaves
nothing (instance, root volume, snapshots, ingress rule)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from drivers.lxd import LxdDriver
from specs import Network, Observed, Resources, TransientError

pytest.register_assert_rewrite("tests.lxd.runtime")
from tests.drivers.subjects import kill_child_at  # noqa: E402
from tests.lxd.runtime import (  # noqa: E402
    BASE,
    TEST_NETWORK,
    TEST_POOL,
    TEST_POOL_SIZE,
    TEST_PREFIX,
    TEST_RANGE,
    http_get,
    wait_http,
)

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
MakeTenant = Callable[..., Observed]
RESOURCES = Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi")
WEB = Network(ingress=(80,), egress="none")
STEPS = ("clone", "apply_resources", "apply_network", "start", "stop", "delete")


@pytest.fixture
def driver(lxd_driver: object) -> LxdDriver:
    assert isinstance(lxd_driver, LxdDriver)
    return lxd_driver


def _converge(driver: LxdDriver, name: str) -> Observed:
    """One reconcile pass after another, as the controller retries transient errors, until it converges."""
    from tests.helpers import wait_for

    def one_pass() -> Observed | None:
        try:
            driver.clone(name, BASE)
            driver.apply_resources(name, RESOURCES)
            driver.apply_network(name, WEB)
            driver.start(name)
        except TransientError:
            return None
        observed = driver.inspect(name)
        return observed if observed is not None and observed.running and not observed.problems else None

    return wait_for(one_pass, timeout=60, interval=0.2, what=f"tenant {name} to converge")


def _assert_gone(driver: LxdDriver, name: str) -> None:
    assert driver.inspect(name) is None
    assert driver.client.instance(name) is None
    assert not driver.client.exists(f"/1.0/storage-pools/{driver.storage_pool}/volumes/container/{name}")
    assert name not in driver.bridge.rules()


def test_drift_made_by_hand_is_seen_and_repaired_without_a_restart(
    driver: LxdDriver, make_lxd_tenant: MakeTenant
) -> None:
    tenant = make_lxd_tenant("drift")
    name, address = tenant.name, tenant.address
    assert address is not None
    wait_http(address)
    # a limit changed by hand
    driver.client.request("PATCH", f"/1.0/instances/{name}", json={"config": {"limits.memory": "256MiB"}})
    changed = driver.inspect(name)
    assert changed is not None and changed.resources.memory == 256 << 20
    driver.apply_resources(name, RESOURCES)
    assert (driver.inspect(name) or changed).resources == RESOURCES
    # the tenant's ingress rule removed from the ACL by hand
    acl = driver.client.get(f"/1.0/network-acls/{driver.bridge.acl}").metadata
    acl["ingress"] = [r for r in acl["ingress"] if r.get("description") != f"fleet:{name}"]
    driver.client.request("PUT", f"/1.0/network-acls/{driver.bridge.acl}", json=acl)
    dropped = driver.inspect(name)
    assert dropped is not None and dropped.address is None and "ingress rule missing" in dropped.problems
    assert http_get(address, timeout=0.5) is None  # the host is no longer let in
    # the address removed inside the container
    subprocess.run(["nsenter", f"--net=/proc/{tenant.pid}/ns/net", "ip", "addr", "flush", "dev", "eth0"], check=True)
    driver.apply_network(name, WEB)
    repaired = driver.inspect(name)
    assert repaired is not None and repaired.problems == () and repaired.address == address
    wait_http(address)
    assert repaired.pid == tenant.pid  # none of the repairs restarted the container
    # the container stopped by hand
    driver.client.request("PUT", f"/1.0/instances/{name}/state", json={"action": "stop", "force": True})
    stopped = driver.inspect(name)
    assert stopped is not None and not stopped.running
    driver.start(name)
    wait_http(address)
    # the instance deleted by hand: inspect says so, and the next pass makes it again
    driver.client.request("PUT", f"/1.0/instances/{name}/state", json={"action": "stop", "force": True})
    driver.client.request("DELETE", f"/1.0/instances/{name}")
    assert driver.inspect(name) is None
    again = _converge(driver, name)
    assert again.address is not None
    wait_http(again.address)


def _run_and_kill(name: str, step: str, inside: bool) -> None:
    """A second operator process runs every step up to `step` and is killed with SIGKILL at it (before it
    starts, or while its LXD request is under way)."""
    settings = {"storage_pool": TEST_POOL, "network": TEST_NETWORK, "pool_size": TEST_POOL_SIZE,
                "address_range": TEST_RANGE, "node": "crash"}
    kill_child_at({"driver": "lxd", "settings": settings}, name, step, inside=inside)


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_between_steps_converges_on_the_next_pass(driver: LxdDriver, step: str) -> None:
    """Killed after the steps before `step` finished (the conformance suite kills it inside each step)."""
    name = f"{TEST_PREFIX}crash-{STEPS.index(step)}b"
    try:
        _run_and_kill(name, step, inside=False)
        observed = _converge(driver, name)
        assert observed.resources == RESOURCES and observed.network == WEB and observed.address is not None
        wait_http(observed.address)
        receipt = driver.delete(name)
        assert receipt.removed and f"instance {name}" in receipt.removed
        _assert_gone(driver, name)
    finally:
        driver.delete(name)
    _assert_gone(driver, name)


def test_a_tenant_wanting_fewer_ports_than_its_template_never_gets_the_templates_rule_back(
    driver: LxdDriver,
) -> None:
    """`clone` writes the template's default rule in the background; `apply_network` right after it waits
    for that write and then writes the tenant's own, so the default never lands over it."""
    name = f"{TEST_PREFIX}fewer-ports"
    web_template = BASE.model_copy(update={"network": WEB})  # the same base@1, defaulting to port 80
    try:
        driver.clone(name, web_template)
        driver.apply_network(name, Network(ingress=()))
        rules = driver.bridge.rules()
        assert rules[name].ports == ()
        driver.apply_resources(name, RESOURCES)
        driver.start(name)
        observed = driver.inspect(name)
        assert observed is not None and observed.network == Network(ingress=(), egress="none") and not observed.problems
        assert observed.address is not None and http_get(observed.address, timeout=0.5) is None  # port 80 shut
    finally:
        driver.delete(name)
    _assert_gone(driver, name)

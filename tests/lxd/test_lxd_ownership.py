"""Ownership on LXD: a tenant carries Fleet's marks and the spec generation Fleet last wrote
(`user.fleet.generation`), read back by inspect and list; a resync is two requests whatever the number of
tenants; an instance without Fleet's marker is never listed, read, changed, started or deleted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.lxd import LxdDriver
from drivers.lxd_config import GENERATION, MARKER, ROLE
from drivers.lxd_network import look_inside
from specs import Network, Observed, PermanentError, Resources

pytest.register_assert_rewrite("tests.lxd.runtime")
from tests.lxd.runtime import BASE, TEST_PREFIX  # noqa: E402

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
MakeTenant = Callable[..., Observed]
RESOURCES = Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi")


@pytest.fixture
def driver(lxd_driver: object) -> LxdDriver:
    assert isinstance(lxd_driver, LxdDriver)
    return lxd_driver


@pytest.fixture
def requests(driver: LxdDriver, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every request the driver sends to LXD from now on (method, path)."""
    sent: list[tuple[str, str]] = []
    send = driver.client.request

    def counted(method: str, path: str, **options: Any) -> Any:
        sent.append((method, path))
        return send(method, path, **options)

    monkeypatch.setattr(driver.client, "request", counted)
    return sent


@pytest.fixture
def stranger(driver: LxdDriver) -> Iterator[str]:
    """An operator's own instance on the same pool, named like a test tenant, without Fleet's marker."""
    name = f"{TEST_PREFIX}stranger-own"
    driver.client.request("POST", "/1.0/instances", json={
        "name": name, "type": "container", "profiles": [], "source": {"type": "none"},
        "config": {"user.owner": "someone else"},
        "devices": {"root": {"type": "disk", "path": "/", "pool": driver.storage_pool}}})
    try:
        yield name
    finally:
        driver.client.request("DELETE", f"/1.0/instances/{name}")


def test_generation_is_written_with_the_clone_and_each_requota_and_read_back(
    driver: LxdDriver, requests: list[tuple[str, str]]
) -> None:
    name = f"{TEST_PREFIX}generation"
    try:
        driver.clone(name, BASE, generation=4)
        cloned = driver.inspect(name)
        assert cloned is not None and cloned.generation == 4
        assert driver.client.get(f"/1.0/instances/{name}").metadata["config"][GENERATION] == "4"
        driver.apply_resources(name, RESOURCES, generation=5)
        driver.apply_network(name, Network(ingress=(80,)))
        driver.start(name)
        running = driver.inspect(name)
        assert running is not None and running.generation == 5 and running.resources == RESOURCES
        assert {o.name: o.generation for o in driver.list()}[name] == 5
        # The same limits for the same generation: read, compared, and not written again (a PUT restarts
        # nothing, but costs LXD 30-60 ms of cgroup and quota writes).
        requests.clear()
        driver.apply_resources(name, RESOURCES, generation=5)
        assert requests == [("GET", f"/1.0/instances/{name}")]
        # A newer generation with the same limits is recorded in place; the container keeps running.
        driver.apply_resources(name, RESOURCES, generation=6)
        again = driver.inspect(name)
        assert again is not None and again.generation == 6 and again.pid == running.pid
    finally:
        driver.delete(name)


def test_list_is_two_requests_and_leaves_an_unmarked_instance_unread_and_untouched(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, stranger: str, requests: list[tuple[str, str]]
) -> None:
    made = {make_lxd_tenant("own-a").name, make_lxd_tenant("own-b").name}
    before = driver.client.get(f"/1.0/instances/{stranger}")
    requests.clear()
    listed = {o.name for o in driver.list()}
    assert made <= listed and stranger not in listed
    assert len(requests) == 2, requests  # the marked tenants (filtered by LXD) and the ingress ACL
    # LXD itself leaves the stranger out: its config and state are never sent to Fleet.
    found = driver.client.instances(state=False, having={MARKER: "true", ROLE: "tenant"})
    assert stranger not in {i.name for i in found}
    assert stranger not in {u.tenant for u in driver.usage()}
    assert driver.inspect(stranger) is None
    for attempt in (lambda: driver.clone(stranger, BASE), lambda: driver.apply_resources(stranger, RESOURCES),
                    lambda: driver.apply_network(stranger, Network(ingress=(80,))), lambda: driver.start(stranger),
                    lambda: driver.delete(stranger)):
        with pytest.raises(PermanentError) as refused:
            attempt()
        assert refused.value.reason == "NotOwned"
    after = driver.client.get(f"/1.0/instances/{stranger}")
    assert after.etag == before.etag and after.metadata["config"] == before.metadata["config"]
    assert after.metadata["status"] == "Stopped"


def test_the_host_view_of_a_running_tenant_agrees_with_lxds_state(
    driver: LxdDriver, make_lxd_tenant: MakeTenant
) -> None:
    """inspect, list and start read the init's pid and the addresses from /proc instead of LXD's state."""
    tenant = make_lxd_tenant("hostview")
    state = driver.client.instance(tenant.name)  # LXD's own view, with its state
    inside = look_inside(tenant.name)
    assert state is not None and inside is not None
    assert inside.pid == state.pid == tenant.pid
    assert tenant.address is not None and inside.addresses == state.addresses["eth0"] == (tenant.address,)
    driver.stop(tenant.name)
    assert look_inside(tenant.name) is None
    stopped = driver.inspect(tenant.name)
    assert stopped is not None and not stopped.running and stopped.pid is None

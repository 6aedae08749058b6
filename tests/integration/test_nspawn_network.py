"""Per-tenant networks on the real host: netns, veth, leases, nftables isolation, drift repair, removal.

Traffic goes only to addresses on this machine: the namespaces the tests make, and a listener on the host.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loguru import logger

from drivers import nspawn_firewall
from drivers.nspawn_network import Networks, netns_path, veth_name
from specs import PermanentError

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.integration.conftest_runtime import TEST_PREFIX, can_connect_from_netns, wait_for  # noqa: E402

pytest_plugins = ["tests.integration.conftest_runtime"]
pytestmark = pytest.mark.root

A, B = f"{TEST_PREFIX}net-a", f"{TEST_PREFIX}net-b"


@pytest.fixture
def networks(runtime_state: Path) -> Networks:
    return Networks(runtime_state, "10.213.0.0/16")


def _nft(*arguments: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *arguments], input=script, capture_output=True, text=True, check=True)


@pytest.fixture
def listener_in(networks: Networks) -> Iterator[object]:
    """Start TCP listeners inside tenant namespaces (a Python http.server); stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def listen(tenant: str, port: int) -> None:
        server = subprocess.Popen(
            ["nsenter", f"--net={netns_path(tenant)}", sys.executable, "-m", "http.server", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(server)
        wait_for(lambda: can_connect_from_netns(tenant, "127.0.0.1", port), what=f"listener on {tenant}:{port}")

    try:
        yield listen
    finally:
        for server in started:
            server.kill()
            server.wait(timeout=5)


def test_ensure_builds_namespace_veth_address_route_and_is_idempotent(networks: Networks) -> None:
    started = time.perf_counter()
    address = networks.ensure(A, (80,))
    setup_ms = (time.perf_counter() - started) * 1000
    state = networks.observe(A)
    assert state.ready and state.problems == ()
    assert (state.address, state.ports) == (address, (80,))
    link = json.loads(subprocess.run(["ip", "-j", "link", "show", veth_name(A)], capture_output=True).stdout)[0]
    assert link["ifalias"] == f"fleet:{A}" and len(veth_name(A)) <= 15
    routes = subprocess.run(["ip", "-n", f"fleet-{A}", "route"], capture_output=True, text=True).stdout
    assert "default via" in routes
    assert networks.ensure(A, (80,)) == address  # a second call changes nothing
    started = time.perf_counter()
    removed = networks.remove(A)
    teardown_ms = (time.perf_counter() - started) * 1000
    logger.bind(setup_ms=round(setup_ms, 1), teardown_ms=round(teardown_ms, 1)).info("Measured tenant network")
    assert any(item.startswith("veth ") for item in removed)
    assert f"address {address}" in removed
    assert networks.remove(A) == []


def test_leases_are_distinct_persisted_and_never_doubled(networks: Networks, runtime_state: Path) -> None:
    address_a = networks.ensure(A, ())
    address_b = networks.ensure(B, ())
    assert address_a != address_b
    assert Networks(runtime_state).leases.get(A) == networks.leases.get(A)  # survives a restart
    (runtime_state / "leases.json").unlink()  # a lost lease file: the host's veths still hold the truth
    fresh = Networks(runtime_state)
    assert fresh.ensure(B, ()) == address_b
    assert fresh.ensure(f"{TEST_PREFIX}net-c", ()) not in (address_a, address_b)
    fresh.remove(f"{TEST_PREFIX}net-c")


def test_firewall_isolates_tenants_from_each_other_and_from_the_host(networks: Networks, listener_in: object) -> None:
    address_a = networks.ensure(A, (80,))
    address_b = networks.ensure(B, (80,))
    listen = listener_in
    assert callable(listen)
    listen(A, 80)
    listen(A, 8080)
    listen(B, 80)
    with socket.create_server(("0.0.0.0", 0)) as host_service:
        host_port = host_service.getsockname()[1]
        # The host reaches a tenant only on its ingress ports.
        assert socket.create_connection((address_a, 80), timeout=2)
        with pytest.raises(OSError):
            socket.create_connection((address_a, 8080), timeout=1)
        # A tenant reaches neither another tenant nor the host's own services.
        assert not can_connect_from_netns(A, address_b, 80)
        lease_a, lease_b = networks.leases.get(A), networks.leases.get(B)
        assert lease_a is not None and lease_b is not None
        assert not can_connect_from_netns(A, lease_a.host_address, host_port)
        assert not can_connect_from_netns(A, lease_b.host_address, host_port)
        assert socket.create_connection(("127.0.0.1", host_port), timeout=2)  # the service is really there


def test_drift_is_observed_and_repaired(networks: Networks, listener_in: object) -> None:
    address = networks.ensure(A, (80, 443))
    networks.ensure(B, (80,))
    veth = veth_name(A)

    subprocess.run(["ip", "link", "del", veth], check=True)
    drifted = networks.observe(A)
    assert not drifted.ready and f"veth {veth} missing" in drifted.problems
    assert networks.ensure(A, (80, 443)) == address
    assert networks.observe(A).ready

    _nft("delete", "element", "inet", "fleet", "tenant_ingress", f'{{ "{veth}" . 443 }}')
    assert networks.observe(A).ports == (80,)
    networks.ensure(A, (80, 443))
    assert networks.observe(A).ports == (80, 443)

    listing = json.loads(_nft("-j", "-a", "list", "chain", "inet", "fleet", "input").stdout)["nftables"]
    handle = next(item["rule"]["handle"] for item in listing if "rule" in item)
    _nft("delete", "rule", "inet", "fleet", "input", "handle", str(handle))
    assert "firewall table incomplete" in networks.observe(A).problems
    networks.ensure(A, (80, 443))
    assert networks.observe(A).ready
    assert networks.observe(B).ports == (80,)  # the rebuild kept the other tenant's elements

    # A port dropped from the spec is removed from the firewall.
    networks.ensure(A, (443,))
    assert networks.observe(A).ports == (443,)
    assert callable(listener_in)


def test_refuses_to_adopt_what_fleet_does_not_own(networks: Networks) -> None:
    veth = veth_name(A)
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "ftpeer0"], check=True)
    try:
        with pytest.raises(PermanentError, match="refusing to adopt"):
            networks.ensure(A, (80,))
        removed = networks.remove(A)
        assert not any(item.startswith("veth") for item in removed)
        assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0  # left alone
    finally:
        subprocess.run(["ip", "link", "del", veth], check=False, capture_output=True)
    # A table of Fleet's name without Fleet's marker (a private name here, so the real table is not needed).
    foreign = nspawn_firewall.Firewall(table="fleettest")
    _nft("add", "table", "inet", "fleettest")
    try:
        with pytest.raises(PermanentError, match="lacks Fleet's marker"):
            foreign.ensure_tenant(B, veth_name(B), (80,), "10.213.9.2")
        assert foreign.remove_tenant(veth_name(B)) == []
        assert not foreign.remove_table_if_unused()
        assert foreign.read().exists  # left alone
    finally:
        _nft("delete", "table", "inet", "fleettest")


def test_a_first_ensure_that_fails_half_way_takes_back_what_it_made(runtime_state: Path) -> None:
    # The last step fails: the firewall table of this name is not Fleet's (a private name, as above).
    networks = Networks(runtime_state, "10.213.0.0/16", firewall=nspawn_firewall.Firewall(table="fleettest"))
    _nft("add", "table", "inet", "fleettest")
    try:
        with pytest.raises(PermanentError, match="lacks Fleet's marker"):
            networks.ensure(A, (80,))
    finally:
        _nft("delete", "table", "inet", "fleettest")
    assert networks.leases.get(A) is None, "the lease was released"
    assert not netns_path(A).exists()
    assert subprocess.run(["ip", "link", "show", veth_name(A)], capture_output=True).returncode != 0


def test_no_link_exists_before_the_firewall_holds_the_tenant_and_a_started_namespace_is_kept(
    runtime_state: Path,
) -> None:
    # As the driver starts a container: the namespace first (with its sysctls), the network afterwards.
    networks = Networks(runtime_state, "10.213.0.0/16", firewall=nspawn_firewall.Firewall(table="fleettest"))
    assert networks.ensure_namespace(A) and not networks.ensure_namespace(A)
    try:
        unprivileged = subprocess.run(
            ["ip", "netns", "exec", f"fleet-{A}", "sysctl", "-n", "net.ipv4.ip_unprivileged_port_start"],
            capture_output=True,
            text=True,
        )
        assert unprivileged.stdout.strip() == "0"
        _nft("add", "table", "inet", "fleettest")  # not Fleet's: the firewall step fails
        try:
            with pytest.raises(PermanentError, match="lacks Fleet's marker"):
                networks.ensure(A, (80,))
        finally:
            _nft("delete", "table", "inet", "fleettest")
        assert subprocess.run(["ip", "link", "show", veth_name(A)], capture_output=True).returncode != 0
        assert networks.leases.get(A) is None
        assert netns_path(A).exists(), "a container may run in it: only its maker removes it"
    finally:
        networks.remove(A)


def test_a_half_made_network_is_finished_by_the_next_call(networks: Networks) -> None:
    # As a crash would leave it: the namespace made, the veth made with its peer still under the temporary name.
    veth = veth_name(A)
    peer = "fp" + veth[2:]
    subprocess.run(["ip", "netns", "add", f"fleet-{A}"], check=True)
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", f"fleet-{A}"], check=True)
    subprocess.run(["ip", "link", "set", veth, "alias", f"fleet:{A}"], check=True)
    address = networks.ensure(A, (80,))
    state = networks.observe(A)
    assert state.ready and state.address == address


def test_concurrent_tenants_get_distinct_addresses_and_one_set_of_rules(networks: Networks) -> None:
    names = [f"{TEST_PREFIX}net-p{index}" for index in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        addresses = list(pool.map(lambda name: networks.ensure(name, (80,)), names))
    assert len(set(addresses)) == len(names)
    ruleset = _nft("list", "table", "inet", "fleet").stdout
    assert ruleset.count("fleet:base:input-drop") == 1
    for name in names:
        networks.remove(name)

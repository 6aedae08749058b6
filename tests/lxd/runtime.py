"""Fixtures for tests against a real LXD daemon (a pytest plugin: `pytest_plugins = ["tests.lxd.runtime"]`).

The session starts the daemon when none answers (and stops only a daemon it started), gives the driver a
storage pool, bridge and address range of the tests' own (so an operator's Fleet on this host is never
touched), and removes everything it made afterwards, also what a killed earlier run left: tenants of the
test prefix, template instances on the test pool, Fleet images, the bridge, its ACL, its egress guard
table, the pool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.lxd_api import LXD_SOCKET, LxdClient
from drivers.lxd_host import DEFAULT_NETWORK, DEFAULT_POOL
from specs import FleetError, NotFound, Observed, Template, TransientError
from tests.helpers import http_get, tenant_maker, wait_for, wait_http  # noqa: F401 (re-exported)

TEST_PREFIX = "ft-"
TEST_POOL = "fleet-test"
TEST_NETWORK = "fleettest0"
TEST_RANGE = "10.219.0.0/24"  # no other test uses 10.219/16: the bridge holds a route for the session
TEST_POOL_SIZE = 3 << 30
LOG = Path("/var/log/lxd/fleet-tests.log")
BASE = Template(name="base", version="1")


def lxd_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the LXD daemon and tenant network namespaces"
    if shutil.which("lxd") is None:
        return "LXD is not installed: apt-get install -y lxd dnsmasq-base (scripts/setup-host does)"
    return None


def lxd_answers(client: LxdClient) -> bool:
    try:
        client.server()
    except FleetError:
        return False
    return True


@pytest.fixture(scope="session")
def lxd_daemon() -> Iterator[LxdClient]:
    """A daemon answering on LXD's socket: the running one, or one started (and later stopped) here."""
    reason = lxd_unavailable()
    if reason:
        pytest.skip(reason)
    client = LxdClient(LXD_SOCKET, timeout=30.0)
    process: subprocess.Popen[bytes] | None = None
    if not lxd_answers(client):
        LOG.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(["lxd", "--group", "lxd", f"--logfile={LOG}"], start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: lxd_answers(client), timeout=30, what="the LXD daemon to answer")
    try:
        yield client
    finally:
        client.close()
        if process is not None:
            # `lxd shutdown` stops the daemon cleanly (and what runs under it: only the tests' own instances).
            subprocess.run(["lxd", "shutdown", "--timeout=30"], check=False, capture_output=True, timeout=60)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            # LXD leaves its firewall tables behind when it stops; they are its own, and this daemon was ours.
            for family in ("inet", "bridge"):
                subprocess.run(["nft", "delete", "table", family, "lxd"], check=False, capture_output=True, timeout=10)


def _until_done(client: LxdClient, method: str, path: str, **body: object) -> None:
    """One request, repeated while LXD is busy with an operation a killed operator left running."""

    def attempt() -> bool:
        try:
            client.request(method, path, json=body or None)
        except NotFound:
            return True
        except TransientError:
            return False
        return True

    wait_for(attempt, timeout=60, interval=0.2, what=f"LXD to {method} {path}")


def remove_guard(bridge: str) -> None:
    """The egress guard's nftables table of `bridge` (drivers/lxd_egress), when a test made one."""
    from drivers.lxd_egress import Guard

    Guard.of(bridge, "10.0.0.0/8").remove()


def sweep(client: LxdClient) -> None:
    """Remove every test tenant, template instance on the test pool, Fleet image, then bridge, ACL, pool,
    and the log directories LXD keeps for the instances removed."""
    for instance in client.instances():
        on_test_pool = (instance.devices.get("root") or {}).get("pool") == TEST_POOL
        if instance.name.startswith(TEST_PREFIX) or (on_test_pool and instance.config.get("user.fleet.managed")):
            if instance.running:
                _until_done(client, "PUT", f"/1.0/instances/{instance.name}/state", action="stop", force=True)
            _until_done(client, "DELETE", f"/1.0/instances/{instance.name}")
            shutil.rmtree(LOG.parent / instance.name, ignore_errors=True)
    for leftover in LOG.parent.glob(f"{TEST_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for image in client.get("/1.0/images", recursion=1).metadata or []:
        if "fleet_ref" in (image.get("properties") or {}):
            _until_done(client, "DELETE", f"/1.0/images/{image['fingerprint']}")
    for path in (f"/1.0/networks/{TEST_NETWORK}", f"/1.0/network-acls/{TEST_NETWORK}-ingress",
                 f"/1.0/storage-pools/{TEST_POOL}"):
        _until_done(client, "DELETE", path)
    remove_guard(TEST_NETWORK)
    (LOG.parent / f"dnsmasq.{TEST_NETWORK}.log").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def lxd_driver(lxd_daemon: LxdClient) -> Iterator[object]:
    """An LxdDriver on the tests' own pool, bridge and range, with the built-in base@1 template."""
    from drivers.lxd import LxdDriver

    sweep(lxd_daemon)
    driver = LxdDriver(storage_pool=TEST_POOL, network=TEST_NETWORK, pool_size=TEST_POOL_SIZE,
                       address_range=TEST_RANGE, node="lxd-test")
    try:
        driver.ensure_template(BASE)
        yield driver
    finally:
        driver.close()
        sweep(lxd_daemon)


@pytest.fixture
def make_lxd_tenant(lxd_driver: object) -> Iterator[Callable[..., Observed]]:
    """Provision a tenant end to end (clone, resources, network, start); deleted after the test."""
    from drivers.lxd import LxdDriver

    assert isinstance(lxd_driver, LxdDriver)
    with tenant_maker(lxd_driver, TEST_PREFIX, BASE) as make:
        yield make


def remove_default_parts(client: LxdClient, made: set[str]) -> None:
    """Fleet's default pool and bridge with everything on them, but only those this test made."""
    if DEFAULT_POOL in made:
        for instance in client.instances():
            if (instance.devices.get("root") or {}).get("pool") == DEFAULT_POOL:
                with contextlib.suppress(NotFound):
                    if instance.running:
                        client.request("PUT", f"/1.0/instances/{instance.name}/state",
                                       json={"action": "stop", "force": True})
                    client.request("DELETE", f"/1.0/instances/{instance.name}")
                shutil.rmtree(Path("/var/log/lxd") / instance.name, ignore_errors=True)  # LXD keeps its logs
    paths = {DEFAULT_NETWORK: [f"/1.0/networks/{DEFAULT_NETWORK}", f"/1.0/network-acls/{DEFAULT_NETWORK}-ingress"],
             DEFAULT_POOL: [f"/1.0/storage-pools/{DEFAULT_POOL}"]}
    for part in (DEFAULT_NETWORK, DEFAULT_POOL):
        if part in made:
            for path in paths[part]:
                with contextlib.suppress(NotFound):
                    client.request("DELETE", path)
    if DEFAULT_NETWORK in made:
        remove_guard(DEFAULT_NETWORK)
    (Path("/var/log/lxd") / f"dnsmasq.{DEFAULT_NETWORK}.log").unlink(missing_ok=True)


@pytest.fixture
def fresh_lxd(lxd_daemon: LxdClient) -> Iterator[LxdClient]:
    """The daemon with neither Fleet's default pool nor its bridge (as installed); both removed afterwards."""
    had = {DEFAULT_POOL: lxd_daemon.exists(f"/1.0/storage-pools/{DEFAULT_POOL}"),
           DEFAULT_NETWORK: lxd_daemon.exists(f"/1.0/networks/{DEFAULT_NETWORK}")}
    if any(had.values()):
        pytest.skip(f"this LXD already has Fleet's default parts {[k for k, v in had.items() if v]}: not a fresh one")
    try:
        yield lxd_daemon
    finally:
        remove_default_parts(lxd_daemon, {DEFAULT_POOL, DEFAULT_NETWORK})


# -- helpers ---------------------------------------------------------------------------------------------
def as_payload(client: LxdClient, tenant: str, address: str, script: str, *, timeout: float = 60.0,
               probe: Path | None = None) -> str:
    """Run a shell script *as the tenant's payload*: a CGI that the tenant's own busybox httpd executes,
    with exactly what LXD gave the container (user namespace, capabilities, seccomp, cgroups). The script
    is put into the tenant's tree through LXD's file API, as a tenant could put it there itself."""
    name = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    files = [(f"/srv/www/cgi-bin/{name}", f"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nexec 2>&1\n{script}\n"
              .encode())]
    if probe is not None:
        files.append(("/usr/bin/tenant_probe", probe.read_bytes()))
    for path, content in files:
        client.request("POST", f"/1.0/instances/{tenant}/files", params={"path": path}, content=content,
                       headers={"X-LXD-uid": "0", "X-LXD-gid": "0", "X-LXD-mode": "0755", "X-LXD-type": "file",
                                "Content-Type": "application/octet-stream"})
    wait_http(address)
    with urllib.request.urlopen(f"http://{address}/cgi-bin/{name}", timeout=timeout) as response:
        return str(response.read().decode(errors="replace"))

"""Fleet as a user runs it, on the real driver: `fleet up` on a loop-backed btrfs pool, real nspawn
containers, cgroups, veths and nftables. Root only; skipped with the reason elsewhere."""

import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.integration.sweep import host_parts, sweep_node

DATA_DIR = Path("/var/tmp/fleet-test-e2e")  # fixed, so a killed run's leftovers are found and removed
PREFIX = "fe-"  # every tenant these tests make; sweeps and leak checks touch nothing else
ARGS = ("--driver", "nspawn", "--pool-size", "2Gi", "--address-range", "10.215.0.0/16")
TENANT = "kind: Tenant\nmetadata: {name: NAME}\nspec: {template: base, resources: {memory: MEM, cpu: 250m}}\n"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the nspawn driver makes loop devices, cgroups, namespaces and nft rules"
    from drivers.nspawn import host_problems

    problems = host_problems()
    return "; ".join(problems) if problems else None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


def _host_parts(state: Path) -> dict[str, set[str]]:
    return host_parts(state.parent, PREFIX)


def _sweep() -> None:
    sweep_node(DATA_DIR, prefix=PREFIX, address_range="10.215.0.0/16")


@pytest.fixture
def node() -> Iterator[Fleet]:
    _sweep()
    fleet = Fleet(data_dir=DATA_DIR)
    try:
        yield fleet
    finally:
        _sweep()


@pytest.fixture
def running(node: Fleet) -> Iterator[Fleet]:
    process = start_operator(node, *ARGS)
    try:
        yield node
    finally:
        for item in json.loads(node.run("get", "tenants", "-o", "json").stdout)["items"]:
            node.run("delete", "tenant", item["metadata"]["name"], "--wait", "--timeout", "60", check=False)
        stop_operator(node, process)


def _apply(fleet: Fleet, name: str, memory: str = "128Mi") -> None:
    fleet.run("apply", "-f", "-", stdin=TENANT.replace("NAME", name).replace("MEM", memory))


def _page(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=2) as response:
        body: str = response.read().decode()
        return body


def _answers(address: str) -> str | None:
    try:
        return _page(address)
    except OSError:
        return None


def test_a_tenant_runs_within_2s_and_its_page_answers_from_the_host(running: Fleet) -> None:
    _apply(running, "fe-acme")
    written = time.monotonic()  # the record is in the store once apply returns

    def phase() -> str | None:
        with sqlite3.connect(running.db) as conn:
            row = conn.execute("SELECT phase FROM tenant_status WHERE name = 'fe-acme'").fetchone()
        return row[0] if row else None

    wait_for(lambda: phase() == "Running", timeout=10, interval=0.01, what="fe-acme Running")
    took = time.monotonic() - written
    document = running.tenant("fe-acme")
    assert document is not None
    address = document["status"]["address"]
    page = wait_for(lambda: _answers(address), timeout=5, what="the tenant's page")
    assert "fe-acme" in page, page
    assert took < 2.0
    describe = running.run("describe", "tenant", "fe-acme").stdout
    for expected in (f"Address:       {address}", "memory=128Mi", "cpu=250m", "Node:          ", "Started",
                     "Cloned", "NetworkReady       True"):
        assert expected in describe, describe


def test_requota_changes_the_cgroup_in_place_without_a_restart(running: Fleet) -> None:
    from drivers import nspawn_cgroups
    from drivers.nspawn_process import Processes

    _apply(running, "fe-requota")
    running.wait_phase("fe-requota", "Running")
    pid_before = Processes(DATA_DIR / "state").running_tenants()["fe-requota"]
    cgroups = nspawn_cgroups.detect()
    assert cgroups.read("fe-requota").memory == 128 << 20
    _apply(running, "fe-requota", memory="192Mi")
    wait_for(lambda: cgroups.read("fe-requota").memory == 192 << 20, timeout=10, what="memory limit to change")
    assert Processes(DATA_DIR / "state").running_tenants()["fe-requota"] == pid_before


def test_a_killed_container_is_restarted_on_resync_with_an_event(running: Fleet) -> None:
    from drivers.nspawn_process import Processes

    _apply(running, "fe-victim")
    document = running.wait_phase("fe-victim", "Running")
    processes = Processes(DATA_DIR / "state")
    os.kill(processes.running_tenants()["fe-victim"], signal.SIGKILL)
    wait_for(lambda: "DriftDetected" in running.run("events", "fe-victim").stdout, timeout=10,
             what="the drift to be seen")
    wait_for(lambda: _answers(document["status"]["address"]), timeout=10, what="the page to answer again")


@pytest.mark.parametrize("moment", ["Cloned", "Deleted"])
def test_kill_9_in_the_middle_converges_with_nothing_leaked(node: Fleet, moment: str) -> None:
    """kill -9 `fleet up` as soon as the first clone (or delete) is done while others are under way;
    a new `fleet up` converges and the host holds exactly the tenants that should exist."""
    names = [f"{PREFIX}crash{i}" for i in range(8)]
    process = start_operator(node, *ARGS)
    try:
        if moment == "Deleted":
            for name in names:
                _apply(node, name)
            for name in names:
                node.wait_phase(name, "Running")
            for name in names:
                node.run("delete", "tenant", name)
        else:
            node.run("apply", "-f", "-", stdin="---\n".join(
                TENANT.replace("NAME", n).replace("MEM", "128Mi") for n in names))
        wait_for(lambda: f" {moment} " in node.run("events", "-n", "500").stdout, timeout=20, interval=0.005,
                 what=f"the first {moment} event")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process = start_operator(node, *ARGS)
        if moment == "Deleted":
            wait_for(lambda: json.loads(node.run("get", "tenants", "-o", "json").stdout)["items"] == [],
                     timeout=30, what="every delete to finish")
            expected: set[str] = set()
        else:
            for name in names:
                node.wait_phase(name, "Running", timeout=30)
            expected = set(names)
        parts = _host_parts(DATA_DIR / "state")
        assert parts == {kind: expected for kind in parts}, parts
    finally:
        if process.poll() is None:
            stop_operator(node, process)

"""Idle tenants sleep and wake on the first request, on the real driver with the real gateway: `fleet up`
on a loop-backed btrfs pool and nspawn containers; requests over HTTP with the customer's claim. Root only
(skipped with the reason elsewhere)."""

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from drivers.nspawn_network import netns_path, veth_name
from tests.e2e.conftest import Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.integration.test_fleet_nspawn import ARGS, _unavailable
from tests.integration.test_fleet_nspawn import node as node  # the fixture: a swept data dir, swept again after

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]

NAME = "fe-sleepy"


@dataclass
class Site:
    api: str
    gateway: str
    auth: dict[str, str]
    process: object = None

    def tenant(self) -> dict[str, object]:
        answer = httpx.get(f"{self.api}/api/v1/tenants/{NAME}", headers=self.auth, timeout=5)
        assert answer.status_code == 200, answer.text
        document: dict[str, object] = answer.json()
        return document

    def phase(self) -> str | None:
        status = self.tenant().get("status") or {}
        assert isinstance(status, dict)
        return status.get("phase")

    def reasons(self) -> list[str]:
        events = httpx.get(f"{self.api}/api/v1/tenants/{NAME}/events", headers=self.auth,
                           params={"limit": 1000}, timeout=5).json()
        return [e["reason"] for e in events]

    def browser(self, claim: str) -> httpx.Client:
        host = f"{NAME}.fleet.localhost:{self.gateway.rsplit(':', 1)[1]}"
        client = httpx.Client(base_url=self.gateway, headers={"host": host}, timeout=30)
        client.cookies.set("fleet_claim", claim)
        return client


def _site(node: Fleet, process_logs_from: int) -> Site:
    line = next(line for line in node.logs[process_logs_from:] if "Fleet is up" in line)
    api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
    gateway = re.search(r"gateway: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
    token = (node.data_dir / "operator.token").read_text().strip()
    return Site(api, gateway, {"authorization": f"Bearer {token}"})


@pytest.fixture
def site(node: Fleet) -> Iterator[tuple[Site, Fleet]]:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    token = node.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    (node.data_dir / "operator.token").write_text(token)
    earlier = len(node.logs)
    process = start_operator(node, *ARGS)
    here = _site(node, earlier)
    here.process = process
    try:
        yield here, node
    finally:
        if process.poll() is None:  # the kill -9 test stops its own (the node fixture sweeps what is left)
            node.run("delete", "tenant", NAME, "--wait", "--timeout", "60", check=False)
            stop_operator(node, process)


def _create(site: Site, after: str = "2s") -> str:
    body = {"metadata": {"name": NAME}, "spec": {"template": "base", "resources": {"memory": "128Mi", "cpu": "500m"},
                                                  "sleep": {"after": after}}}
    answer = httpx.post(f"{site.api}/api/v1/tenants", json=body, headers=site.auth, timeout=10)
    assert answer.status_code == 201, answer.text
    wait_for(lambda: site.phase() == "Running", timeout=20, what=f"{NAME} to be Running")
    claim = httpx.post(f"{site.api}/api/v1/tenants/{NAME}/authorize", headers=site.auth, timeout=5).json()
    return str(claim["claim"])


def _cgroup(controller: str, name: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/fleet/tenant-{NAME}/{name}")


CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "systemd", "unified")


def _nft_ingress() -> str:
    return subprocess.run(["nft", "list", "set", "inet", "fleet", "tenant_links"], capture_output=True,
                          text=True, check=True).stdout


def _tasks() -> int:
    """Processes in the tenant's pids cgroup and below (its payload's own groups included)."""
    top = _cgroup("pids", "")
    pids = {int(p) for f in top.rglob("cgroup.procs") for p in f.read_text().split()}
    return len(pids)


def test_an_idle_tenant_sleeps_and_the_first_request_through_the_gateway_wakes_it(
    site: tuple[Site, Fleet]
) -> None:
    here, _ = site
    claim = _create(here)
    with here.browser(claim) as browser:
        first = browser.get("/")
        assert first.status_code == 200 and NAME in first.text
        assert _tasks() > 0
        # No request for 2 s: the gateway puts it to sleep and the reconciler stops the container.
        wait_for(lambda: here.phase() == "Sleeping", timeout=15, interval=0.1, what=f"{NAME} to sleep")
        status = here.tenant()["status"]
        assert isinstance(status, dict)
        sleeping = next(c for c in status["conditions"] if c["type"] == "Sleeping")
        assert sleeping["status"] == "True" and "asleep since" in sleeping["message"]
        # Its kernel objects went back to the host: no cgroup (so no process and no memory charged), no
        # network namespace, no veth; its address and firewall elements are kept for the wake.
        assert not any(_cgroup(c, "").exists() for c in CONTROLLERS), "a sleeping tenant keeps no cgroup"
        assert not netns_path(NAME).exists() and not Path(f"/sys/class/net/{veth_name(NAME)}").exists()
        assert status["address"], "its address is kept for the wake"
        assert veth_name(NAME) in _nft_ingress(), "its firewall elements stay while it sleeps"
        began = time.monotonic()
        woken = browser.get("/")
        took = time.monotonic() - began
        assert woken.status_code == 200 and NAME in woken.text, woken.text
        print(f"wake to first byte {took * 1000:.0f} ms")
    assert here.phase() == "Running" and _tasks() > 0
    # Woken with the limits it slept with, in place before its first process ran.
    assert int(_cgroup("memory", "memory.limit_in_bytes").read_text()) == 128 << 20
    assert int(_cgroup("cpu", "cpu.cfs_quota_us").read_text()) == 50_000
    reasons = here.reasons()
    after_sleep = reasons[reasons.index("SleepRequested"):]
    assert [r for r in after_sleep if r in ("Stopped", "Sleeping", "WakeRequested", "Started", "Woke")] == [
        "Stopped", "Sleeping", "WakeRequested", "Started", "Woke"], reasons
    assert "DriftDetected" not in reasons


def test_a_hundred_requests_to_a_sleeping_tenant_wake_it_once_and_all_get_answers(site: tuple[Site, Fleet]) -> None:
    here, _ = site
    claim = _create(here, after="30d")  # only the sleep request below puts it to sleep
    answer = httpx.post(f"{here.api}/api/v1/tenants/{NAME}/sleep", params={"wait": "true"}, headers=here.auth,
                        timeout=90)
    assert answer.status_code == 200 and answer.json()["phase"] == "Sleeping", answer.text
    before = here.reasons()

    def visit(_: int) -> tuple[int, str]:
        with here.browser(claim) as browser:
            response = browser.get("/")
            return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(visit, range(100)))
    assert [code for code, _ in answers] == [200] * 100, {code for code, _ in answers}
    assert all(NAME in text for _, text in answers)
    new = here.reasons()[len(before):]
    assert new.count("WakeRequested") == 1 and new.count("Started") == 1, new


def test_a_container_started_by_hand_while_asleep_is_not_killed(site: tuple[Site, Fleet]) -> None:
    here, node = site
    _create(here, after="30d")
    httpx.post(f"{here.api}/api/v1/tenants/{NAME}/sleep", params={"wait": "true"}, headers=here.auth, timeout=90)
    assert _tasks() == 0
    # An administrator starts it behind Fleet's back: through the same driver, as `fleet` would on the host.
    from drivers.nspawn import NspawnDriver

    driver = NspawnDriver(data_dir=node.data_dir, address_range=ARGS[ARGS.index("--address-range") + 1],
                          image_size=2 << 30)
    try:
        driver.start(NAME)
    finally:
        driver.close()
    wait_for(lambda: here.phase() == "Running", timeout=15, interval=0.1, what="the reconciler to see it awake")
    assert _tasks() > 0 and "WokenOutsideFleet" in here.reasons()
    answer = httpx.post(f"{here.api}/api/v1/tenants/{NAME}/wake", headers=here.auth, timeout=10).json()
    assert answer["asleep"] is False and answer["changed"] is False


def test_kill_9_of_fleet_up_during_a_wake_converges(site: tuple[Site, Fleet]) -> None:
    here, node = site
    claim = _create(here, after="30d")
    httpx.post(f"{here.api}/api/v1/tenants/{NAME}/sleep", params={"wait": "true"}, headers=here.auth, timeout=90)
    outcome: list[object] = []

    def visit() -> None:
        try:
            with here.browser(claim) as browser:
                outcome.append(browser.get("/").status_code)
        except httpx.HTTPError as error:
            outcome.append(error)

    visitor = threading.Thread(target=visit)
    visitor.start()
    wait_for(lambda: "WakeRequested" in here.reasons(), timeout=15, interval=0.005, what="the wake to begin")
    process = here.process
    assert isinstance(process, type(process)) and hasattr(process, "pid")
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    process.wait(timeout=10)  # type: ignore[union-attr]
    visitor.join(timeout=40)
    earlier = len(node.logs)
    again = start_operator(node, *ARGS)
    try:
        restarted = _site(node, earlier)
        wait_for(lambda: restarted.phase() == "Running", timeout=30, interval=0.1, what="the wake to converge")
        with restarted.browser(claim) as browser:
            page = browser.get("/")
        assert page.status_code == 200 and NAME in page.text
        assert _tasks() > 0
    finally:
        stop_operator(node, again)


def test_an_exec_into_a_sleeping_tenant_wakes_it_and_runs(site: tuple[Site, Fleet]) -> None:
    here, node = site
    _create(here, after="30d")
    httpx.post(f"{here.api}/api/v1/tenants/{NAME}/sleep", params={"wait": "true"}, headers=here.auth, timeout=90)
    assert _tasks() == 0
    result = node.run("exec", NAME, "--", "sh", "-c", "echo inside-$(hostname); exit 3", check=False)
    assert (result.returncode, result.stdout.strip()) == (3, f"inside-{NAME}"), result.stderr
    assert here.phase() == "Running" and _tasks() > 0
    # Woken with the limits it slept with, in place before its first process ran.
    assert int(_cgroup("memory", "memory.limit_in_bytes").read_text()) == 128 << 20
    assert int(_cgroup("cpu", "cpu.cfs_quota_us").read_text()) == 50_000
    reasons = here.reasons()
    assert reasons.index("WakeRequested") < reasons.index("ExecStarted", reasons.index("WakeRequested"))

"""The drivers the conformance suite runs against, each with the same hooks: make something foreign, make
drift behind the driver's back (a killed container, a changed limit, a removed tenant), and kill -9 an
operator process at a step. Each hook does what an operator with a root shell (or a crash) would do to
that backend; the suite then checks the driver the same way for all of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from drivers.base import Driver
from drivers.fake import STEPS, Crash, FakeDriver
from specs import Network, Resources
from tests.helpers import wait_for
from tests.integration.conftest_runtime import BASE, TEST_DATA_DIR, TEST_IMAGE_SIZE, TEST_PREFIX

PREFIX = f"{TEST_PREFIX}conf-"
SMALL = Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
LARGE = Resources(cpu="1.5", memory="192Mi", pids=256, disk="256Mi")
WEB = Network(ingress=(80,), egress="none")  # what every driver observes: no egress
CRASH_STEPS = ("clone", "apply_resources", "apply_network", "start", "stop", "delete")


def _nothing(name: str) -> None:
    return None


@dataclass
class Subject:
    driver: Driver
    made: list[str] = field(default_factory=list)
    # Puts things on the host that look like a tenant but lack Fleet's marker; returns their names.
    make_foreign: Callable[[], list[str]] = lambda: []
    kill_behind_back: Callable[[str], None] = _nothing  # the container's processes die
    raise_cpu_behind_back: Callable[[str], None] = _nothing  # its CPU limit is raised by hand
    remove_behind_back: Callable[[str], None] = _nothing  # its container is deleted by hand
    crash_at: Callable[[str, str], None] = lambda name, step: None  # an operator dies in `step`
    leftovers: Callable[[str], list[str]] = lambda name: []  # what of the tenant is still on the host

    def provision(self, suffix: str, resources: Resources = SMALL, network: Network = WEB) -> str:
        name = PREFIX + suffix
        self.made.append(name)
        self.driver.clone(name, BASE)
        self.driver.apply_resources(name, resources)
        self.driver.apply_network(name, network)
        self.driver.start(name)
        return name


# -- an operator process killed with SIGKILL at a step (real drivers) --------------------------------------
_CHILD = """
import json, sys
from pathlib import Path
from specs import Network, Resources, Template
factory, name, last = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
if factory["driver"] == "lxd":
    from drivers.lxd import LxdDriver
    driver = LxdDriver(**factory["settings"])
else:
    from drivers.nspawn import NspawnDriver
    driver = NspawnDriver(Path(factory["data_dir"]), image_size=factory["image_size"])
steps = {
    "clone": lambda: driver.clone(name, Template(name="base", version="1")),
    "apply_resources": lambda: driver.apply_resources(name, Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")),
    "apply_network": lambda: driver.apply_network(name, Network(ingress=(80,))),
    "start": lambda: driver.start(name),
    "stop": lambda: driver.stop(name),
    "delete": lambda: driver.delete(name),
}
for step, run in steps.items():
    print("begin", step, flush=True)
    if step == last:
        sys.stdin.read()
    run()
"""


def kill_child_at(factory: dict[str, object], name: str, step: str, *, inside: bool = True) -> None:
    """A second operator process runs every step before `step` and is killed with SIGKILL: inside `step`
    (the kill lands in the step's host calls, or just before them), or, with `inside=False`, before it."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(factory), name, step], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None and child.stdin is not None
    for line in child.stdout:
        if line.strip() == f"begin {step}":
            break
    if inside:
        child.stdin.close()  # go on into the step
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)


# -- the subjects ------------------------------------------------------------------------------------------
def fake_subject(request: pytest.FixtureRequest) -> Subject:
    driver = FakeDriver(node="conformance")

    def crash_at(name: str, step: str) -> None:
        driver.faults.crash_after(step, STEPS[step][0])  # dies after the first of the step's own steps
        for method, run in _steps(driver, name).items():
            try:
                run()
            except Crash:
                return
            if method == step:
                return

    def change_cpu(name: str) -> None:
        current = driver.containers[name].resources
        driver.change_resources_behind_back(name, current.model_copy(update={"cpu": 2000}))

    return Subject(driver, kill_behind_back=driver.kill_behind_back, raise_cpu_behind_back=change_cpu,
                   remove_behind_back=driver.remove_behind_back, crash_at=crash_at,
                   leftovers=lambda name: [item for item in driver.leftovers() if name in item])


def _steps(driver: Driver, name: str) -> dict[str, Callable[[], object]]:
    return {"clone": lambda: driver.clone(name, BASE), "apply_resources": lambda: driver.apply_resources(name, SMALL),
            "apply_network": lambda: driver.apply_network(name, WEB), "start": lambda: driver.start(name),
            "stop": lambda: driver.stop(name), "delete": lambda: driver.delete(name)}


def nspawn_subject(request: pytest.FixtureRequest) -> Subject:
    from drivers.nspawn import NspawnDriver

    driver = request.getfixturevalue("nspawn_driver")
    assert isinstance(driver, NspawnDriver)

    def make_foreign() -> list[str]:
        stranger = driver.pool.tenants_dir / f"{PREFIX}stranger"  # a plain directory: no subvolume, no marker
        stranger.mkdir(exist_ok=True)
        request.addfinalizer(stranger.rmdir)
        return [stranger.name]

    def kill(name: str) -> None:
        observed = driver.inspect(name)
        assert observed is not None and observed.pid is not None
        os.kill(observed.pid, signal.SIGKILL)
        wait_for(lambda: not (driver.inspect(name) or observed).running, what=f"{name}'s container to be gone")

    def raise_cpu(name: str) -> None:
        with open(f"/sys/fs/cgroup/cpu/fleet/tenant-{name}/cpu.cfs_quota_us", "w") as handle:
            handle.write("200000")

    def remove(name: str) -> None:
        driver.processes.stop(name)
        driver.pool.delete_tenant(name)

    factory = {"driver": "nspawn", "data_dir": str(TEST_DATA_DIR), "image_size": TEST_IMAGE_SIZE}
    return Subject(driver, make_foreign=make_foreign, kill_behind_back=kill, raise_cpu_behind_back=raise_cpu,
                   remove_behind_back=remove, crash_at=lambda name, step: kill_child_at(factory, name, step),
                   leftovers=driver._leftovers)


def lxd_subject(request: pytest.FixtureRequest) -> Subject:
    from drivers.lxd import LxdDriver
    from tests.lxd.runtime import TEST_NETWORK, TEST_POOL, TEST_POOL_SIZE, TEST_RANGE

    driver = request.getfixturevalue("lxd_driver")
    assert isinstance(driver, LxdDriver)

    def make_foreign() -> list[str]:
        # An instance of the test prefix without Fleet's marker, on the same pool: as an operator's own.
        name = f"{PREFIX}stranger"
        driver.client.request("POST", "/1.0/instances", json={
            "name": name, "type": "container", "profiles": [], "source": {"type": "none"},
            "devices": {"root": {"type": "disk", "path": "/", "pool": driver.storage_pool}}})
        request.addfinalizer(lambda: driver.client.request("DELETE", f"/1.0/instances/{name}"))
        return [name]

    def stop(name: str) -> None:
        driver.client.request("PUT", f"/1.0/instances/{name}/state", json={"action": "stop", "force": True})

    def remove(name: str) -> None:
        stop(name)
        driver.client.request("DELETE", f"/1.0/instances/{name}")

    def raise_cpu(name: str) -> None:
        driver.client.request("PATCH", f"/1.0/instances/{name}",
                              json={"config": {"limits.cpu.allowance": "2000ms/1000ms"}})

    settings = {"storage_pool": TEST_POOL, "network": TEST_NETWORK, "pool_size": TEST_POOL_SIZE,
                "address_range": TEST_RANGE, "node": "crash"}
    factory = {"driver": "lxd", "settings": settings}
    return Subject(driver, make_foreign=make_foreign, kill_behind_back=stop, raise_cpu_behind_back=raise_cpu,
                   remove_behind_back=remove, crash_at=lambda name, step: kill_child_at(factory, name, step),
                   leftovers=driver._leftovers)


SUBJECTS: dict[str, Callable[[pytest.FixtureRequest], Subject]] = {
    "fake": fake_subject, "nspawn": nspawn_subject, "lxd": lxd_subject,
}

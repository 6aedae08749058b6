"""Fixtures for the nspawn runtime tests (cgroups, network, processes, the assembled driver).

Loaded as a plugin (`pytest_plugins = ["tests.integration.conftest_runtime"]`) by the modules that need it.
Every fixture tears down from what the host shows, also after a failed or killed earlier run: tenants of
the test prefix are swept before and after, the pool's loop device is detached and its image deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers import nspawn_cgroups, nspawn_network
from specs import Observed, Template
from tests.helpers import http_get, tenant_maker, wait_for, wait_http  # noqa: F401 (re-exported)

TEST_PREFIX = "ft-"  # every tenant a test makes starts with this; sweeps touch nothing else
TEST_DATA_DIR = Path("/var/tmp/fleet-test-nspawn-runtime")  # fixed, so a killed run's leftovers are found
TEST_IMAGE_SIZE = 2 << 30  # sparse
BASE = Template(name="base", version="1")
RUNTIME_TOOLS = {"nft": "nftables", "ip": "iproute2", "nsenter": "util-linux", "nc": "netcat-openbsd"}


def runtime_unavailable() -> str | None:
    """Why cgroups/netns/nft tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: cgroups, network namespaces and nftables"
    missing = sorted({package for tool, package in RUNTIME_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"missing tools: apt-get install -y {' '.join(missing)}"
    try:
        nspawn_cgroups.detect()
    except Exception as error:
        return f"no usable cgroups: {error}"
    return None


def driver_unavailable() -> str | None:
    """Why the assembled nspawn driver cannot run here, or None."""
    reason = runtime_unavailable()
    if reason:
        return reason
    from drivers.nspawn import host_problems

    problems = host_problems()
    return "; ".join(problems) if problems else None


def leftover_test_tenants() -> set[str]:
    """Tenants of the test prefix that have any part on the host (cgroups, netns, veth, lease, process)."""
    from drivers.nspawn_process import Processes

    names = set(nspawn_cgroups.detect().list_tenants())
    names |= set(nspawn_network.Networks(TEST_DATA_DIR / "state").list_tenants())
    names |= set(Processes(TEST_DATA_DIR / "state").running_tenants())
    return {name for name in names if name.startswith(TEST_PREFIX)}


def sweep_runtime(state_dir: Path) -> None:
    """Remove every test tenant's runtime parts (no pool needed): processes, cgroups, network."""
    from drivers.nspawn_process import Processes

    cgroups = nspawn_cgroups.detect()
    networks = nspawn_network.Networks(state_dir)
    processes = Processes(state_dir)
    names = set(cgroups.list_tenants()) | set(networks.list_tenants()) | set(processes.running_tenants())
    for name in sorted(n for n in names if n.startswith(TEST_PREFIX)):
        processes.stop(name)
        cgroups.remove(name)
        networks.remove(name)
    networks.release_range_if_unused()
    with contextlib.suppress(Exception):
        networks.firewall.remove_table_if_unused()


def _teardown_pool(data_dir: Path) -> None:
    from tests.integration.conftest import teardown_loop_pool

    teardown_loop_pool(data_dir)


@pytest.fixture
def runtime_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory for Networks/Processes; every test tenant's runtime parts are swept around the test."""
    reason = runtime_unavailable()
    if reason:
        pytest.skip(reason)
    sweep_runtime(tmp_path / "state")
    try:
        yield tmp_path / "state"
    finally:
        sweep_runtime(tmp_path / "state")


@pytest.fixture(scope="session")
def nspawn_driver() -> Iterator[object]:
    """One NspawnDriver on a loop-backed pool for the session, with the built-in base@1 template."""
    reason = driver_unavailable()
    if reason:
        pytest.skip(reason)
    from drivers.nspawn import NspawnDriver

    _sweep_driver_leftovers()
    driver = NspawnDriver(TEST_DATA_DIR, image_size=TEST_IMAGE_SIZE)
    try:
        driver.ensure_template(BASE)
        yield driver
    finally:
        for name in driver.pool.list_tenants():
            if name.startswith(TEST_PREFIX):
                driver.delete(name)
        _sweep_driver_leftovers()


def _sweep_driver_leftovers() -> None:
    """Whatever a killed run left: runtime parts, then the pool (its tenants go with the image)."""
    sweep_runtime(TEST_DATA_DIR / "state")
    _teardown_pool(TEST_DATA_DIR)
    shutil.rmtree(TEST_DATA_DIR, ignore_errors=True)


@pytest.fixture
def make_tenant(nspawn_driver: object) -> Iterator[Callable[..., Observed]]:
    """Provision a tenant end to end (clone, resources, network, start); deleted after the test."""
    from drivers.nspawn import NspawnDriver

    assert isinstance(nspawn_driver, NspawnDriver)
    with tenant_maker(nspawn_driver, TEST_PREFIX, BASE) as make:
        yield make


# -- helpers ---------------------------------------------------------------------------------------------
def can_connect_from_netns(tenant: str, address: str, port: int, timeout_s: int = 1) -> bool:
    """TCP connect from inside the tenant's network namespace (host's nc, the tenant's network)."""
    done = subprocess.run(
        ["nsenter", f"--net={nspawn_network.netns_path(tenant)}", "nc", "-z", "-w", str(timeout_s), address, str(port)],
        capture_output=True,
        timeout=timeout_s + 5,
    )
    return done.returncode == 0


# -- probes that run as the tenant's payload -------------------------------------------------------------
PROBE_SOURCE = Path(__file__).parent / "probes" / "tenant_probe.c"


@pytest.fixture(scope="session")
def tenant_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/integration/probes/tenant_probe.c built static, to be copied into a tenant's own tree."""
    compiler = shutil.which("gcc")
    if compiler is None or (not Path("/usr/lib/x86_64-linux-gnu/libc.a").exists() and not list(
        Path("/usr/lib").glob("*/libc.a")
    )):
        pytest.skip("needs gcc and a static libc to build the tenant probe: apt-get install -y gcc libc6-dev")
    binary = tmp_path_factory.mktemp("probe") / "tenant_probe"
    subprocess.run([compiler, "-static", "-O1", "-Wall", "-o", str(binary), str(PROBE_SOURCE)], check=True)
    return binary


def as_payload(driver: object, tenant: str, script: str, *, timeout: float = 60.0, probe: Path | None = None) -> str:
    """Run a shell script *as the tenant's payload*: a CGI that the tenant's own busybox httpd executes.

    It runs with exactly what nspawn gave the payload (user namespace, capabilities, seccomp filter, cgroups,
    mounts), unlike anything entered from the host. The script lands in the tenant's own tree, as a tenant
    would put it there; `probe` is copied to /usr/bin/tenant_probe beside it."""
    from drivers.nspawn import NspawnDriver

    assert isinstance(driver, NspawnDriver)
    root = driver.pool.tenant_path(tenant)
    cgi = root / "srv/www/cgi-bin"
    cgi.mkdir(parents=True, exist_ok=True)
    if probe is not None and not (root / "usr/bin/tenant_probe").exists():
        shutil.copy(probe, root / "usr/bin/tenant_probe")
    name = f"probe-{os.getpid()}-{abs(hash(script)) % 10**8}"
    (cgi / name).write_text(f"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nexec 2>&1\n{script}\n")
    (cgi / name).chmod(0o755)
    observed = driver.inspect(tenant)
    assert observed is not None and observed.address is not None, f"tenant {tenant} has no address"
    wait_http(observed.address)
    with urllib.request.urlopen(f"http://{observed.address}/cgi-bin/{name}", timeout=timeout) as response:
        return str(response.read().decode(errors="replace"))

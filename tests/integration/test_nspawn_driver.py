"""The assembled nspawn driver on the real host: pages answer, quotas hold, tenants are isolated, drift is
repaired, delete leaves nothing. Traffic goes only to the tenant namespaces these tests make."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from loguru import logger

from drivers.nspawn import NspawnDriver
from drivers.nspawn_network import netns_path, veth_name
from specs import Network, Observed, Resources, TransientError

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.integration.conftest_runtime import (  # noqa: E402
    BASE,
    TEST_DATA_DIR,
    TEST_PREFIX,
    can_connect_from_netns,
    http_get,
    wait_for,
    wait_http,
)

pytest_plugins = ["tests.integration.conftest_runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]

MakeTenant = Callable[..., Observed]


@pytest.fixture
def driver(nspawn_driver: object) -> NspawnDriver:
    assert isinstance(nspawn_driver, NspawnDriver)
    return nspawn_driver


def _join(files: list[Path]) -> None:
    for procs in files:
        procs.write_text(str(os.getpid()))


def in_tenant(driver: NspawnDriver, tenant: str, script: str) -> subprocess.Popen[str]:
    """Run a busybox shell script inside the tenant: its cgroups (so its quotas) and its namespaces, as root
    of its user namespace. For quota tests only: it keeps the host's seccomp state, so isolation probes use
    `as_payload` instead (test_nspawn_isolation.py)."""
    container = driver.processes.find(tenant)
    assert container is not None
    payload = min(driver.cgroups.pids(tenant) - {container.pid})  # the container's PID 1
    files = driver.cgroups.procs_files(tenant)
    return subprocess.Popen(
        ["nsenter", "-t", str(payload), "-U", "-m", "-u", "-i", "-n", "-p", "--", "/usr/bin/busybox", "sh", "-c",
         script],
        preexec_fn=lambda: _join(files),  # the test process is single-threaded
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _cgroup_file(hierarchy: str, tenant: str, name: str) -> Path:
    return Path("/sys/fs/cgroup") / hierarchy / "fleet" / f"tenant-{tenant}" / name


def test_tenant_page_answers_over_http_from_the_host(driver: NspawnDriver) -> None:
    name = f"{TEST_PREFIX}web"
    try:
        started = time.perf_counter()
        driver.clone(name, BASE)
        driver.apply_resources(name, Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi"))
        launched = time.perf_counter()
        # The planner's order: start first (into the bare namespace), the network while nspawn boots.
        driver.start(name)
        before_network = driver.inspect(name)
        assert before_network is not None and before_network.running
        assert before_network.address is None and "network namespace" not in " ".join(before_network.problems)
        assert not Path(f"/sys/class/net/{veth_name(name)}").exists(), "no link a packet could cross yet"
        driver.apply_network(name, Network(ingress=(80,)))
        observed = driver.inspect(name)
        assert observed is not None and observed.address is not None
        body = wait_http(observed.address)
        answered = time.perf_counter()
        logger.bind(
            provision_ms=round((launched - started) * 1000, 1),
            start_to_http_ms=round((answered - launched) * 1000, 1),
            total_ms=round((answered - started) * 1000, 1),
        ).info("Measured tenant start")
        assert b"Fleet tenant" in body and name.encode() in body
        assert observed.running and observed.problems == ()
        assert observed.network == Network(ingress=(80,), egress="none")
        assert observed.resources == Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
        assert observed.template == BASE.ref
    finally:
        driver.delete(name)


def test_requota_changes_cgroups_without_restarting(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    before = make_tenant("requota", Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi"))
    wanted = Resources(cpu="1.5", memory="256Mi", pids=300, disk="256Mi")
    driver.apply_resources(before.name, wanted)
    after = driver.inspect(before.name)
    assert after is not None
    assert after.resources == wanted
    assert after.pid == before.pid and after.running
    assert _cgroup_file("cpu", before.name, "cpu.cfs_quota_us").read_text().strip() == "150000"
    assert _cgroup_file("pids", before.name, "pids.max").read_text().strip() == "300"


def test_a_stopped_tenant_gives_back_its_kernel_objects_and_its_address_routes_nowhere(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    limits = Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
    tenant = make_tenant("parked", limits)
    address = tenant.address
    assert address is not None and b"Fleet tenant" in wait_http(address)
    driver.stop(tenant.name)
    # What a sleeping tenant costs the kernel: no cgroup, no namespace, no veth (docs/operations.md).
    assert not any(_cgroup_file(c, tenant.name, "").exists() for c in ("cpu", "memory", "pids", "blkio"))
    assert not netns_path(tenant.name).exists()
    assert not Path(f"/sys/class/net/{veth_name(tenant.name)}").exists()
    # Its address is unreachable on the host, at once: never routed off the node by the default route.
    with pytest.raises(OSError) as failed:
        socket.create_connection((address, 80), timeout=5)
    assert failed.value.errno == errno.EHOSTUNREACH, failed.value
    stopped = driver.inspect(tenant.name)
    assert stopped is not None and (stopped.resources, stopped.address, stopped.problems) == (limits, address, ())
    driver.start(tenant.name)
    assert b"Fleet tenant" in wait_http(address)  # the same address, behind its kept firewall elements
    assert _cgroup_file("memory", tenant.name, "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert _cgroup_file("pids", tenant.name, "pids.max").read_text().strip() == "64"
    started = driver.inspect(tenant.name)
    assert started is not None and started.running and started.problems == () and started.resources == limits


def test_a_stopped_tenants_lost_parts_are_seen_and_repaired(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    limits = Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi")
    tenant = make_tenant("parked-drift", limits)
    assert tenant.address is not None
    driver.stop(tenant.name)
    route = ["ip", "route", "show", "exact", str(driver.networks.leases.range), "proto", "211"]
    assert "unreachable" in subprocess.run(route, capture_output=True, text=True, check=True).stdout
    # A route flush (a network manager, a reboot): the address would follow the default route off the node.
    subprocess.run(["ip", "route", "del", "unreachable", str(driver.networks.leases.range), "proto", "211",
                    "metric", "4211"], check=True)
    drifted = driver.inspect(tenant.name)
    assert drifted is not None and drifted.address is None and "routes off the node" in " ".join(drifted.problems)
    driver.apply_network(tenant.name, Network(ingress=(80,)))  # what the planner does with it
    assert "unreachable" in subprocess.run(route, capture_output=True, text=True, check=True).stdout
    repaired = driver.inspect(tenant.name)
    assert repaired is not None and repaired.address == tenant.address and repaired.problems == ()
    # A lost limits record: seen as limits no spec asks for, and the tenant does not start without them.
    driver.limits.path(tenant.name).unlink()
    lost = driver.inspect(tenant.name)
    assert lost is not None and lost.resources != limits and "limits record missing" in lost.problems
    with pytest.raises(TransientError, match="no limits recorded"):
        driver.start(tenant.name)
    assert driver.processes.find(tenant.name) is None
    driver.apply_resources(tenant.name, limits)
    # A stop cut off half way (cgroups left): seen, and a stop finishes it.
    driver.cgroups.create(tenant.name)
    half = driver.inspect(tenant.name)
    assert half is not None and not half.running and "cgroups or network namespace are still there" in " ".join(
        half.problems)
    driver.stop(tenant.name)
    done = driver.inspect(tenant.name)
    assert done is not None and done.problems == () and done.resources == limits
    driver.start(tenant.name)
    assert b"Fleet tenant" in wait_http(tenant.address)


def test_memory_hog_is_oom_killed_in_its_tenant_only(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    hog = make_tenant("hog", Resources(cpu="1", memory="48Mi", pids=64, disk="64Mi"))
    calm = make_tenant("calm")
    assert hog.address and calm.address
    wait_http(hog.address)
    wait_http(calm.address)
    # dd allocates and fills one 256 MiB block: far over the tenant's 48 MiB.
    process = in_tenant(driver, hog.name, "exec /usr/bin/busybox dd if=/dev/zero of=/dev/null bs=256M count=1")
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert driver.cgroups.oom_kills(hog.name) >= 1
    observed = driver.inspect(hog.name)
    assert observed is not None and any("memory limit" in problem for problem in observed.problems)
    assert driver.cgroups.oom_kills(calm.name) == 0
    assert http_get(calm.address) is not None  # the neighbour never noticed
    assert http_get(hog.address) is not None  # the hog's own web server was not the victim


def test_fork_bomb_stops_at_pids_max(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    bomb = make_tenant("bomb", Resources(cpu="1", memory="128Mi", pids=24, disk="64Mi"))
    calm = make_tenant("calm2")
    assert calm.address
    wait_http(calm.address)
    script = "i=0; while [ $i -lt 200 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done; echo done"
    process = in_tenant(driver, bomb.name, script)
    try:
        output = process.communicate(timeout=60)[0]
        assert "can't fork" in output or "Resource temporarily unavailable" in output, output
        current = int(_cgroup_file("pids", bomb.name, "pids.current").read_text())
        assert current <= 24
        assert int(_cgroup_file("pids", bomb.name, "pids.events").read_text().split()[-1]) > 0  # "max N"
        assert http_get(calm.address) is not None
    finally:
        _kill_group(process)
        for pid in driver.cgroups.pids(bomb.name):
            with contextlib.suppress(ProcessLookupError, OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "sleep":
                    os.kill(pid, signal.SIGKILL)


def test_cpu_burner_is_held_to_its_quota(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    burner = make_tenant("burn", Resources(cpu="200m", memory="64Mi", pids=64, disk="64Mi"))
    process = in_tenant(driver, burner.name, "while :; do :; done & while :; do :; done")
    try:
        wait_for(lambda: driver.cgroups.cpu_usage_ns(burner.name) > 50_000_000, what="the burner to use CPU")
        # A measurement window, not synchronisation: usage over wall time is the quantity under test.
        window_start, usage_start = time.monotonic(), driver.cgroups.cpu_usage_ns(burner.name)
        time.sleep(2.0)
        window = time.monotonic() - window_start
        share = (driver.cgroups.cpu_usage_ns(burner.name) - usage_start) / 1e9 / window
        logger.bind(share=round(share, 3), quota=0.2).info("Measured CPU burner")
        assert 0.1 < share < 0.26
    finally:
        _kill_group(process)


def test_tenants_cannot_reach_each_other_or_host_services(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    a = make_tenant("iso-a")
    b = make_tenant("iso-b")
    assert a.address and b.address
    wait_http(b.address)
    lease = driver.networks.leases.get(a.name)
    assert lease is not None
    assert not can_connect_from_netns(a.name, b.address, 80)
    assert not can_connect_from_netns(a.name, lease.host_address, 22)
    assert http_get(b.address) is not None  # while the host reaches b's page


def test_drift_is_seen_by_inspect_and_repaired(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    tenant = make_tenant("drift")
    name, address = tenant.name, tenant.address
    assert address is not None
    wait_http(address)
    # a killed container
    assert tenant.pid is not None
    os.kill(tenant.pid, signal.SIGKILL)
    wait_for(lambda: not (driver.inspect(name) or tenant).running, what="inspect to see the container gone")
    driver.start(name)
    restarted = driver.inspect(name)
    assert restarted is not None and restarted.running and restarted.pid != tenant.pid
    wait_http(address)
    # a deleted veth
    subprocess.run(["ip", "link", "del", veth_name(name)], check=True)
    broken = driver.inspect(name)
    assert broken is not None and broken.address is None
    assert f"veth {veth_name(name)} missing" in broken.problems
    driver.apply_network(name, Network(ingress=(80,)))
    wait_http(address)
    # a changed cgroup limit
    _cgroup_file("cpu", name, "cpu.cfs_quota_us").write_text("300000")
    changed = driver.inspect(name)
    assert changed is not None and changed.resources.cpu == 3000
    driver.apply_resources(name, Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi"))
    repaired = driver.inspect(name)
    assert repaired is not None and repaired.resources.cpu == 1000
    # a deleted firewall element
    subprocess.run(
        ["nft", "delete", "element", "inet", "fleet", "tenant_ingress", f'{{ "{veth_name(name)}" . 80 }}'], check=True
    )
    dropped = driver.inspect(name)
    assert dropped is not None and dropped.network == Network(ingress=(), egress="none")
    assert http_get(address, timeout=0.5) is None  # the host is no longer let in
    driver.apply_network(name, Network(ingress=(80,)))
    final = driver.inspect(name)
    assert final is not None and final.network == Network(ingress=(80,), egress="none") and final.problems == ()
    wait_http(address)
    assert final.pid == restarted.pid  # none of the repairs restarted the container


def test_operator_restart_never_restarts_a_tenant(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    tenant = make_tenant("survivor")
    second = NspawnDriver(TEST_DATA_DIR, image_size=2 << 30)  # a new operator process on the same node
    seen = second.inspect(tenant.name)
    assert seen is not None and seen.pid == tenant.pid and seen.running
    second.start(tenant.name)
    again = second.inspect(tenant.name)
    assert again is not None and again.pid == tenant.pid
    assert tenant.name in {o.name for o in second.list()}


def test_a_dead_launcher_is_replaced_and_closing_it_leaves_containers_running(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    first = make_tenant("launched-a")
    launcher = driver.processes.launcher
    pid = launcher.server_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # as an OOM kill or an operator's stray kill would
    wait_for(lambda: launcher.server_pid() is None, what="the launcher to be gone")
    second = make_tenant("launched-b")  # the next start makes another launcher
    assert second.running and second.address is not None
    wait_http(second.address)
    driver.processes.close()
    assert launcher.server_pid() is None
    for tenant in (first, second):
        seen = driver.inspect(tenant.name)
        assert seen is not None and seen.running and seen.pid == tenant.pid


def test_delete_removes_everything_and_says_so(driver: NspawnDriver) -> None:
    name = f"{TEST_PREFIX}gone"
    driver.clone(name, BASE)
    driver.apply_resources(name, Resources(cpu="1", memory="64Mi", pids=64, disk="64Mi"))
    driver.apply_network(name, Network(ingress=(80,)))
    driver.start(name)
    observed = driver.inspect(name)
    assert observed is not None and observed.address
    started = time.perf_counter()
    receipt = driver.delete(name)
    logger.bind(ms=round((time.perf_counter() - started) * 1000, 1)).info("Measured tenant delete")
    text = " | ".join(receipt.removed)
    for part in (f"process {observed.pid}", "cgroup /sys/fs/cgroup/memory", f"veth {veth_name(name)}",
                 f"network namespace fleet-{name}", f"address {observed.address}", f"subvolume tenants/{name}"):
        assert part in text, f"{part!r} not in receipt: {text}"
    # The console log lived in the subvolume; no copy of it is left on the host.
    assert not driver.processes.log_file(name).exists()
    assert driver.inspect(name) is None
    assert not netns_path(name).exists()
    assert not _cgroup_file("memory", name, "").exists()
    assert subprocess.run(["ip", "link", "show", veth_name(name)], capture_output=True).returncode != 0
    assert driver.networks.leases.get(name) is None
    assert driver.processes.find(name) is None
    again = driver.delete(name)
    assert again.removed == () and "subvolume" in again.already_absent


def test_a_disk_filler_hits_its_quota_and_the_neighbour_keeps_writing(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    filler = make_tenant("fill", Resources(cpu="1", memory="128Mi", pids=64, disk="32Mi"))
    calm = make_tenant("calm3")
    assert calm.address
    # 64 MiB into a 32 MiB exclusive quota: dd must fail with EDQUOT, inside the tenant's own filesystem.
    process = in_tenant(driver, filler.name, "/usr/bin/busybox dd if=/dev/zero of=/big bs=1M count=64; echo rc=$?")
    output = process.communicate(timeout=60)[0]
    assert "Disk quota exceeded" in output and "rc=1" in output, output
    usage = driver.pool.disk_usage(filler.name)
    assert usage <= 33 << 20, usage
    neighbour = in_tenant(driver, calm.name, "/usr/bin/busybox dd if=/dev/zero of=/ok bs=1M count=8; echo rc=$?")
    assert "rc=0" in neighbour.communicate(timeout=60)[0]
    assert http_get(calm.address) is not None


def test_a_tenant_sees_neither_the_files_nor_the_processes_of_another(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    a = make_tenant("see-a")
    b = make_tenant("see-b")
    secret = driver.pool.tenant_path(b.name) / "secret-of-b"
    secret.write_text("b only")
    b_pids = driver.cgroups.pids(b.name)
    probe = in_tenant(
        driver, a.name,
        "ls /; echo ---; cat /secret-of-b 2>&1; echo ---; for p in /proc/[0-9]*; do echo ${p#/proc/}; done",
    )
    listing, secret_read, pids = probe.communicate(timeout=30)[0].split("---")
    assert "secret-of-b" not in listing
    assert "No such file" in secret_read
    visible = {int(p) for p in pids.split()}
    assert len(visible) < 10, f"a tenant sees only its own few processes, saw {sorted(visible)}"
    assert not any(str(pid) in listing for pid in b_pids)  # host pids of b never appear as a's pids
    hostname = in_tenant(driver, a.name, "hostname").communicate(timeout=30)[0].strip()
    assert hostname == a.name

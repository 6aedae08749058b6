"""Hostile tenants on the real host: every probe runs *as the tenant's payload* (a CGI its own httpd runs),
with the user namespace, capabilities, seccomp filter and cgroups nspawn gave it. A probe entered from the
host with nsenter would keep the host's privileges and prove nothing, so none is used for these claims;
the one host-side sender below tests the firewall rule alone, and says so."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_subvolumes as subvolumes
from drivers import nspawn_userns
from drivers.nspawn import NspawnDriver
from drivers.nspawn_network import netns_path
from drivers.nspawn_pool import TENANT_XATTR
from drivers.nspawn_process import Processes
from drivers.template_tree import INIT_PATH
from specs import Observed, Resources

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.integration.conftest_runtime import (  # noqa: E402
    as_payload,
    http_get,
    wait_for,
    wait_http,
)

pytest_plugins = ["tests.integration.conftest_runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]

MakeTenant = Callable[..., Observed]
CAP_SYS_ADMIN, CAP_MKNOD = 21, 27


@pytest.fixture
def driver(nspawn_driver: object) -> NspawnDriver:
    assert isinstance(nspawn_driver, NspawnDriver)
    return nspawn_driver


def _uid_map(text: str) -> tuple[int, int, int]:
    inside, outside, count = (int(v) for v in re.search(r"uidmap:\s*(\d+)\s+(\d+)\s+(\d+)", text).groups())  # type: ignore[union-attr]
    return inside, outside, count


def test_tenant_root_is_an_unprivileged_host_uid_range_of_its_own(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    a, b = make_tenant("uid-a"), make_tenant("uid-b")
    script = 'echo "uidmap: $(cat /proc/self/uid_map)"; echo "gidmap: $(cat /proc/self/gid_map)"; id -u; ' \
             "grep CapEff /proc/self/status"
    seen = {tenant.name: as_payload(driver, tenant.name, script) for tenant in (a, b)}
    ranges = {}
    for name, text in seen.items():
        inside, outside, count = _uid_map(text)
        assert (inside, count) == (0, 65_536), text
        assert outside >= nspawn_userns.FIRST_BASE, f"{name}'s root is host uid {outside}: {text}"
        assert re.search(rf"gidmap:\s*0\s+{outside}\s+65536", text), text
        assert re.search(r"^0$", text, re.M), "the payload runs as root of its own namespace"
        capabilities = int(re.search(r"CapEff:\s*([0-9a-f]+)", text).group(1), 16)  # type: ignore[union-attr]
        assert not capabilities & (1 << CAP_SYS_ADMIN) and not capabilities & (1 << CAP_MKNOD), text
        ranges[name] = range(outside, outside + count)
    first, second = ranges.values()
    assert first.stop <= second.start or second.stop <= first.start, ranges
    # The host agrees: every process of a's container but nspawn itself runs as a host uid in a's range.
    container = driver.processes.find(a.name)
    assert container is not None and container.uid_base == ranges[a.name].start
    for pid in driver.cgroups.pids(a.name) - {container.pid}:
        with contextlib.suppress(FileNotFoundError):
            uid = int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))  # type: ignore[union-attr]
            assert uid in ranges[a.name], f"pid {pid} of {a.name} runs as host uid {uid}"
    # ... and reads the range back from the tenant's marker after an operator restart.
    again = NspawnDriver(driver.data_dir, image_size=2 << 30)
    assert again.pool.recorded_uid_base(a.name) == ranges[a.name].start


KNOB_PROBE = r"""
v=$(cat /proc/sys/kernel/core_pattern); echo "read core_pattern=$v"
echo "$v" > /proc/sys/kernel/core_pattern && echo WROTE core_pattern
v=$(cat /sys/kernel/mm/ksm/run); echo "$v" > /sys/kernel/mm/ksm/run && echo WROTE ksm_run
echo h > /proc/sysrq-trigger && echo WROTE sysrq
mount -o remount,bind,rw /proc/sys && echo REMOUNTED proc_sys
mount -o remount,rw /sys && echo REMOUNTED sys
mkdir -p /tmp/p /tmp/s
mount -t proc proc /tmp/p && echo MOUNTED proc
mount -t sysfs sysfs /tmp/s && echo MOUNTED sysfs
unshare -Urm sh -c 'mount -o remount,bind,rw /proc/sys && echo REMOUNTED nested_proc_sys
  v=$(cat /proc/sys/kernel/core_pattern); echo "$v" > /proc/sys/kernel/core_pattern && echo WROTE nested_core_pattern'
unshare -Urmpf sh -c 'mkdir -p /tmp/p2 && mount -t proc proc /tmp/p2 && echo "nested proc mounted"
  v=$(cat /tmp/p2/sys/kernel/core_pattern); echo "$v" > /tmp/p2/sys/kernel/core_pattern && echo WROTE fresh_core_pattern
  echo h > /tmp/p2/sysrq-trigger && echo WROTE fresh_sysrq'
unshare -Urmn sh -c 'mkdir -p /tmp/s2 && mount -t sysfs s /tmp/s2 && echo "nested sysfs mounted"
  v=$(cat /tmp/s2/kernel/mm/ksm/run); echo "$v" > /tmp/s2/kernel/mm/ksm/run && echo WROTE fresh_ksm_run'
echo probe-done
"""


def test_kernel_knobs_stay_read_only_whatever_the_tenant_mounts(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    tenant = make_tenant("knobs")
    host_core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    output = as_payload(driver, tenant.name, KNOB_PROBE)
    assert "probe-done" in output and f"read core_pattern={host_core_pattern.strip()}" in output, output
    for claim in ("WROTE", "REMOUNTED", "MOUNTED proc", "MOUNTED sysfs"):
        assert claim not in output, f"{claim!r} from inside the tenant:\n{output}"
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core_pattern


def test_a_block_device_made_with_mknod_cannot_be_opened(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    tenant = make_tenant("mknod")
    major, minor = driver.io_devices[0].split(":")  # the pool's own device: every tenant's data
    script = f"tenant_probe blockdev {major} {minor}; echo probe-done"
    output = as_payload(driver, tenant.name, script, probe=tenant_probe)
    assert "probe-done" in output and "blockdev ok" not in output, output
    assert re.search(r"(mknod|blockdev) failed: Operation not permitted", output), output


def test_writes_into_a_subvolume_the_tenant_made_stop_at_its_quota(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    tenant = make_tenant("nest", Resources(cpu="1", memory="128Mi", pids=64, disk="32Mi"))
    free_before = os.statvfs(driver.pool.root).f_bavail * os.statvfs(driver.pool.root).f_frsize
    output = as_payload(
        driver,
        tenant.name,
        "tenant_probe subvol /root inner; tenant_probe subvol /root/inner deeper; "
        "tenant_probe subvol-escape /root loose; tenant_probe snapshot / /root snap; "
        "dd if=/dev/zero of=/root/inner/deeper/big bs=1M count=64; echo rc=$?; sync",
        probe=tenant_probe,
    )
    assert output.count("subvol ok") == 2, output
    # the only ways to create a subvolume outside the tenant's qgroup are refused by its seccomp filter
    assert "subvol-escape failed: Operation not permitted" in output, output
    assert "snapshot failed: Operation not permitted" in output, output
    assert "Disk quota exceeded" in output and "rc=1" in output, output
    usage = driver.pool.disk_usage(tenant.name)
    assert 24 << 20 <= usage <= 33 << 20, f"the nested subvolume's bytes are the tenant's: {usage}"
    btrfs.sync(driver.pool.root)
    free_after = os.statvfs(driver.pool.root).f_bavail * os.statvfs(driver.pool.root).f_frsize
    assert free_before - free_after < 48 << 20, "the pool lost no more than the tenant's quota"
    observed = driver.inspect(tenant.name)
    assert observed is not None and observed.resources.disk == 32 << 20
    group = btrfs.qgroup_id(1, btrfs.subvolume_id(driver.pool.tenant_path(tenant.name)))
    receipt = driver.delete(tenant.name)
    removed = " | ".join(receipt.removed)
    assert "nested subvolume 'deeper'" in removed and "nested subvolume 'inner'" in removed, removed
    assert f"qgroup {btrfs.qgroup_name(group)}" in removed, removed
    assert not btrfs.qgroup_exists(driver.pool.fs_uuid, group)


def _impostors(tenant: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if f"--machine={tenant}".encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def test_a_process_named_like_another_tenants_container_is_not_taken_for_it(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    attacker = make_tenant("pose-a")
    victim = make_tenant("pose-b", start=False)
    output = as_payload(driver, attacker.name, f"tenant_probe pose {victim.name}", probe=tenant_probe)
    assert "pose ok" in output, output
    impostor = wait_for(lambda: _impostors(victim.name), what="the impostor to run")[0]
    try:
        assert driver.cgroups.owner_of(impostor) == attacker.name  # the host knows whose it is
        seen = driver.inspect(victim.name)
        assert seen is not None and not seen.running and seen.pid is None
        driver.start(victim.name)
        started = driver.inspect(victim.name)
        assert started is not None and started.running and started.pid not in (None, impostor)
        assert victim.address is not None
        wait_http(victim.address)
        assert driver.processes.running()[victim.name].pid == started.pid
        driver.stop(victim.name)  # signals the victim's container, never the impostor
        assert os.path.exists(f"/proc/{impostor}") and driver.processes.find(victim.name) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(impostor, signal.SIGKILL)


def _antispoof_packets() -> int:
    chain = json.loads(subprocess.run(
        ["nft", "-j", "list", "chain", "inet", "fleet", "prerouting"], capture_output=True, text=True, check=True
    ).stdout)
    for item in chain["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == "fleet:base:antispoof":
            return next(int(e["counter"]["packets"]) for e in rule["expr"] if "counter" in e)
    raise AssertionError("no antispoof rule in inet fleet prerouting")


LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(2048); print(peer[0], data.decode(errors="replace").strip(), flush=True)
"""


@contextlib.contextmanager
def _udp_listener(netns: Path | None, address: str, port: int) -> Iterator[subprocess.Popen[str]]:
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    process = subprocess.Popen(
        [*prefix, sys.executable, "-c", LISTENER, address, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "listening"
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def _send(netns: Path | None, address: str, port: int, text: str) -> None:
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    code = (
        "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        ".sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))"
    )
    subprocess.run([*prefix, sys.executable, "-c", code, address, str(port), text], check=True, timeout=10)


def test_a_packet_with_another_tenants_source_never_reaches_the_host_or_that_tenant(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    a, b = make_tenant("spoof-a"), make_tenant("spoof-b")
    assert a.address and b.address
    lease = driver.networks.leases.get(a.name)
    assert lease is not None
    port = 47_000 + os.getpid() % 1000
    # As the payload: the tenant has no raw socket at all (its network namespace is the host's to rule).
    script = f"tenant_probe spoof {b.address} {lease.host_address} {port}"
    output = as_payload(driver, a.name, script, probe=tenant_probe)
    assert "spoof failed: Operation not permitted" in output, output
    # The firewall holds on its own: forged packets sent from a's namespace by a host process (which can
    # open raw sockets) are dropped before they reach anything.
    with (
        _udp_listener(None, lease.host_address, port) as host,
        _udp_listener(netns_path(b.name), b.address, port) as other,
    ):
        _send(None, lease.host_address, port, "control-host")  # both listeners really listen
        _send(netns_path(b.name), b.address, port, "control-b")
        assert host.stdout is not None and other.stdout is not None
        assert "control-host" in host.stdout.readline() and "control-b" in other.stdout.readline()
        before = _antispoof_packets()
        _send(netns_path(a.name), lease.host_address, port, "honest")  # a's own source: not counted as forged
        for destination in (lease.host_address, b.address):
            forge = [str(tenant_probe), "spoof", b.address, destination, str(port)]
            in_a = ["nsenter", f"--net={netns_path(a.name)}"]
            subprocess.run([*in_a, *forge], check=True, timeout=10, capture_output=True)
        wait_for(lambda: _antispoof_packets() >= before + 10, what="the forged packets to be dropped")
        assert _antispoof_packets() == before + 10
    for listener in (host, other):
        assert listener.stdout is not None
        rest = listener.stdout.read()
        assert "fleet-spoofed" not in rest, rest
    assert http_get(b.address) is not None  # b unharmed


def _memory_file(tenant: str, name: str) -> Path:
    return Path("/sys/fs/cgroup/memory/fleet") / f"tenant-{tenant}" / name


def test_swap_is_bounded_with_memory_and_drift_of_it_is_repaired(driver: NspawnDriver, make_tenant: MakeTenant) -> None:
    tenant = make_tenant("swap", Resources(cpu="1", memory="64Mi", pids=64, disk="64Mi"))
    memsw = _memory_file(tenant.name, "memory.memsw.limit_in_bytes")
    if not memsw.exists():
        pytest.skip("this kernel has no swap accounting (memory.memsw.*): boot with swapaccount=1")
    assert int(memsw.read_text()) == 64 << 20 == int(_memory_file(tenant.name, "memory.limit_in_bytes").read_text())
    memsw.write_text("-1")  # someone lets it swap without bound
    drifted = driver.inspect(tenant.name)
    assert drifted is not None and drifted.resources.memory is None
    driver.apply_resources(tenant.name, Resources(cpu="1", memory="96Mi", pids=64, disk="64Mi"))
    assert int(memsw.read_text()) == 96 << 20
    driver.apply_resources(tenant.name, Resources(cpu="1", memory="48Mi", pids=64, disk="64Mi"))  # lowered
    repaired = driver.inspect(tenant.name)
    assert repaired is not None and repaired.resources.memory == 48 << 20 and repaired.pid == tenant.pid
    assert int(memsw.read_text()) == 48 << 20


def _dd_seconds(output: str) -> float:
    """The payload times itself with /proc/uptime (busybox dd prints no rate)."""
    found = re.search(r"elapsed ([\d.]+) ([\d.]+)", output)
    assert found and "6+0 records out" in output, output
    return float(found.group(2)) - float(found.group(1))


def test_disk_bandwidth_is_held_to_its_limit_and_requota_d_in_place(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    slow = make_tenant("io-slow", Resources(cpu="1", memory="128Mi", pids=64, disk="64Mi", io="2Mi"))
    fast = make_tenant("io-fast", Resources(cpu="1", memory="128Mi", pids=64, disk="64Mi"))
    write = (
        "read a _ < /proc/uptime; dd if=/dev/zero of=/root/f bs=1M count=6 oflag=direct; "
        'read b _ < /proc/uptime; echo "elapsed $a $b"; rm -f /root/f'
    )
    slow_seconds = _dd_seconds(as_payload(driver, slow.name, write))
    fast_seconds = _dd_seconds(as_payload(driver, fast.name, write))
    assert slow_seconds >= 2.0, f"6 MiB at 2 MiB/s took {slow_seconds} s"
    assert fast_seconds < slow_seconds / 2, (fast_seconds, slow_seconds)
    driver.apply_resources(slow.name, Resources(cpu="1", memory="128Mi", pids=64, disk="64Mi", io="200Mi"))
    after = driver.inspect(slow.name)
    assert after is not None and after.resources.io == 200 << 20 and after.pid == slow.pid
    assert _dd_seconds(as_payload(driver, slow.name, write)) < slow_seconds / 2


class _OlderFleetProcesses(Processes):
    """Starts containers as Fleet did before user namespaces: no range, no seccomp filter."""

    def command(self, tenant: str, root: Path, uid_base: int) -> list[str]:
        userns = set(nspawn_userns.nspawn_arguments(uid_base))
        return [part for part in super().command(tenant, root, uid_base) if part not in userns]


def test_a_tenant_from_an_older_fleet_moves_into_its_own_user_namespace_on_restart(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    tenant = make_tenant("legacy", Resources(cpu="1", memory="64Mi", pids=64, disk="48Mi"), start=False)
    pool, path = driver.pool, driver.pool.tenant_path(tenant.name)
    # What an older Fleet left: a marker without a range, the limit on the subvolume's own qgroup, no group.
    marker = json.loads(os.getxattr(path, TENANT_XATTR))
    del marker["uid_base"]
    os.setxattr(path, TENANT_XATTR, json.dumps(marker).encode())
    subvolume = btrfs.subvolume_id(path)
    for argv in (
        ["qgroup", "limit", "none", f"1/{subvolume}"],
        ["qgroup", "remove", f"0/{subvolume}", f"1/{subvolume}"],
        ["qgroup", "destroy", f"1/{subvolume}"],
        ["qgroup", "limit", "-e", "48M", f"0/{subvolume}"],
    ):
        subprocess.run(["btrfs", *argv, str(pool.root)], check=True, capture_output=True)
    (path / "srv/www/kept.txt").write_text("data from before the upgrade\n")
    older = _OlderFleetProcesses(driver.processes.state_dir, init_path=INIT_PATH, owner_of=driver.cgroups.owner_of)
    driver.cgroups.create(tenant.name)
    driver.networks.connect_parked(tenant.name)  # an older Fleet's container ran in its namespace, veth and all
    older.start(
        tenant.name, root=path, netns_path=netns_path(tenant.name), uid_base=nspawn_userns.FIRST_BASE,
        procs_files=driver.cgroups.procs_files(tenant.name), tenant_pids=lambda: driver.cgroups.pids(tenant.name),
    )
    legacy = driver.inspect(tenant.name)
    assert legacy is not None and legacy.running and legacy.resources.disk == 48 << 20
    assert legacy.restart_reason and "without a user namespace" in legacy.restart_reason
    # What the planner does with it (reconciler.plan: Stop, then Start):
    driver.stop(tenant.name)
    driver.start(tenant.name)
    upgraded = driver.inspect(tenant.name)
    assert upgraded is not None and upgraded.running and upgraded.restart_reason is None, upgraded
    base = pool.recorded_uid_base(tenant.name)
    assert base is not None and base >= nspawn_userns.FIRST_BASE
    assert _uid_map(as_payload(driver, tenant.name, 'echo "uidmap: $(cat /proc/self/uid_map)"'))[1] == base
    assert btrfs.read_qgroup(pool.fs_uuid, btrfs.qgroup_id(1, subvolume)).max_exclusive == 48 << 20
    assert btrfs.read_qgroup(pool.fs_uuid, subvolume).max_exclusive is None
    assert upgraded.resources.disk == 48 << 20
    assert tenant.address is not None
    address = tenant.address
    body = wait_for(lambda: http_get(address, path="/kept.txt"), what="the kept file to be served")
    assert body == b"data from before the upgrade\n"


def test_the_pool_is_mounted_nosuid_and_nodev(driver: NspawnDriver) -> None:
    options = next(
        set(line.split()[5].split(","))
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == str(driver.pool.root)
    )
    assert {"nosuid", "nodev"} <= options, options


def test_a_tenant_cannot_make_its_own_delete_fail(
    driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path
) -> None:
    """Paths past PATH_MAX (in its tree, above nested subvolumes, and in the cgroups it may write), the
    immutable flag on its root, and a forged ownership marker: the delete still removes every part."""
    tenant = make_tenant("undying", Resources(cpu="1", memory="128Mi", pids=128, disk="64Mi"))
    output = as_payload(
        driver,
        tenant.name,
        "tenant_probe deep /root 30 nested; tenant_probe chattr /; "
        "tenant_probe setxattr / trusted.fleet.tenant '{\"tenant\": \"someone-else\"}'; "
        "for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do "
        "  [ -w $h ] && tenant_probe deep $h 25 && echo deep-cgroup $h; done; echo probe-done",
        probe=tenant_probe,
    )
    assert "probe-done" in output and "deep ok" in output, output
    assert "chattr failed: Operation not permitted" in output, output
    assert "setxattr failed: Operation not permitted" in output, output
    pool = driver.pool
    top = btrfs.subvolume_id(pool.tenant_path(tenant.name))
    with btrfs.open_dir(pool.root) as pool_fd:
        nested = subvolumes.descendants(pool_fd, top)
    assert len(nested) == 2, nested  # one at the bottom of the deep chain, one deeper inside it
    assert driver.cgroups.exists(tenant.name)
    receipt = driver.delete(tenant.name)
    removed = " | ".join(receipt.removed)
    assert f"nested subvolume 'nested' (id {nested[-1].subvolume})" in removed, removed
    assert not os.path.lexists(pool.tenant_path(tenant.name))
    assert not driver.cgroups.exists(tenant.name)  # the top goes only once every group below it has
    for child in nested:
        assert not btrfs.qgroup_exists(pool.fs_uuid, child.subvolume)
    assert not btrfs.qgroup_exists(pool.fs_uuid, btrfs.qgroup_id(1, top))
    assert driver.delete(tenant.name).removed == ()


def test_a_console_flood_fills_only_the_tenants_own_quota(
    driver: NspawnDriver, make_tenant: MakeTenant
) -> None:
    """The console log lives in the tenant's subvolume, hidden from it: a flood hits the tenant's own disk
    quota (nspawn then ends that container, which the next pass restarts) and never the host's disk."""
    tenant = make_tenant("chatty", Resources(cpu="1", memory="128Mi", pids=128, disk="32Mi"))
    state_dir = driver.processes.state_dir
    before = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    output = as_payload(
        driver,
        tenant.name,
        "cat /.fleet-console.log >/dev/null && echo READ-LOG; rm -f /.fleet-console.log && echo REMOVED-LOG; "
        "umount /.fleet-console.log && echo UNMOUNTED-LOG; ls /sys/fs/btrfs/*/qgroups && echo SAW-QGROUPS; "
        "(head -c 48000000 /dev/zero | tr '\\0' x > /dev/console) </dev/null >/dev/null 2>&1 & echo flood-started",
    )
    assert "flood-started" in output, output
    assert "READ-LOG" not in output and "REMOVED-LOG" not in output and "UNMOUNTED-LOG" not in output, output
    assert "SAW-QGROUPS" not in output, "other tenants' disk usage is not the tenant's to read"
    log = driver.pool.tenant_path(tenant.name) / ".fleet-console.log"
    wait_for(lambda: log.stat().st_size > 30 << 20, timeout=60, what="the flood to reach the tenant's quota")
    # Held by the tenant's own quota; the host's state dir did not grow.
    assert driver.pool.disk_usage(tenant.name) <= 33 << 20
    after = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    assert after - before < 1 << 20, (before, after)
    observed = driver.inspect(tenant.name)  # an observation trims the log to its tail, quota or not
    assert observed is not None and log.stat().st_size < 1 << 20
    assert driver.pool.disk_limit(tenant.name) == 32 << 20, "the limit is back after the trim"
    assert "xxxx" in driver.log_tail(tenant.name)
    if not observed.running:
        driver.start(tenant.name)
    assert tenant.address is not None
    wait_http(tenant.address)

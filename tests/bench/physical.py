"""The physical floor of a signup, measured by hand in the same run, pool and template as Fleet's signups:
a btrfs snapshot (the ioctl), a network namespace with a veth pair made with pyroute2's own helpers, and
systemd-nspawn started in it until the page answers on port 80. Nothing of Fleet's reconciler, store or
driver bookkeeping runs here: the sum is what any tool must pay for the same container.

Used by bench_nspawn; everything it makes is removed after each sample (its own names: `phys-*` in the
pool root, namespace `fleetbench-phys`, veth `fbphys0`, cgroups `fleetbench-phys`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_userns

NAMESPACE = "fleetbench-phys"
VETH, PEER = "fbphys0", "fbphys1"
CGROUPS = [Path("/sys/fs/cgroup") / h / "fleetbench-phys" for h in ("systemd", "unified", "memory", "pids")]


@dataclass(frozen=True)
class Sample:
    snapshot_ms: float
    network_ms: float
    start_to_http_ms: float

    @property
    def total_ms(self) -> float:
        return self.snapshot_ms + self.network_ms + self.start_to_http_ms


def answers(address: str) -> bool:
    """The tenant's page answers 200 over HTTP from the host."""
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _join_cgroups() -> None:
    for group in CGROUPS:
        (group / "cgroup.procs").write_text(str(os.getpid()))


def _join_cgroups_and_namespace() -> None:
    """As Fleet's launcher does: a namespace owned by the host's user namespace, joined before nspawn runs."""
    _join_cgroups()
    fd = os.open(f"/run/netns/{NAMESPACE}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x4000_0000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def measure(pool_root: Path, template: Path, host_address: str, tenant_address: str, *, userns: bool) -> Sample:
    """One sample. `userns`: start with the same user namespace options Fleet uses (else none at all)."""
    name = f"phys-{os.getpid()}"
    started = time.perf_counter()
    btrfs.snapshot(template, pool_root, name)
    snapshot_ms = (time.perf_counter() - started) * 1000
    root = pool_root / name
    process: subprocess.Popen[bytes] | None = None
    try:
        started = time.perf_counter()
        netns.create(NAMESPACE)
        with IPRoute() as ipr:
            ipr.link("add", ifname=VETH, kind="veth", peer={"ifname": PEER, "net_ns_fd": NAMESPACE})
            index = ipr.link_lookup(ifname=VETH)[0]
            ipr.addr("add", index=index, address=host_address, prefixlen=30)
            ipr.link("set", index=index, state="up")
        with IPRoute(netns=NAMESPACE, flags=0) as nsr:
            peer = nsr.link_lookup(ifname=PEER)[0]
            nsr.link("set", index=peer, ifname="eth0")
            nsr.addr("add", index=peer, address=tenant_address, prefixlen=30)
            nsr.link("set", index=peer, state="up")
            nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
            nsr.route("add", dst="0.0.0.0/0", gateway=host_address)
        if userns:  # what the user namespace needs to bind port 80 (Fleet sets the same)
            subprocess.run(["ip", "netns", "exec", NAMESPACE, "sysctl", "-qw",
                            "net.ipv4.ip_unprivileged_port_start=0"], check=True)
        network_ms = (time.perf_counter() - started) * 1000
        for group in CGROUPS:
            group.mkdir(exist_ok=True)
        argv = [shutil.which("systemd-nspawn") or "systemd-nspawn", "--register=no", "--keep-unit", "-q", "-D",
                str(root), f"--network-namespace-path=/run/netns/{NAMESPACE}", "--machine=fleetbench-phys"]
        if userns:
            argv = [*argv[:-2], "--machine=fleetbench-phys",
                    *nspawn_userns.nspawn_arguments(nspawn_userns.FIRST_BASE + nspawn_userns.RANGE_SIZE * 4000)]
        started = time.perf_counter()
        process = subprocess.Popen([*argv, "--as-pid2", "/fleet/init"],
                                   preexec_fn=_join_cgroups_and_namespace if userns else _join_cgroups,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not answers(tenant_address):
            if time.monotonic() > deadline:
                raise SystemExit("the hand-started container never answered")
            time.sleep(0.002)
        start_to_http_ms = (time.perf_counter() - started) * 1000
        return Sample(snapshot_ms, network_ms, start_to_http_ms)
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for group in CGROUPS:
            for pids in group.rglob("cgroup.procs"):
                for pid in pids.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        cleanup(pool_root)


def cleanup(pool_root: Path) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=VETH):
            ipr.link("del", index=index)
    if NAMESPACE in netns.listnetns():
        netns.remove(NAMESPACE)
    for group in CGROUPS:
        for directory in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            group.rmdir()
    for leftover in pool_root.glob("phys-*"):
        btrfs.destroy_subvolume(pool_root, leftover.name)

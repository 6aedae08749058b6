"""What each nspawn tenant uses now, straight from the kernel: its cgroups (CPU time, memory now and at
peak), its btrfs qgroup (exclusive bytes) and the host end of its veth (bytes in and out).

Only reads, only files the kernel keeps (no fork, no netlink), so one tenant costs a few file reads and a
scrape of every tenant on a node stays cheap. The host end of a veth counts the other way round: what the
host end received (rx) is what the tenant sent. This module must never write anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drivers.nspawn_cgroups_base import cgroup_name, read_value
from drivers.nspawn_network import veth_name
from specs import NotFound, Usage

NET_CLASS = Path("/sys/class/net")


@dataclass(frozen=True)
class CgroupUsage:
    cpu_seconds: float = 0.0
    memory_bytes: int = 0
    memory_peak_bytes: int = 0


def _int(path: Path) -> int:
    text = read_value(path)
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _cpu_stat_usec(path: Path) -> int:
    for line in (read_value(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    return 0


def cgroup_usage(root: Path, version: int, tenant: str) -> CgroupUsage:
    """CPU seconds and memory of the tenant's cgroup (zeros when it has none: never started, or stopped and
    removed). v1: `cpuacct.usage` (ns), `memory.usage_in_bytes`, `memory.max_usage_in_bytes`; v2 (not
    proven on the CI host, see nspawn_cgroups): `cpu.stat` usage_usec, `memory.current`, `memory.peak`."""
    name = cgroup_name(tenant)
    if version == 1:
        return CgroupUsage(
            cpu_seconds=_int(root / "cpuacct" / "fleet" / name / "cpuacct.usage") / 1e9,
            memory_bytes=_int(root / "memory" / "fleet" / name / "memory.usage_in_bytes"),
            memory_peak_bytes=_int(root / "memory" / "fleet" / name / "memory.max_usage_in_bytes"),
        )
    directory = root / "fleet.slice" / name
    current = _int(directory / "memory.current")
    return CgroupUsage(
        cpu_seconds=_cpu_stat_usec(directory / "cpu.stat") / 1e6,
        memory_bytes=current,
        memory_peak_bytes=max(current, _int(directory / "memory.peak")),
    )


def network_bytes(tenant: str, net_class: Path = NET_CLASS) -> tuple[int, int]:
    """(bytes the tenant received, bytes it sent), from its veth's host end; zeros without one."""
    statistics = net_class / veth_name(tenant) / "statistics"
    return _int(statistics / "tx_bytes"), _int(statistics / "rx_bytes")


def tenant_usage(
    tenant: str, *, cgroup_root: Path, cgroup_version: int, disk_bytes: int, running: bool,
    net_class: Path = NET_CLASS,
) -> Usage:
    cgroup = cgroup_usage(cgroup_root, cgroup_version, tenant)
    received, sent = network_bytes(tenant, net_class)
    return Usage(
        tenant=tenant,
        running=running,
        cpu_seconds=cgroup.cpu_seconds,
        memory_bytes=cgroup.memory_bytes,
        memory_peak_bytes=max(cgroup.memory_peak_bytes, cgroup.memory_bytes),
        disk_bytes=disk_bytes,
        network_in_bytes=received,
        network_out_bytes=sent,
    )


def disk_bytes_or_zero(read: Callable[[str], int], tenant: str) -> int:
    """The pool's exclusive bytes of the tenant, 0 when its qgroup is not there (quotas off, half-made)."""
    try:
        return read(tenant)
    except NotFound:
        return 0

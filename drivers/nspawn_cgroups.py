"""Per-tenant cgroups for the nspawn driver: create them, set CPU/memory/pids limits, read them back, remove them.

Without systemd as PID 1 nobody else makes a tenant's cgroups, so this module writes cgroupfs directly. Two
layouts share one interface:

- `CgroupsV1` (proven in CI): `fleet/tenant-<name>` in the cpu, cpuacct, memory, pids, blkio,
  `name=systemd` and unified hierarchies; limits in `cpu.cfs_quota_us`, `memory.limit_in_bytes` with
  `memory.memsw.limit_in_bytes` at the same value (memory and swap together stay under the limit),
  `pids.max`, and `blkio.throttle.{read,write}_bps_device` on the pool's block devices.
- `CgroupsV2` (written from Documentation/admin-guide/cgroup-v2.rst, not proven here: the CI host binds
  cpu, memory and pids to v1): `fleet.slice/tenant-<name>` with `cpu.max`, `memory.max`,
  `memory.swap.max` 0 (v2 cannot bound memory and swap together, so a limited tenant gets no swap),
  `pids.max` and `io.max`.

The host decides which tenant a process belongs to from its cgroup (`owner_of`), never from its name.

The `tenant-` prefix keeps a tenant called `tasks` from colliding with a cgroup control file.

This module must never touch a cgroup outside Fleet's parent group, and never remove a cgroup that still has
processes it did not first kill on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from drivers.nspawn_cgroups_base import (
    CGROUP_ROOT,
    CPU_PERIOD_US,
    TENANT_PREFIX,
    V1_MEMORY_UNLIMITED,
    Cgroups,
    CgroupsBase,
    cgroup_name,
    observed_io,
    parse_throttles,
    read_value,
    write_value,
)
from drivers.nspawn_cgroups_v2 import CgroupsV2
from specs import FleetError, PermanentError, Resources, TransientError

__all__ = ["CGROUP_ROOT", "TENANT_PREFIX", "Cgroups", "CgroupsV1", "CgroupsV2", "cgroup_name", "detect", "observed_io"]


class CgroupsV1(CgroupsBase):
    """Legacy hierarchies, one mount per controller (what this CI host has)."""

    version = 1
    # name=systemd and unified: nspawn insists on owning a subtree in both even with --keep-unit.
    HIERARCHIES = ("cpu", "cpuacct", "memory", "pids", "blkio", "systemd", "unified")

    def _owner_line(self, line: str) -> str | None:
        # "4:memory:/fleet/tenant-x": the memory hierarchy, which only the host can move a process in.
        _number, controllers, path = line.split(":", 2)
        return path if "memory" in controllers.split(",") else None

    def _owner_parent(self) -> str:
        return "fleet"

    def _parents(self) -> list[Path]:
        return [self.root / hierarchy / "fleet" for hierarchy in self.HIERARCHIES]

    def _dir(self, hierarchy: str, tenant: str) -> Path:
        return self.root / hierarchy / "fleet" / cgroup_name(tenant)

    def _tenant_dirs(self, tenant: str) -> list[Path]:
        return [self._dir(hierarchy, tenant) for hierarchy in self.HIERARCHIES]

    def create(self, tenant: str) -> None:
        for path in self._tenant_dirs(tenant):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TransientError(f"could not create cgroup {path}: {error}") from error

    def procs_files(self, tenant: str) -> list[Path]:
        return [path / "cgroup.procs" for path in self._tenant_dirs(tenant)]

    def apply(self, tenant: str, resources: Resources, io_devices: Sequence[str] = ()) -> None:
        self.create(tenant)
        cpu = self._dir("cpu", tenant)
        write_value(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = -1 if resources.cpu is None else max(1000, CPU_PERIOD_US * resources.cpu // 1000)
        # A burst of one period's quota: quota left unused may be spent later, up to twice the quota in one
        # period, so the average stays at the quota. Starting a container costs ~90 ms of CPU within ~100 ms
        # (nspawn's own setup, charged to the tenant): at 500m without a burst every start was throttled
        # for 15-50 ms, a fifth of a signup. Kernels before 5.14 have no burst: the quota alone then.
        burst = cpu / "cpu.cfs_burst_us"
        if burst.exists():
            write_value(burst, "0")  # the kernel refuses a quota below the burst: clear it first
        write_value(cpu / "cpu.cfs_quota_us", str(quota))
        if burst.exists() and quota > 0:
            write_value(burst, str(quota))
        self._apply_memory(tenant, resources.memory)
        write_value(self._dir("pids", tenant) / "pids.max", "max" if resources.pids is None else str(resources.pids))
        blkio = self._dir("blkio", tenant)
        for name in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
            for device in io_devices:
                # 0 removes the device's rule: the kernel's way to say "no limit".
                write_value(blkio / name, f"{device} {resources.io or 0}")

    def release_memory(self, tenant: str) -> None:
        """Give back the page cache still charged to a stopped tenant (its processes are gone): a sleeping
        tenant holds no memory. Best effort: what cannot be dropped (dirty pages under writeback) stays
        until the kernel reclaims it."""
        with contextlib.suppress(OSError, FleetError):
            write_value(self._dir("memory", tenant) / "memory.force_empty", "0")

    def _apply_memory(self, tenant: str, memory: int | None) -> None:
        """memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: raise memsw first, lower it last."""
        group = self._dir("memory", tenant)
        memsw = group / "memory.memsw.limit_in_bytes"
        if not memsw.exists():  # a kernel without swap accounting: nothing to bound swap with
            write_value(group / "memory.limit_in_bytes", str(memory or -1))
            return
        current = int(read_value(memsw) or 0)
        if memory is None or memory > current:
            write_value(memsw, str(memory or -1))
            write_value(group / "memory.limit_in_bytes", str(memory or -1))
        else:
            write_value(group / "memory.limit_in_bytes", str(memory))
            write_value(memsw, str(memory))

    def read(self, tenant: str, io_devices: Sequence[str] = ()) -> Resources:
        cpu = None
        quota = read_value(self._dir("cpu", tenant) / "cpu.cfs_quota_us")
        period = read_value(self._dir("cpu", tenant) / "cpu.cfs_period_us")
        if quota is not None and period and int(quota) > 0:
            cpu = int(quota) * 1000 // int(period)
        memory = None
        limit = read_value(self._dir("memory", tenant) / "memory.limit_in_bytes")
        # With swap accounting, what the tenant can hold is memory plus swap: the larger of the two limits.
        with_swap = read_value(self._dir("memory", tenant) / "memory.memsw.limit_in_bytes")
        ceiling = max(int(limit), int(with_swap)) if limit is not None and with_swap is not None else limit
        if ceiling is not None and int(ceiling) < V1_MEMORY_UNLIMITED:
            memory = int(ceiling)
        pids = None
        pids_max = read_value(self._dir("pids", tenant) / "pids.max")
        if pids_max is not None and pids_max != "max":
            pids = int(pids_max)
        blkio = self._dir("blkio", tenant)
        io = observed_io(
            parse_throttles(read_value(blkio / "blkio.throttle.read_bps_device")),
            parse_throttles(read_value(blkio / "blkio.throttle.write_bps_device")),
            io_devices,
        )
        # model_construct: the kernel's value is the truth even if it is outside what a spec may ask for.
        return Resources.model_construct(cpu=cpu, memory=memory, disk=None, pids=pids, io=io)

    def oom_kills(self, tenant: str) -> int:
        text = read_value(self._dir("memory", tenant) / "memory.oom_control") or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_usage_ns(self, tenant: str) -> int:
        return int(read_value(self._dir("cpuacct", tenant) / "cpuacct.usage") or 0)


def detect(root: Path = CGROUP_ROOT) -> Cgroups:
    """The layout this host offers for cpu, memory and pids; PermanentError when neither is usable."""
    controllers = set((read_value(root / "cgroup.controllers") or "").split())
    if {"cpu", "memory", "pids"} <= controllers:
        return CgroupsV2(root)
    if all((root / hierarchy).is_dir() for hierarchy in ("cpu", "cpuacct", "memory", "pids")):
        if not (root / "systemd").is_dir() or not (root / "unified").is_dir():
            raise PermanentError(
                f"cgroup v1 at {root} lacks the name=systemd or unified hierarchy systemd-nspawn needs",
                reason="CgroupsUnsupported",
            )
        return CgroupsV1(root)
    raise PermanentError(
        f"no cgroup layout at {root} offers cpu, memory and pids controllers", reason="CgroupsUnsupported"
    )

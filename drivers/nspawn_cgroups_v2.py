"""cgroup v2: one unified hierarchy, limits in cpu.max, memory.max (and memory.swap.max 0), pids.max, io.max."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from drivers.nspawn_cgroups_base import CPU_PERIOD_US, CgroupsBase, cgroup_name, observed_io, read_value, write_value
from specs import FleetError, Resources, TransientError


class CgroupsV2(CgroupsBase):
    """The unified hierarchy (systemd hosts). Written from the kernel docs; CI cannot prove it (see module doc)."""

    version = 2
    PARENT = "fleet.slice"
    CONTROLLERS = ("cpu", "memory", "pids", "io")

    def _parents(self) -> list[Path]:
        return [self.root / self.PARENT]

    def _owner_line(self, line: str) -> str | None:
        return line.removeprefix("0::") if line.startswith("0::") else None

    def _owner_parent(self) -> str:
        return self.PARENT

    def _tenant_dirs(self, tenant: str) -> list[Path]:
        return [self.root / self.PARENT / cgroup_name(tenant)]

    def _enable_controllers(self, group: Path) -> None:
        wanted = " ".join(f"+{name}" for name in self.CONTROLLERS)
        enabled = set((read_value(group / "cgroup.subtree_control") or "").split())
        if not set(self.CONTROLLERS) <= enabled:
            write_value(group / "cgroup.subtree_control", wanted)

    def create(self, tenant: str) -> None:
        parent = self.root / self.PARENT
        try:
            # Controllers must be enabled top-down: the root's subtree_control, then the parent's.
            self._enable_controllers(self.root)
            parent.mkdir(exist_ok=True)
            self._enable_controllers(parent)
            self._tenant_dirs(tenant)[0].mkdir(exist_ok=True)
        except OSError as error:
            raise TransientError(f"could not create cgroup for tenant {tenant}: {error}") from error

    def procs_files(self, tenant: str) -> list[Path]:
        return [self._tenant_dirs(tenant)[0] / "cgroup.procs"]

    def apply(self, tenant: str, resources: Resources, io_devices: Sequence[str] = ()) -> None:
        self.create(tenant)
        group = self._tenant_dirs(tenant)[0]
        quota = "max" if resources.cpu is None else str(max(1000, CPU_PERIOD_US * resources.cpu // 1000))
        burst = group / "cpu.max.burst"  # one period's quota, as on v1 (see CgroupsV1.apply for why)
        if burst.exists():
            write_value(burst, "0")  # the kernel refuses a quota below the burst: clear it first
        write_value(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if burst.exists() and quota != "max":
            write_value(burst, quota)
        write_value(group / "memory.max", "max" if resources.memory is None else str(resources.memory))
        if (group / "memory.swap.max").exists():
            write_value(group / "memory.swap.max", "max" if resources.memory is None else "0")
        write_value(group / "pids.max", "max" if resources.pids is None else str(resources.pids))
        bandwidth = "max" if resources.io is None else str(resources.io)
        for device in io_devices:
            write_value(group / "io.max", f"{device} rbps={bandwidth} wbps={bandwidth}")

    def read(self, tenant: str, io_devices: Sequence[str] = ()) -> Resources:
        group = self._tenant_dirs(tenant)[0]
        cpu = None
        cpu_max = (read_value(group / "cpu.max") or "max").split()
        if cpu_max and cpu_max[0] != "max":
            cpu = int(cpu_max[0]) * 1000 // int(cpu_max[1] if len(cpu_max) > 1 else CPU_PERIOD_US)
        memory_max = read_value(group / "memory.max")
        swap_max = read_value(group / "memory.swap.max")
        if swap_max not in (None, "0"):
            memory_max = None  # swap on top of the limit: the tenant can hold more than memory.max
        pids_max = read_value(group / "pids.max")
        read: dict[str, int] = {}
        write: dict[str, int] = {}
        for line in (read_value(group / "io.max") or "").splitlines():  # "8:16 rbps=2097152 wbps=max riops=max ..."
            device, *settings = line.split()
            values = dict(setting.partition("=")[::2] for setting in settings)
            if values.get("rbps", "max").isdigit():
                read[device] = int(values["rbps"])
            if values.get("wbps", "max").isdigit():
                write[device] = int(values["wbps"])
        return Resources.model_construct(
            cpu=cpu,
            memory=None if memory_max in (None, "max") else int(memory_max),
            disk=None,
            pids=None if pids_max in (None, "max") else int(pids_max),
            io=observed_io(read, write, io_devices),
        )

    def _flat_keys(self, path: Path) -> Iterator[tuple[str, int]]:
        for line in (read_value(path) or "").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                yield key, int(value)

    def release_memory(self, tenant: str) -> None:
        """Reclaim what a stopped tenant's cgroup still holds (page cache), as v1's force_empty does."""
        with contextlib.suppress(OSError, FleetError):
            write_value(self._tenant_dirs(tenant)[0] / "memory.reclaim", str(1 << 40))

    def oom_kills(self, tenant: str) -> int:
        return dict(self._flat_keys(self._tenant_dirs(tenant)[0] / "memory.events")).get("oom_kill", 0)

    def cpu_usage_ns(self, tenant: str) -> int:
        return dict(self._flat_keys(self._tenant_dirs(tenant)[0] / "cpu.stat")).get("usage_usec", 0) * 1000

    def kill(self, tenant: str) -> int:
        group = self._tenant_dirs(tenant)[0]
        # cgroup.kill (5.14+) kills the whole subtree at once and cannot miss a process forked meanwhile.
        if (group / "cgroup.kill").exists() and self.pids(tenant):
            write_value(group / "cgroup.kill", "1")
        return super().kill(tenant)

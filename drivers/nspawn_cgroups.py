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
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from specs import PermanentError, Resources, TransientError, validate_name

CGROUP_ROOT = Path("/sys/fs/cgroup")
TENANT_PREFIX = "tenant-"
CPU_PERIOD_US = 100_000
# memory.limit_in_bytes reads back as PAGE_COUNTER_MAX rounded to a page when unlimited; anything this
# large means "no limit".
_V1_MEMORY_UNLIMITED = 1 << 62
_KILL_DEADLINE_S = 5.0


def cgroup_name(tenant: str) -> str:
    return TENANT_PREFIX + validate_name(tenant)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as error:
        # EBUSY: e.g. a memory limit below current usage that the kernel could not reclaim; may pass later.
        if error.errno in (errno.EBUSY, errno.EAGAIN, errno.EINTR):
            raise TransientError(f"kernel refused {value!r} for {path}: {error.strerror}") from error
        if error.errno in (errno.EINVAL, errno.ERANGE):
            message = f"kernel rejected {value!r} for {path}: {error.strerror}"
            raise PermanentError(message, reason="BadLimit") from error
        raise TransientError(f"could not write {path}: {error}") from error


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _throttles(text: str | None) -> dict[str, int]:
    """`MAJ:MIN BYTES` lines of a v1 blkio throttle file, as {"MAJ:MIN": bytes}."""
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        device, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[device] = int(value)
    return found


def observed_io(read: dict[str, int], write: dict[str, int], devices: Sequence[str]) -> int | None:
    """One bandwidth when every device has the same read and write limit; None when none has any; 0 (no
    spec's value, so the planner re-applies) when they disagree."""
    values = {table.get(device) for table in (read, write) for device in devices}
    if values == {None} or not devices:
        return None
    return values.pop() if len(values) == 1 else 0


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _subdirectories(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]


def _walk(top: Path, visit: Callable[[int], None], leave: Callable[[int, str], None] | None = None) -> None:
    """Depth first over `top` and every directory below it, holding one descriptor at a time.

    A tenant owns a delegated subtree and can nest it deeper than PATH_MAX, which os.walk (paths) and
    os.fwalk (one descriptor a level, recursion) cannot follow; this goes down by name and back up by
    "..", so neither depth nor breadth can make it fail. `visit(fd)` sees each directory; `leave(fd, name)`
    is called on the parent after a child's subtree is done (where rmdir goes)."""
    try:
        fd = os.open(top, _DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        names: list[str] = []  # the path from top, as names: no descriptor is held per level
        visit(fd)
        pending = [_subdirectories(fd)]
        while pending:
            if pending[-1]:
                name = pending[-1].pop()
                try:
                    child = os.open(name, _DIRECTORY, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                os.close(fd)
                fd = child
                names.append(name)
                visit(fd)
                pending.append(_subdirectories(fd))
                continue
            pending.pop()
            if not names:
                break
            parent = os.open("..", _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            name = names.pop()
            if leave is not None:
                leave(fd, name)
    finally:
        os.close(fd)


def _procs_under(top: Path) -> set[int]:
    pids: set[int] = set()

    def visit(fd: int) -> None:
        try:
            procs = os.open("cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return
        with open(procs) as handle, contextlib.suppress(OSError):  # removed while being read: nothing in it
            pids.update(int(line) for line in handle.read().split() if line.isdigit())

    _walk(top, visit)
    return pids


class Cgroups(Protocol):
    """What the driver needs from either cgroup layout."""

    version: int

    def create(self, tenant: str) -> None: ...

    def exists(self, tenant: str) -> bool: ...

    def procs_files(self, tenant: str) -> list[Path]:
        """The cgroup.procs files a launcher writes its pid to, so all it starts is charged to the tenant."""
        ...

    def apply(self, tenant: str, resources: Resources, io_devices: Sequence[str] = ()) -> None:
        """Write every limit; `io_devices` ("MAJ:MIN") are the pool's block devices, which `io` throttles."""
        ...

    def read(self, tenant: str, io_devices: Sequence[str] = ()) -> Resources: ...

    def owner_of(self, pid: int) -> str | None:
        """The tenant whose cgroup holds host pid `pid`, or None (not a tenant's, or gone)."""
        ...

    def pids(self, tenant: str) -> set[int]: ...

    def oom_kills(self, tenant: str) -> int: ...

    def cpu_usage_ns(self, tenant: str) -> int: ...

    def kill(self, tenant: str) -> int: ...

    def remove(self, tenant: str) -> list[str]: ...

    def list_tenants(self) -> list[str]: ...

    def problems(self, tenant: str) -> list[str]: ...


class _Base:
    version = 0

    def __init__(self, root: Path, sleep: Callable[[float], None] = time.sleep) -> None:
        self.root = root
        self._sleep = sleep

    def _tenant_dirs(self, tenant: str) -> list[Path]:
        raise NotImplementedError

    def _parents(self) -> list[Path]:
        raise NotImplementedError

    def exists(self, tenant: str) -> bool:
        return any(path.is_dir() for path in self._tenant_dirs(tenant))

    def _owner_line(self, line: str) -> str | None:
        """The cgroup path in one /proc/PID/cgroup line of the hierarchy that decides ownership."""
        raise NotImplementedError

    def _owner_parent(self) -> str:
        raise NotImplementedError

    def owner_of(self, pid: int) -> str | None:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return None
        prefix = f"/{self._owner_parent()}/{TENANT_PREFIX}"
        for line in text.splitlines():
            path = self._owner_line(line)
            if path is not None and path.startswith(prefix):
                return path.removeprefix(prefix).partition("/")[0] or None
        return None

    def problems(self, tenant: str) -> list[str]:
        missing = [str(path) for path in self._tenant_dirs(tenant) if not path.is_dir()]
        return [f"cgroup missing: {path}" for path in missing]

    def pids(self, tenant: str) -> set[int]:
        found: set[int] = set()
        for path in self._tenant_dirs(tenant):
            found |= _procs_under(path)
        return found

    def kill(self, tenant: str) -> int:
        """SIGKILL everything in the tenant's cgroups and wait until they are empty; returns how many were hit."""
        deadline = time.monotonic() + _KILL_DEADLINE_S
        hit: set[int] = set()
        while True:
            remaining = self.pids(tenant)
            if not remaining:
                return len(hit)
            if time.monotonic() > deadline:
                raise TransientError(f"tenant {tenant} still has processes {sorted(remaining)} after SIGKILL")
            for pid in remaining - hit:
                self._kill_member(tenant, pid)
            hit |= remaining
            self._sleep(0.01)

    def _kill_member(self, tenant: str, pid: int) -> None:
        """SIGKILL `pid` only if it is still the tenant's: the pidfd pins the process, so a pid that exited
        and was reused by someone else's process after the cgroup was read is never hit."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if self.owner_of(pid) == tenant:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)

    def remove(self, tenant: str) -> list[str]:
        """Kill what is left, then rmdir the tenant's cgroups deepest first (nspawn nests payload/supervisor)."""
        self.kill(tenant)
        removed: list[str] = []
        for top in self._tenant_dirs(tenant):
            nested = self._remove_below(top)
            if self._rmdir(str(top), None, str(top)):
                removed.append(f"cgroup {top}" + (f" and {nested} below it" if nested else ""))
        left = [str(path) for path in self._tenant_dirs(tenant) if path.exists()]
        if left:
            raise TransientError(f"cgroups of tenant {tenant} still exist: {left}")
        return removed

    def _remove_below(self, top: Path) -> int:
        """rmdir every cgroup under `top`, children first, at any depth; how many went."""
        gone = 0

        def leave(fd: int, name: str) -> None:
            nonlocal gone
            gone += self._rmdir(name, fd, f"{top}/.../{name}")

        _walk(top, lambda _fd: None, leave)
        return gone

    def _rmdir(self, name: str, dir_fd: int | None, shown: str) -> bool:
        """rmdir one cgroup; True if it went, False if it was already gone."""
        deadline = time.monotonic() + _KILL_DEADLINE_S
        while True:
            try:
                os.rmdir(name, dir_fd=dir_fd)
                return True
            except FileNotFoundError:
                return False
            except OSError as error:
                # EBUSY right after a kill: the exiting tasks are not yet detached.
                if error.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise TransientError(f"could not remove cgroup {shown}: {error}") from error
                self._sleep(0.01)

    def list_tenants(self) -> list[str]:
        names: set[str] = set()
        for parent in self._parents():
            if parent.is_dir():
                names.update(
                    child.name.removeprefix(TENANT_PREFIX)
                    for child in parent.iterdir()
                    if child.is_dir() and child.name.startswith(TENANT_PREFIX)
                )
        return sorted(names)


class CgroupsV1(_Base):
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
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = -1 if resources.cpu is None else max(1000, CPU_PERIOD_US * resources.cpu // 1000)
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        self._apply_memory(tenant, resources.memory)
        _write(self._dir("pids", tenant) / "pids.max", "max" if resources.pids is None else str(resources.pids))
        blkio = self._dir("blkio", tenant)
        for name in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
            for device in io_devices:
                # 0 removes the device's rule: the kernel's way to say "no limit".
                _write(blkio / name, f"{device} {resources.io or 0}")

    def _apply_memory(self, tenant: str, memory: int | None) -> None:
        """memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: raise memsw first, lower it last."""
        group = self._dir("memory", tenant)
        memsw = group / "memory.memsw.limit_in_bytes"
        if not memsw.exists():  # a kernel without swap accounting: nothing to bound swap with
            _write(group / "memory.limit_in_bytes", str(memory or -1))
            return
        current = int(_read(memsw) or 0)
        if memory is None or memory > current:
            _write(memsw, str(memory or -1))
            _write(group / "memory.limit_in_bytes", str(memory or -1))
        else:
            _write(group / "memory.limit_in_bytes", str(memory))
            _write(memsw, str(memory))

    def read(self, tenant: str, io_devices: Sequence[str] = ()) -> Resources:
        cpu = None
        quota = _read(self._dir("cpu", tenant) / "cpu.cfs_quota_us")
        period = _read(self._dir("cpu", tenant) / "cpu.cfs_period_us")
        if quota is not None and period and int(quota) > 0:
            cpu = int(quota) * 1000 // int(period)
        memory = None
        limit = _read(self._dir("memory", tenant) / "memory.limit_in_bytes")
        # With swap accounting, what the tenant can hold is memory plus swap: the larger of the two limits.
        with_swap = _read(self._dir("memory", tenant) / "memory.memsw.limit_in_bytes")
        ceiling = max(int(limit), int(with_swap)) if limit is not None and with_swap is not None else limit
        if ceiling is not None and int(ceiling) < _V1_MEMORY_UNLIMITED:
            memory = int(ceiling)
        pids = None
        pids_max = _read(self._dir("pids", tenant) / "pids.max")
        if pids_max is not None and pids_max != "max":
            pids = int(pids_max)
        blkio = self._dir("blkio", tenant)
        io = observed_io(
            _throttles(_read(blkio / "blkio.throttle.read_bps_device")),
            _throttles(_read(blkio / "blkio.throttle.write_bps_device")),
            io_devices,
        )
        # model_construct: the kernel's value is the truth even if it is outside what a spec may ask for.
        return Resources.model_construct(cpu=cpu, memory=memory, disk=None, pids=pids, io=io)

    def oom_kills(self, tenant: str) -> int:
        text = _read(self._dir("memory", tenant) / "memory.oom_control") or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_usage_ns(self, tenant: str) -> int:
        return int(_read(self._dir("cpuacct", tenant) / "cpuacct.usage") or 0)


class CgroupsV2(_Base):
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
        enabled = set((_read(group / "cgroup.subtree_control") or "").split())
        if not set(self.CONTROLLERS) <= enabled:
            _write(group / "cgroup.subtree_control", wanted)

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
        _write(group / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        _write(group / "memory.max", "max" if resources.memory is None else str(resources.memory))
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", "max" if resources.memory is None else "0")
        _write(group / "pids.max", "max" if resources.pids is None else str(resources.pids))
        bandwidth = "max" if resources.io is None else str(resources.io)
        for device in io_devices:
            _write(group / "io.max", f"{device} rbps={bandwidth} wbps={bandwidth}")

    def read(self, tenant: str, io_devices: Sequence[str] = ()) -> Resources:
        group = self._tenant_dirs(tenant)[0]
        cpu = None
        cpu_max = (_read(group / "cpu.max") or "max").split()
        if cpu_max and cpu_max[0] != "max":
            cpu = int(cpu_max[0]) * 1000 // int(cpu_max[1] if len(cpu_max) > 1 else CPU_PERIOD_US)
        memory_max = _read(group / "memory.max")
        swap_max = _read(group / "memory.swap.max")
        if swap_max not in (None, "0"):
            memory_max = None  # swap on top of the limit: the tenant can hold more than memory.max
        pids_max = _read(group / "pids.max")
        read: dict[str, int] = {}
        write: dict[str, int] = {}
        for line in (_read(group / "io.max") or "").splitlines():  # "8:16 rbps=2097152 wbps=max riops=max ..."
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
        for line in (_read(path) or "").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                yield key, int(value)

    def oom_kills(self, tenant: str) -> int:
        return dict(self._flat_keys(self._tenant_dirs(tenant)[0] / "memory.events")).get("oom_kill", 0)

    def cpu_usage_ns(self, tenant: str) -> int:
        return dict(self._flat_keys(self._tenant_dirs(tenant)[0] / "cpu.stat")).get("usage_usec", 0) * 1000

    def kill(self, tenant: str) -> int:
        group = self._tenant_dirs(tenant)[0]
        # cgroup.kill (5.14+) kills the whole subtree at once and cannot miss a process forked meanwhile.
        if (group / "cgroup.kill").exists() and self.pids(tenant):
            _write(group / "cgroup.kill", "1")
        return super().kill(tenant)


def detect(root: Path = CGROUP_ROOT) -> Cgroups:
    """The layout this host offers for cpu, memory and pids; PermanentError when neither is usable."""
    controllers = set((_read(root / "cgroup.controllers") or "").split())
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

"""What both cgroup layouts share: names, reading and writing control files, the driver's view of a tenant's
cgroups (`Cgroups`), and the walk-based kill and removal every layout does the same way."""


from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from drivers.nspawn_cgroup_walk import procs_under, walk
from specs import PermanentError, Resources, TransientError, validate_name

CGROUP_ROOT = Path("/sys/fs/cgroup")
TENANT_PREFIX = "tenant-"
CPU_PERIOD_US = 100_000
# memory.limit_in_bytes reads back as PAGE_COUNTER_MAX rounded to a page when unlimited; anything this
# large means "no limit".
V1_MEMORY_UNLIMITED = 1 << 62
_KILL_DEADLINE_S = 5.0


def cgroup_name(tenant: str) -> str:
    return TENANT_PREFIX + validate_name(tenant)


def write_value(path: Path, value: str) -> None:
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


def read_value(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def parse_throttles(text: str | None) -> dict[str, int]:
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


class Cgroups(Protocol):
    """What the driver needs from either cgroup layout."""

    version: int
    root: Path  # the cgroup filesystem's mount, e.g. /sys/fs/cgroup

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

    def release_memory(self, tenant: str) -> None: ...

    def remove(self, tenant: str) -> list[str]: ...

    def list_tenants(self) -> list[str]: ...

    def problems(self, tenant: str) -> list[str]: ...


class CgroupsBase:
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
            found |= procs_under(path)
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

        walk(top, lambda _fd: None, leave)
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



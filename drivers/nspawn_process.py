"""Start, find and stop a tenant's systemd-nspawn container so that it outlives the operator.

The launcher (`nspawn_launcher`, a fork server kept from the first start) re-parents the container away
from the operator and, before nspawn's first instruction, puts it in the tenant's cgroups, network
namespace (made by the host, so it belongs to the host's user namespace and the tenant holds no capability
over it) and seccomp filter (`nspawn_seccomp`), opts it into KSM, writes a pid file, and execs

    systemd-nspawn --register=no --keep-unit -q -D ROOT --machine=T --setenv=FLEET_TENANT=T
                   --private-users=BASE:65536 --private-users-ownership=map --no-new-privileges=yes
                   --drop-capability=... --inaccessible=... --as-pid2 /fleet/init

(`--register=no --keep-unit`: no machined and no systemd bus on hosts where systemd is not PID 1; the user
namespace options come from `nspawn_userns`). Output goes to the console log in the tenant's subvolume.

A running container is found by reading /proc, never from memory, so an operator restart never restarts a
tenant; the pid file only makes the lookup fast. Identity comes from the host, not from a name: a process
is tenant T's container only if it is in the host's pid namespace and in T's cgroup (and runs nspawn with
T's marker). A tenant's own processes are in its pid namespace and cgroup, so whatever it names them it
cannot pass for another tenant's container.

This module must never signal a process that is not, by that test, the container of that tenant.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from drivers import nspawn_userns
from drivers.nspawn_launcher import Launcher
from specs import TransientError, validate_name

MARKER = "--setenv=FLEET_TENANT="
# The console log lives in the tenant's own subvolume, hidden from the tenant by an inaccessible overmount
# (a locked mount in its user namespace): its bytes count against the tenant's disk quota, so a tenant
# that floods its console fills its own quota and never the host's disk. `trim_log` keeps it short.
CONSOLE_LOG = ".fleet-console.log"
LOG_KEEP_BYTES = 64 << 10  # the tail kept when the log is trimmed
LOG_MAX_BYTES = 1 << 20  # trimmed past this
INACCESSIBLE_DIR = Path("/run/systemd/inaccessible")
# Hidden from tenants: the console log, and btrfs's sysfs (every tenant's qgroup usage and limits).
HIDDEN_PATHS = (f"/{CONSOLE_LOG}", "/sys/fs/btrfs")
KSM_RUN = Path("/sys/kernel/mm/ksm/run")
PR_SET_MEMORY_MERGE = 67

def _ensure_inaccessible_nodes() -> None:
    """`--inaccessible=` overmounts with /run/systemd/inaccessible/{reg,dir}, which systemd makes at boot as
    PID 1; on a host where it is not PID 1 (this kind of machine) nobody made them, so make them alike."""
    regular, directory = INACCESSIBLE_DIR / "reg", INACCESSIBLE_DIR / "dir"
    if regular.exists() and directory.exists():
        return
    INACCESSIBLE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(regular, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o000))
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o000)


def ksm_enabled() -> bool:
    try:
        return KSM_RUN.read_text().strip() == "1"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a zombie has exited; it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_container(cmdline: list[str], tenant: str) -> bool:
    """The command line a container of `tenant` has; necessary, never sufficient (a tenant names its own)."""
    return (
        bool(cmdline)
        and os.path.basename(cmdline[0]) == "systemd-nspawn"
        and f"{MARKER}{tenant}" in cmdline
        and f"--machine={tenant}" in cmdline
    )


def _pid_namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        status = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return status.st_dev, status.st_ino


@dataclass(frozen=True)
class Container:
    tenant: str
    pid: int
    uid_base: int | None = None  # the user namespace it runs in; None: none (started by an older Fleet)


class Processes:
    """Containers of tenants: start, find (from /proc), stop. State lives in `state_dir` (pid files, logs)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        nspawn: str | None = None,
        init_path: str = "/fleet/init",
        owner_of: Callable[[int], str | None] | None = None,
        members: Callable[[str], set[int]] | None = None,
        seccomp: bytes = b"",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`owner_of(pid)` names the tenant whose cgroup holds a host pid (`Cgroups.owner_of`); `members(tenant)`
        lists the pids in a tenant's cgroups (`Cgroups.pids`), where its container must be."""
        self.state_dir = state_dir
        self.nspawn = nspawn or shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn"
        self.init_path = init_path
        if owner_of is None or members is None:
            from drivers.nspawn_cgroups import detect

            layout = detect()
            owner_of, members = owner_of or layout.owner_of, members or layout.pids
        self._owner_of = owner_of
        self._members = members
        self._seccomp = seccomp
        self._host_pid_namespace = _pid_namespace("self")
        self._launcher = Launcher()
        self._sleep = sleep

    def _container(self, pid: int, tenant: str, cmdline: list[str] | None = None) -> Container | None:
        """`pid` as tenant's container, if the host says it is one: see the module docstring."""
        cmdline = _cmdline(pid) if cmdline is None else cmdline
        if not _is_container(cmdline, tenant):
            return None
        if _pid_namespace(pid) != self._host_pid_namespace or self._owner_of(pid) != tenant:
            return None
        if not _alive(pid):
            return None
        return Container(tenant, pid, nspawn_userns.base_from_arguments(cmdline))

    def pid_file(self, tenant: str) -> Path:
        return self.state_dir / "run" / f"{validate_name(tenant)}.pid"

    def log_file(self, tenant: str) -> Path:
        """The tail kept when the console log was last trimmed (and where an older Fleet wrote the log)."""
        return self.state_dir / "logs" / f"{validate_name(tenant)}.log"

    def trim_log(self, tenant: str, root: Path, max_bytes: int = LOG_MAX_BYTES) -> bool:
        """Past `max_bytes`, keep the console log's last LOG_KEEP_BYTES in `log_file` and empty it (nspawn
        appends, so it goes on writing at the new end). True when it trimmed."""
        try:
            fd = os.open(root / CONSOLE_LOG, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            status = os.fstat(fd)
            if (status.st_mode & 0o170000) != 0o100000 or status.st_size <= max_bytes:
                return False
            tail = os.pread(fd, LOG_KEEP_BYTES, status.st_size - LOG_KEEP_BYTES)
            self.log_file(tenant).parent.mkdir(parents=True, exist_ok=True)
            self.log_file(tenant).write_bytes(tail)
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        logger.bind(tenant=tenant, bytes=status.st_size).info("Trimmed console log")
        return True

    def find(self, tenant: str) -> Container | None:
        """The tenant's running nspawn process: the pid file's pid if it checks out, else the one among the
        processes in the tenant's cgroups (where it must be) that does."""
        validate_name(tenant)
        with contextlib.suppress(OSError, ValueError):
            container = self._container(int(self.pid_file(tenant).read_text().strip()), tenant)
            if container is not None:
                return container
        for pid in sorted(self._members(tenant)):
            container = self._container(pid, tenant)
            if container is not None:
                return container
        return None

    def running(self) -> dict[str, Container]:
        """Every tenant's container on this host, from one scan of /proc."""
        found: dict[str, Container] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            cmdline = _cmdline(int(entry.name))
            markers = [part.removeprefix(MARKER) for part in cmdline if part.startswith(MARKER)]
            if markers:
                container = self._container(int(entry.name), markers[0], cmdline)
                if container is not None:
                    found[container.tenant] = container
        return found

    def running_tenants(self) -> dict[str, int]:
        return {tenant: container.pid for tenant, container in self.running().items()}

    def command(self, tenant: str, root: Path, uid_base: int) -> list[str]:
        return [
            self.nspawn,
            "--register=no",
            "--keep-unit",
            "-q",
            "-D",
            str(root),
            f"--machine={validate_name(tenant)}",
            f"{MARKER}{tenant}",
            *nspawn_userns.nspawn_arguments(uid_base),
            *(f"--inaccessible={path}" for path in HIDDEN_PATHS),
            "--as-pid2",
            self.init_path,
        ]

    def start(
        self,
        tenant: str,
        *,
        root: Path,
        netns_path: Path,
        uid_base: int,
        procs_files: list[Path],
        tenant_pids: Callable[[], set[int]],
        ksm: bool | None = None,
        deadline_s: float = 10.0,
    ) -> Container:
        """Launch unless already running; returns once the payload runs inside the tenant's cgroups."""
        existing = self.find(tenant)
        if existing is not None:
            return existing
        started = time.perf_counter()
        self.pid_file(tenant).parent.mkdir(parents=True, exist_ok=True)
        _ensure_inaccessible_nodes()
        self.pid_file(tenant).unlink(missing_ok=True)
        procs = [str(path) for path in procs_files]
        launcher_arguments = [
            str(self.pid_file(tenant)),
            str(root / CONSOLE_LOG),
            str(netns_path),
            self._seccomp.hex(),
            "1" if (ksm_enabled() if ksm is None else ksm) else "0",
            str(len(procs)),
            *procs,
            *self.command(tenant, root, uid_base),
        ]
        self._launcher.launch(launcher_arguments, timeout=deadline_s)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            container = self.find(tenant)
            # nspawn has started the payload once the tenant's cgroups hold more than nspawn itself.
            if container is not None and tenant_pids() - {container.pid}:
                ms = round((time.perf_counter() - started) * 1000, 1)
                logger.bind(tenant=tenant, pid=container.pid, ms=ms).info("Started container")
                return container
            if container is None and self._launched_and_gone(tenant):
                break
            self._sleep(0.005)
        tail = self.log_tail(tenant, root)
        raise TransientError(f"container of tenant {tenant} did not start; log tail: {tail!r}")

    def _launched_and_gone(self, tenant: str) -> bool:
        """The launcher wrote its pid file (it was about to exec nspawn) and that process has exited."""
        try:
            pid = int(self.pid_file(tenant).read_text().strip())
        except (OSError, ValueError):
            return False
        return not _alive(pid)

    def log_tail(self, tenant: str, root: Path | None, size: int = 800) -> str:
        """The last `size` bytes the container wrote: the console log, after the tail kept by a trim."""
        text = b""
        for path, flags in ((self.log_file(tenant), 0), *(((root / CONSOLE_LOG, os.O_NOFOLLOW),) if root else ())):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | flags)
            except OSError:
                continue
            try:
                if (os.fstat(fd).st_mode & 0o170000) == 0o100000:
                    length = os.fstat(fd).st_size
                    text += os.pread(fd, size, max(0, length - size))
            finally:
                os.close(fd)
        return text[-size:].decode(errors="replace")

    def stop(self, tenant: str, *, deadline_s: float = 10.0) -> int | None:
        """SIGTERM nspawn, wait, SIGKILL; returns the pid stopped, None if it was not running."""
        container = self.find(tenant)
        if container is None:
            self.pid_file(tenant).unlink(missing_ok=True)
            return None
        started = time.perf_counter()
        for sig, wait_s in ((signal.SIGTERM, deadline_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self._container(container.pid, tenant) is None:
                    self.pid_file(tenant).unlink(missing_ok=True)
                    ms = round((time.perf_counter() - started) * 1000, 1)
                    logger.bind(tenant=tenant, pid=container.pid, signal=sig.name, ms=ms).info("Stopped container")
                    return container.pid
                self._sleep(0.005)
        raise TransientError(f"container of tenant {tenant} (pid {container.pid}) survived SIGKILL")

    @property
    def launcher(self) -> Launcher:
        return self._launcher

    def close(self) -> None:
        """Stop the launcher process (containers it started keep running)."""
        self._launcher.close()

    def remove_files(self, tenant: str) -> list[str]:
        removed = []
        for path in (self.pid_file(tenant), self.log_file(tenant)):
            if path.exists():
                path.unlink()
                removed.append(f"{'log' if path.suffix == '.log' else 'pid file'} {path}")
        return removed

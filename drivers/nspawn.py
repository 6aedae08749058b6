"""The nspawn driver: btrfs clones run under systemd-nspawn with their own cgroups, netns and firewall.

Glue only: storage is `nspawn_pool` / `nspawn_templates`, limits `nspawn_cgroups`, networking
`nspawn_network`, processes `nspawn_process`. Every method reads the host (never a cache), is idempotent,
and finishes or undoes what a crash left half-made. A tenant exists when its subvolume does: inspect says
None otherwise (the planner then re-provisions, adopting any parts left), and delete removes the
subvolume last so a crash mid-delete always leaves something inspect can see.

This module must never touch anything without Fleet's marker, and lets only `specs` errors out.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
from loguru import logger

from drivers import (
    nspawn_cgroups,
    nspawn_exec,
    nspawn_firewall,
    nspawn_network,
    nspawn_process,
    nspawn_seccomp,
    nspawn_usage,
)
from drivers.edge import at_edge
from drivers.exec_process import ExecProcess, ExecRequest
from drivers.nspawn_host import host_problems
from drivers.nspawn_limits import LimitsRecord
from drivers.nspawn_pool import Pool
from drivers.nspawn_templates import (
    build_busybox,
    build_debootstrap,
    ensure_builtin,
    import_rootfs,
    import_tarball,
)
from drivers.template_tree import INIT_PATH
from specs import (
    DeleteReceipt,
    DriverInfo,
    Network,
    NodeCapacity,
    NotFound,
    Observed,
    PermanentError,
    Resources,
    Template,
    TemplateSource,
    TransientError,
    Usage,
    validate_name,
)

_KSM = Path("/sys/kernel/mm/ksm")


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "missing"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


MAX_TENANTS = 2048


class NspawnDriver:
    name = "nspawn"

    def __init__(
        self,
        data_dir: Path,
        pool_path: Path | None = None,
        image_size: int = 20 << 30,
        address_range: str = "10.213.0.0/16",
        node: str = "local",
        egress_interface: str | None = None,
    ) -> None:
        problems = host_problems(pool_path=pool_path)
        if problems:
            raise PermanentError("; ".join(problems), reason="HostUnsupported")
        self.node = node
        self.data_dir = Path(data_dir)
        state_dir = self.data_dir / "state"
        self.pool = Pool.open(self.data_dir, pool_path=pool_path, image_size=image_size)
        self.cgroups = nspawn_cgroups.detect()
        self.networks = nspawn_network.Networks(state_dir, address_range, egress_interface=egress_interface)
        self.limits = LimitsRecord(state_dir)
        self.networks.ensure_range_route()  # after a reboot: sleeping tenants' addresses must not route out
        self.processes = nspawn_process.Processes(
            state_dir,
            init_path=INIT_PATH,
            owner_of=self.cgroups.owner_of,
            members=self.cgroups.pids,
            seccomp=nspawn_seccomp.program(),
        )
        self.io_devices = self.pool.block_devices()
        self._info: DriverInfo | None = None
        self._template_lock = threading.Lock()

    # -- node-level -------------------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        if self._info is None:
            tools = {
                "systemd-nspawn": _version(["systemd-nspawn", "--version"]),
                "nft": _version(["nft", "--version"]),
                "btrfs": _version(["btrfs", "--version"]),
                "kernel": os.uname().release,
            }
            capabilities = [
                f"cgroup-v{self.cgroups.version}", "netns", "nftables", "egress", "btrfs-snapshots", "userns", "seccomp"
            ]
            if self.pool.quota_mode == "squota":
                capabilities.append("nested-subvolume-quota")
            if nspawn_process.ksm_enabled():
                capabilities.append("ksm")
            self._info = DriverInfo(
                name=self.name,
                version=tools["systemd-nspawn"],
                capabilities=tuple(capabilities),
                tools=tools,
                storage=f"pool {self.pool.root}",
            )
        return self._info

    def capacity(self) -> NodeCapacity:
        # Tenant slots: what bounds the running ones is memory and CPU (the scheduler's allocatable), and a
        # sleeping tenant holds neither, so the slots are many (1,000 on one node measured: benchmarks.md,
        # "Sleep and wake"); `--max-tenants` lowers them.
        disk, _available = self.pool.space()
        return NodeCapacity(
            cpu_millicores=(psutil.cpu_count() or 1) * 1000,
            memory_bytes=psutil.virtual_memory().total,
            disk_bytes=disk,
            max_tenants=min(MAX_TENANTS, self.networks.leases.subnets),
            ksm_pages_shared=_read_int(_KSM / "pages_shared"),
            ksm_pages_sharing=_read_int(_KSM / "pages_sharing"),
            disk_shared_bytes=self.pool.disk_shared(),
        )

    # -- observation ------------------------------------------------------------------------------------
    def _observe(
        self,
        tenant: str,
        firewall: nspawn_firewall.FirewallState,
        running: dict[str, nspawn_process.Container] | None,
    ) -> Observed | None:
        if not self.pool.tenant_exists(tenant):
            return None
        problems: list[str] = []
        container = self.processes.find(tenant) if running is None else running.get(tenant)
        pid = container.pid if container else None
        if container is None:
            # Stopped: its cgroups, namespace and veth were given back at the stop (`stop`); what it has is
            # the limits record and its network's lease and firewall elements, which the next start uses.
            recorded = self.limits.load(tenant)
            if recorded is None:
                # No spec asks for 0 CPU, so the planner applies the limits again (which writes the record);
                # until then `start` refuses: a tenant never runs without its limits.
                problems.append("limits record missing")
                recorded = Resources.model_construct(cpu=0)
            kernel = recorded
            # A stop cut off half way leaves them until the next start or delete (which finish it). Not acted
            # on: a Stop planned from this could kill a container another process is starting by hand.
            if self.cgroups.exists(tenant) or nspawn_network.netns_path(tenant).exists():
                problems.append("stopped, but its cgroups or network namespace are still there")
        elif self.cgroups.exists(tenant):
            kernel = self.cgroups.read(tenant, self.io_devices)
            problems += self.cgroups.problems(tenant)
            oom_kills = self.cgroups.oom_kills(tenant)
            if oom_kills:
                problems.append(f"{oom_kills} process(es) killed at the memory limit")
        else:
            kernel = Resources()
            problems.append("cgroups missing")
        resources = Resources.model_construct(
            cpu=kernel.cpu, memory=kernel.memory, disk=self.pool.disk_limit(tenant), pids=kernel.pids, io=kernel.io
        )
        network = self.networks.observe(tenant, firewall, parked=container is None)
        problems += network.problems
        self._trim_log(tenant)
        restart_reason = None
        if container is not None and container.uid_base is None:
            restart_reason = "runs without a user namespace (started by an older Fleet)"
        elif container is not None and container.uid_base != self.pool.recorded_uid_base(tenant):
            restart_reason = f"runs in user namespace {container.uid_base}, not the tenant's recorded range"
        if restart_reason:
            problems.append(restart_reason)
        return Observed(
            name=tenant,
            template=self.pool.template_of(tenant),
            resources=resources,
            network=Network(ingress=network.ports, egress=network.egress) if network.ready else Network(),
            running=pid is not None,
            address=network.address if network.ready else None,
            pid=pid,
            problems=tuple(problems),
            restart_reason=restart_reason,
        )

    def _trim_log(self, tenant: str) -> None:
        try:
            self.processes.trim_log(tenant, self.pool.tenant_path(tenant))
        except OSError as error:
            if error.errno != errno.EDQUOT:
                raise
            with self.pool.limit_lifted(tenant):  # the flood filled the tenant's quota: trimming needs room
                self.processes.trim_log(tenant, self.pool.tenant_path(tenant))

    @at_edge
    def list(self) -> builtins.list[Observed]:
        firewall = self.networks.firewall.read()
        running = self.processes.running()
        found = (self._observe(name, firewall, running) for name in self.pool.list_tenants())
        return [observed for observed in found if observed is not None]

    @at_edge
    def inspect(self, tenant: str) -> Observed | None:
        validate_name(tenant)
        if not self.pool.tenant_exists(tenant):
            return None  # a signup's first pass: no firewall table to read (it grows with the tenants)
        return self._observe(tenant, self.networks.firewall.read(), None)

    @at_edge
    def usage(self, tenants: Sequence[str] | None = None) -> builtins.list[Usage]:
        """Read by `nspawn_usage` from the tenants' cgroups, qgroups and veths: nothing is cached."""
        names = self.pool.list_tenants() if tenants is None else [t for t in tenants if self.pool.tenant_exists(t)]
        running = self.processes.running()
        return [
            nspawn_usage.tenant_usage(
                name,
                cgroup_root=self.cgroups.root,
                cgroup_version=self.cgroups.version,
                disk_bytes=nspawn_usage.disk_bytes_or_zero(self.pool.disk_usage, name),
                running=name in running,
            )
            for name in names
        ]

    # -- provisioning -----------------------------------------------------------------------------------
    @at_edge
    def ensure_template(self, template: Template) -> None:
        if self.pool.has_template(template.ref):
            return
        # Workers cloning the first tenants all find the template missing at once; two builds of one
        # template would throw away each other's half-made tree.
        with self._template_lock:
            if self.pool.has_template(template.ref):
                return
            ensure_builtin(self.pool, template)
        if not self.pool.has_template(template.ref):
            raise PermanentError(
                f"template {template.ref} is not on node {self.node}; import a rootfs or tarball for it",
                reason="TemplateMissing",
            )

    @at_edge
    def make_template(
        self, template: Template, source: TemplateSource, progress: Callable[[str], None] = lambda line: None
    ) -> bool:
        if source.kind == "rootfs" and source.path is not None:
            return import_rootfs(self.pool, template, source.path)
        if source.kind == "tarball" and source.path is not None:
            return import_tarball(self.pool, template, source.path)
        if source.kind == "busybox":
            return build_busybox(self.pool, template, progress)
        if source.kind == "debootstrap" and source.suite is not None:
            return build_debootstrap(self.pool, template, source.suite, progress)
        raise PermanentError(f"cannot make a template from {source.describe()}", reason="BadTemplate")

    @at_edge
    def clone(self, tenant: str, template: Template, *, generation: int | None = None) -> None:
        # `generation` is not recorded: an nspawn tenant's subvolume carries no metadata of Fleet's.
        validate_name(tenant)
        if not self.pool.tenant_exists(tenant) and self.processes.find(tenant) is not None:
            # A container still running on a subvolume deleted behind our back: it must not outlive it.
            self.processes.stop(tenant)
        started = time.perf_counter()
        self.pool.clone(tenant, template.ref, disk_limit=template.resources.disk)
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, template=template.ref, node=self.node, ms=ms).info("Cloned tenant")

    def _require(self, tenant: str) -> None:
        validate_name(tenant)
        if not self.pool.tenant_exists(tenant):
            raise NotFound(f"tenant {tenant} has no container on node {self.node}")

    @at_edge
    def apply_resources(self, tenant: str, resources: Resources, *, generation: int | None = None) -> None:
        """Change limits in place: the container keeps running (cgroup files and qgroup limits are live). A
        stopped tenant has no cgroups: its record is what its next start applies."""
        self._require(tenant)
        self.limits.save(tenant, resources)
        if self.cgroups.exists(tenant):
            self.cgroups.apply(tenant, resources, self.io_devices)
        self.pool.set_disk_limit(tenant, resources.disk)
        logger.bind(tenant=tenant, node=self.node, **resources.display()).info("Applied resources")

    @at_edge
    def apply_network(self, tenant: str, network: Network) -> None:
        self._require(tenant)
        # A stopped tenant's network is its lease and firewall elements: its start makes the veth from them.
        connect = self.processes.find(tenant) is not None
        self.networks.ensure(tenant, network.ingress or (), network.egress or (), connect=connect)

    @at_edge
    def start(self, tenant: str) -> None:
        began = time.perf_counter()
        self._require(tenant)
        if self.processes.find(tenant) is not None:
            return
        limits = self.limits.load(tenant)
        if limits is None:  # never run without limits: the planner applies them before a start
            raise TransientError(f"tenant {tenant} has no limits recorded yet; the next pass applies them first")
        # A tenant cloned by an older Fleet gets its range and its level-1 qgroup here, before it runs in them.
        uid_base = self.pool.uid_base(tenant)
        self.pool.ensure_group(tenant)
        self.cgroups.create(tenant)
        # Leftovers of a container that died (payload children) would be charged with the new one.
        self.cgroups.kill(tenant)
        self.cgroups.apply(tenant, limits, self.io_devices)
        # A woken tenant's namespace and veth again, from the lease and firewall elements it kept, so it is
        # filtered from its first packet. A new tenant gets the namespace alone, nothing that can carry a
        # packet: the planner applies its network after the start, while nspawn boots (~100 ms). (Connecting
        # a woken one during the boot instead saved nothing measurable: the two compete for the same CPUs.)
        self.networks.connect_parked(tenant)
        prepared_ms = round((time.perf_counter() - began) * 1000, 1)
        logger.bind(tenant=tenant, node=self.node, ms=prepared_ms).debug("Prepared start")
        self.processes.start(
            tenant,
            root=self.pool.tenant_path(tenant),
            netns_path=nspawn_network.netns_path(tenant),
            uid_base=uid_base,
            procs_files=self.cgroups.procs_files(tenant),
            tenant_pids=lambda: self.cgroups.pids(tenant),
        )

    @at_edge
    def stop(self, tenant: str) -> None:
        """Stop the container and give its kernel objects back: cgroups, network namespace and veth (a sleeping
        tenant costs the host next to nothing: docs/benchmarks.md). Its limits record, address lease and
        firewall elements stay, and `start` makes the rest again from them."""
        validate_name(tenant)
        self.processes.stop(tenant)
        if self.cgroups.exists(tenant):
            if self.limits.load(tenant) is None and self.pool.tenant_exists(tenant):
                self.limits.save(tenant, self.cgroups.read(tenant, self.io_devices))  # limits set by an older Fleet
            self.cgroups.kill(tenant)
            self.cgroups.release_memory(tenant)  # no page cache stays charged to a cgroup about to go
            self.cgroups.remove(tenant)
        self.networks.park(tenant)

    @at_edge
    def exec(self, tenant: str, request: ExecRequest) -> ExecProcess:
        """Run a command in the running container as its payload runs (`nspawn_exec`)."""
        validate_name(tenant)
        container = self.processes.find(tenant)
        if container is None:
            raise PermanentError(f"tenant {tenant} has no running container on node {self.node}", reason="NotRunning")
        return nspawn_exec.spawn(
            tenant, request, nspawn_pid=container.pid, members=lambda: self.cgroups.pids(tenant),
            tenant_dirs=[path.parent for path in self.cgroups.procs_files(tenant)],
        )

    @at_edge
    def delete(self, tenant: str) -> DeleteReceipt:
        validate_name(tenant)
        started = time.perf_counter()
        removed: list[str] = []
        absent: list[str] = []
        pid = self.processes.stop(tenant)
        if pid is None:
            absent.append("process")
        else:
            removed.append(f"process {pid}")
        removed += self.cgroups.remove(tenant)
        network = self.networks.remove(tenant)
        removed += network
        if not network:
            absent.append("network")
        removed += self.processes.remove_files(tenant)
        removed += self.limits.remove(tenant)
        # The subvolume goes last: while it exists, inspect sees the tenant and the next pass finishes.
        try:
            storage = self.pool.delete_tenant(tenant)
        except NotFound:
            storage = []
        removed += storage
        if not storage:
            absent.append("subvolume")
        leftovers = self._leftovers(tenant)
        if leftovers:
            raise TransientError(f"tenant {tenant} still has parts after delete: {', '.join(leftovers)}")
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, node=self.node, removed=len(removed), ms=ms).info("Deleted tenant")
        return DeleteReceipt(tenant=tenant, removed=tuple(removed), already_absent=tuple(absent))

    def _leftovers(self, tenant: str) -> builtins.list[str]:
        found = []
        if self.pool.tenant_exists(tenant):
            found.append("subvolume")
        if self.processes.find(tenant) is not None:
            found.append("process")
        if self.cgroups.exists(tenant):
            found.append("cgroups")
        state = self.networks.observe(tenant)
        if state.netns or state.veth or state.ports is not None:
            found.append("network")
        if self.networks.leases.get(tenant) is not None:
            found.append("address lease")
        if self.limits.path(tenant).exists():
            found.append("limits record")
        return found

    def close(self) -> None:
        """Containers keep running: closing the driver (or the operator exiting) never stops a tenant."""
        self.processes.close()
        self.pool.close()

    # -- for tests and operators --------------------------------------------------------------------------
    def log_tail(self, tenant: str) -> str:
        validate_name(tenant)
        root = self.pool.tenant_path(tenant) if self.pool.tenant_exists(tenant) else None
        return self.processes.log_tail(tenant, root)

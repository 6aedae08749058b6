"""An in-memory driver: deterministic, with injectable latency and faults.

It models the real drivers' steps (a clone is snapshot -> quota -> rename; a delete is stop -> network ->
subvolume -> lease) so that a crash injected after any step leaves the same kind of half-made state a
real host would, and tests can prove the next pass converges. It is the host for unit, property and
simulation tests; integration tests use the real drivers.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.exec_process import ExecProcess, ExecRequest
from drivers.fake_exec import FakeExec
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
)
from specs.errors import FleetError
from specs.tenant import EgressRule

TEMPLATE_BYTES = 64 << 20  # the size the fake gives every template, for the copy-on-write sharing it reports
STEPS: dict[str, tuple[str, ...]] = {
    "clone": ("snapshot", "quota", "rename"),
    "apply_resources": ("cpu", "memory", "pids", "disk", "io"),
    "apply_network": ("veth", "address", "firewall"),
    "start": ("spawn",),
    "stop": ("signal",),
    "delete": ("stop", "network", "subvolume", "lease"),
}


class Crash(BaseException):
    """A simulated kill -9: not an Exception, so nothing on the way up handles it as an error."""


@dataclass
class Faults:
    """Which calls fail and where the process "dies". Counts are per method, starting at 1."""

    failures: dict[tuple[str, int], FleetError] = field(default_factory=dict)
    crashes: set[tuple[str, str]] = field(default_factory=set)

    def fail(self, method: str, nth: int, error: FleetError | None = None) -> Faults:
        self.failures[(method, nth)] = error or TransientError(f"injected failure of {method} call {nth}")
        return self

    def crash_after(self, method: str, step: str) -> Faults:
        if step not in STEPS.get(method, ()):
            raise ValueError(f"{method} has no step {step!r}; steps: {STEPS.get(method)}")
        self.crashes.add((method, step))
        return self

    def clear(self) -> None:
        self.failures.clear()
        self.crashes.clear()


@dataclass
class _Container:
    template: str
    resources: Resources = field(default_factory=Resources)
    ports: tuple[int, ...] | None = None
    egress: tuple[EgressRule, ...] | None = None  # as applied (the real drivers' nftables rules)
    veth: bool = False
    address: str | None = None
    firewall: bool = False
    pid: int | None = None
    usage: Usage | None = None  # what `set_usage` said it uses; zeros until then


class FakeDriver:
    name = "fake"

    def __init__(
        self,
        *,
        latency: float = 0.0,
        faults: Faults | None = None,
        node: str = "local",
        max_tenants: int = 100_000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.latency = latency
        self.faults = faults or Faults()
        self.node = node
        self.max_tenants = max_tenants
        self._sleep = sleep
        self._lock = threading.RLock()
        self.containers: dict[str, _Container] = {}
        self.half_made: dict[str, _Container] = {}  # clones under their temporary name
        self.templates: dict[str, Template] = {}
        self.leases: dict[str, str] = {}  # address -> tenant
        self._lease_of: dict[str, str] = {}  # tenant -> address
        self.calls: Counter[str] = Counter()
        self.completed_clones: Counter[str] = Counter()
        self._next_pid = 1000
        self.execs: list[tuple[str, ExecRequest]] = []  # every exec asked for, in order

    # -- plumbing --------------------------------------------------------------------------------
    def _enter(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
            error = self.faults.failures.pop((method, self.calls[method]), None)
        if self.latency:
            self._sleep(self.latency)
        if error is not None:
            raise error

    def _step(self, method: str, step: str) -> None:
        if (method, step) in self.faults.crashes:
            self.faults.crashes.discard((method, step))
            raise Crash(f"crashed after {method}/{step}")

    def _lease(self, tenant: str) -> str:
        existing = self._lease_of.get(tenant)
        if existing is not None:
            return existing
        index = len(self.leases)
        while True:
            offset = index * 4  # one /30 a tenant, as the real driver leases them
            address = f"10.{240 + (offset >> 16)}.{(offset >> 8) & 255}.{(offset & 255) + 2}"
            if address not in self.leases:
                self.leases[address] = tenant
                self._lease_of[tenant] = address
                return address
            index += 1

    def _release(self, tenant: str) -> str | None:
        address = self._lease_of.pop(tenant, None)
        if address is not None:
            self.leases.pop(address, None)
        return address

    def _observe(self, tenant: str, container: _Container) -> Observed:
        problems = []
        if container.address and not container.veth:
            problems.append("veth missing")
        network_ok = container.veth and container.firewall and container.address is not None
        return Observed(
            name=tenant,
            template=container.template,
            resources=container.resources,
            network=Network(ingress=container.ports, egress=container.egress) if network_ok else Network(),
            running=container.pid is not None,
            address=container.address if network_ok else None,
            pid=container.pid,
            problems=tuple(problems),
        )

    def _get(self, tenant: str) -> _Container:
        container = self.containers.get(tenant)
        if container is None:
            raise NotFound(f"tenant {tenant} has no container on node {self.node}")
        return container

    # -- the Driver protocol -----------------------------------------------------------------------
    def info(self) -> DriverInfo:
        return DriverInfo(name=self.name, version="1", capabilities=("faults", "latency"))

    def capacity(self) -> NodeCapacity:
        # A simulated large node: room for the 10,000-tenant simulation at the default overcommit. Every
        # simulated template is TEMPLATE_BYTES, shared by each tenant cloned from it (as nspawn counts it).
        with self._lock:
            clones = len(self.containers)
        return NodeCapacity(
            cpu_millicores=1_024_000, memory_bytes=1 << 40, disk_bytes=16 << 40, max_tenants=self.max_tenants,
            disk_shared_bytes=clones * TEMPLATE_BYTES,
        )

    def list(self) -> list[Observed]:
        self._enter("list")
        with self._lock:
            return [self._observe(name, c) for name, c in sorted(self.containers.items())]

    def inspect(self, tenant: str) -> Observed | None:
        self._enter("inspect")
        with self._lock:
            container = self.containers.get(tenant)
            return self._observe(tenant, container) if container else None

    def usage(self, tenants: Sequence[str] | None = None) -> builtins.list[Usage]:
        self._enter("usage")
        with self._lock:
            names = sorted(self.containers) if tenants is None else [t for t in tenants if t in self.containers]
            return [self._usage(name, self.containers[name]) for name in names]

    @staticmethod
    def _usage(tenant: str, container: _Container) -> Usage:
        running = container.pid is not None
        said = container.usage
        if said is None:
            return Usage.model_construct(tenant=tenant, running=running)
        # Frozen, so the same object serves every read until it changes (the 10,000-tenant benchmark reads all).
        return said if said.running == running else said.model_copy(update={"running": running})

    def ensure_template(self, template: Template) -> None:
        self._enter("ensure_template")
        with self._lock:
            self.templates[template.ref] = template

    def make_template(
        self, template: Template, source: TemplateSource, progress: Callable[[str], None] = lambda line: None
    ) -> bool:
        """Nothing is built in memory, but the source must be there, as the real drivers need it."""
        self._enter("make_template")
        if source.path is not None and not (source.path.is_dir() if source.kind == "rootfs" else source.path.is_file()):
            raise PermanentError(f"{source.describe()} does not exist", reason="BadTemplate")
        with self._lock:
            if template.ref in self.templates:
                return False
            progress(f"template {template.ref} from {source.describe()}")
            self.templates[template.ref] = template
            return True

    def clone(self, tenant: str, template: Template, *, generation: int | None = None) -> None:
        # `generation` is not recorded: like nspawn, the simulated host keeps no metadata of Fleet's.
        self._enter("clone")
        with self._lock:
            if tenant in self.containers:
                return
            if template.ref not in self.templates:
                raise PermanentError(f"template {template.ref} is not on node {self.node}", reason="TemplateMissing")
            # A clone left half-made by a crash is thrown away, never adopted.
            self.half_made.pop(tenant, None)
            self.half_made[tenant] = _Container(template=template.ref)
        self._step("clone", "snapshot")
        with self._lock:
            self.half_made[tenant].resources = Resources(disk=template.resources.disk)
        self._step("clone", "quota")
        with self._lock:
            self.containers[tenant] = self.half_made.pop(tenant)
            self.completed_clones[tenant] += 1
        self._step("clone", "rename")

    def apply_resources(self, tenant: str, resources: Resources, *, generation: int | None = None) -> None:
        self._enter("apply_resources")
        for step in STEPS["apply_resources"]:
            with self._lock:
                container = self._get(tenant)
                container.resources = container.resources.model_copy(update={step: getattr(resources, step)})
            self._step("apply_resources", step)

    def apply_network(self, tenant: str, network: Network) -> None:
        self._enter("apply_network")
        with self._lock:
            self._get(tenant).veth = True
        self._step("apply_network", "veth")
        with self._lock:
            self._get(tenant).address = self._lease(tenant)
        self._step("apply_network", "address")
        with self._lock:
            container = self._get(tenant)
            container.ports = network.ingress
            container.egress = network.egress
            container.firewall = True
        self._step("apply_network", "firewall")

    def start(self, tenant: str) -> None:
        self._enter("start")
        with self._lock:
            container = self._get(tenant)
            if container.pid is None:
                self._next_pid += 1
                container.pid = self._next_pid
        self._step("start", "spawn")

    def stop(self, tenant: str) -> None:
        self._enter("stop")
        with self._lock:
            container = self.containers.get(tenant)
            if container is not None:
                container.pid = None
        self._step("stop", "signal")

    def exec(self, tenant: str, request: ExecRequest) -> ExecProcess:
        """Answers a few commands in memory (`fake_exec`); the container must be running."""
        self._enter("exec")
        with self._lock:
            container = self.containers.get(tenant)
            if container is None or container.pid is None:
                raise PermanentError(f"tenant {tenant} has no running container on node {self.node}",
                                     reason="NotRunning")
            self.execs.append((tenant, request))
        return FakeExec(request)

    def delete(self, tenant: str) -> DeleteReceipt:
        self._enter("delete")
        removed: list[str] = []
        absent: list[str] = []
        with self._lock:
            container = self.containers.get(tenant)
            if container is not None and container.pid is not None:
                container.pid = None
                removed.append("process")
        self._step("delete", "stop")
        with self._lock:
            if container is not None and container.veth:
                container.veth = container.firewall = False
                removed.extend(["veth", "firewall rules"])
        self._step("delete", "network")
        with self._lock:
            if self.containers.pop(tenant, None) is not None:
                removed.append("subvolume")
            else:
                absent.append("subvolume")
            if self.half_made.pop(tenant, None) is not None:
                removed.append("half-made clone")
        self._step("delete", "subvolume")
        with self._lock:
            address = self._release(tenant)
            if address is not None:
                removed.append(f"address {address}")
            if tenant in self.containers or tenant in self.half_made or tenant in self._lease_of:
                raise TransientError(f"tenant {tenant} still has parts after delete")
        self._step("delete", "lease")
        return DeleteReceipt(tenant=tenant, removed=tuple(removed), already_absent=tuple(absent))

    def close(self) -> None:
        return None

    # -- drift, as an operator with a root shell would make it (tests only) -----------------------
    def remove_behind_back(self, tenant: str) -> None:
        with self._lock:
            self.containers.pop(tenant, None)
            self._release(tenant)

    def change_resources_behind_back(self, tenant: str, resources: Resources) -> None:
        with self._lock:
            self._get(tenant).resources = resources

    def set_usage(self, tenant: str, **usage: float) -> None:
        """What the tenant's container is said to use from now on (cpu_seconds, memory_bytes, ...)."""
        with self._lock:
            container = self._get(tenant)
            container.usage = Usage(tenant=tenant, running=container.pid is not None, **usage)

    def kill_behind_back(self, tenant: str) -> None:
        with self._lock:
            self._get(tenant).pid = None

    def leftovers(self) -> builtins.list[str]:
        """Anything half-made or owned by no container: what a converged host must not have."""
        with self._lock:
            found = [f"half-made clone {name}" for name in self.half_made]
            found += [f"lease {a} of {t}" for a, t in self.leases.items() if t not in self.containers]
            return found

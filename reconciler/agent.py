"""The node agent: one per node of a fleet. Registers the node, keeps its heartbeat lease, and runs the
controller for the tenants bound to this node only.

Why it exists: on a fleet the scheduler binds and agents reconcile. The heartbeat lease is also the
agent's claim on its node name: a second agent for the same node is refused while the first is alive, so
two agents never act on the same tenant. What it must never do: bind a tenant (the scheduler does), touch
a tenant bound to another node, or reschedule anything.
"""

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

from loguru import logger

from drivers import Driver
from reconciler.controller import Controller, ControllerConfig
from reconciler.metrics import Metrics
from specs import FleetError, NodeCapacity, PermanentError, TransientError
from state import Store
from state.nodes import Allocatable, NodeRegistration, NodeStore


def agent_identity(node: str) -> str:
    """Unique per process: host, pid and a random suffix, so a restarted agent is a new holder."""
    return f"{node}/{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class AgentConfig:
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    lease_seconds: float = 10.0
    # A tenant's resources are ceilings (quotas), not reservations: hundreds of mostly idle tenants share a
    # node's cores, memory (KSM merges their identical pages) and thinly provisioned disk.
    cpu_overcommit: float = 100.0
    memory_overcommit: float = 4.0
    disk_overcommit: float = 20.0
    max_tenants: int | None = None
    workers: int = 4
    resync_seconds: float = 30.0
    poll_seconds: float = 0.5  # PostgreSQL's NOTIFY wakes the feed sooner
    base_domain: str = "fleet.localhost"
    url_scheme: str = "http"  # and public_port: how customers reach the gateway, for status.url
    public_port: int | None = None
    template_refresh_beats: int = 5  # look for new templates every this many heartbeats


def allocatable(capacity: NodeCapacity, config: AgentConfig) -> Allocatable:
    slots = capacity.max_tenants if config.max_tenants is None else min(capacity.max_tenants, config.max_tenants)
    return Allocatable(
        cpu_millicores=int(capacity.cpu_millicores * config.cpu_overcommit),
        memory_bytes=int(capacity.memory_bytes * config.memory_overcommit),
        disk_bytes=int(capacity.disk_bytes * config.disk_overcommit),
        tenants=slots,
    )


class Agent:
    def __init__(
        self,
        store: Store,
        driver: Driver,
        config: AgentConfig,
        identity: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.driver = driver
        self.config = config
        self.identity = identity or agent_identity(config.node)
        self.nodes = NodeStore(store)
        self.controller = Controller(
            store,
            driver,
            ControllerConfig(
                node=config.node,
                workers=config.workers,
                resync_seconds=config.resync_seconds,
                poll_seconds=config.poll_seconds,
                base_domain=config.base_domain,
                url_scheme=config.url_scheme,
                public_port=config.public_port,
                self_bind=False,
            ),
            metrics=metrics,
        )
        self.templates: set[str] = set()
        self.missing_templates: dict[str, str] = {}  # ref -> why the driver could not make it here
        self.lost = threading.Event()  # set when another agent took this node's lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0
        self._log = logger.bind(node=config.node)

    def ensure_templates(self) -> set[str]:
        """Make every template of the store present on this node; return the refs it holds. A template the
        driver cannot make here (no image for it on this node, a failing build) is left out, not fatal:
        the node still registers and reports the ones it has, the scheduler keeps tenants needing the
        missing one off this node (their Scheduled condition says "template ... not present"), and the
        next template refresh tries again."""
        for template in self.store.list_templates():
            if template.ref in self.templates:
                continue
            try:
                self.driver.ensure_template(template)
            except FleetError as error:
                if self.missing_templates.get(template.ref) != str(error):
                    self._log.bind(template=template.ref, reason=error.reason).warning(
                        "Could not ensure template; tenants needing it will not be scheduled here: {}", error
                    )
                self.missing_templates[template.ref] = str(error)
                continue
            self.missing_templates.pop(template.ref, None)
            self.templates.add(template.ref)
            self._log.bind(template=template.ref).info("Ensured template")
        return set(self.templates)

    def register(self) -> None:
        capacity = self.driver.capacity()
        registration = NodeRegistration(
            name=self.config.node,
            labels=self.config.labels,
            driver=self.driver.info(),
            capacity=capacity,
            allocatable=allocatable(capacity, self.config),
            templates=tuple(sorted(self.ensure_templates())),
        )
        if not self.nodes.register(registration, self.identity, self.config.lease_seconds) and not (
            self._take_over_from_dead_agent()
            and self.nodes.register(registration, self.identity, self.config.lease_seconds)
        ):
            lease = self.nodes.lease(f"node/{self.config.node}")
            holder = lease.holder if lease else "another agent"
            raise PermanentError(
                f"node {self.config.node} is held by a live agent ({holder}); stop it, or wait "
                f"{self.config.lease_seconds:.0f}s for its lease to expire",
                reason="NodeHeld",
            )
        self._log.bind(
            cpu=registration.allocatable.cpu_millicores,
            memory=registration.allocatable.memory_bytes,
            slots=registration.allocatable.tenants,
            driver=registration.driver.name,
        ).info("Registered node")

    def _take_over_from_dead_agent(self) -> bool:
        """A holder on this host whose process is gone (kill -9, a crash) cannot renew: take its lease now
        rather than wait for it to expire, so a restarted agent (or `fleet up`) works at once."""
        lease = self.nodes.lease(f"node/{self.config.node}")
        if lease is None:
            return False
        parts = lease.holder.split("/")
        if len(parts) < 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
            return False
        pid = int(parts[2])
        if pid == os.getpid() or _pid_alive(pid):
            return False
        taken = self.nodes.take_over_lease(
            f"node/{self.config.node}", lease.holder, self.identity, self.config.lease_seconds
        )
        if taken:
            self._log.bind(previous=lease.holder).warning("Took over the lease of a dead agent on this host")
        return taken

    def heartbeat(self) -> None:
        """Renew the lease; after a NotReady spell, look at every tenant again so Ready comes back."""
        self._beats += 1
        templates = None
        capacity = None
        if self._beats % self.config.template_refresh_beats == 0:
            templates = sorted(self.ensure_templates())
            capacity = self.driver.capacity()
        ours, was_not_ready = self.nodes.heartbeat(
            self.config.node, self.identity, self.config.lease_seconds, templates=templates, capacity=capacity
        )
        if not ours:
            self._log.error("Lost this node's lease to another agent; stopping work")
            self.lost.set()
            self.controller.stop(timeout=1)
            return
        if was_not_ready:
            self.requeue_all()

    def take(self, tenant: str, node: str) -> None:
        """A tenant was just bound (by a scheduler in this process): reconcile it now if it is this node's."""
        if node == self.config.node:
            self.controller.queue.add(tenant)

    def requeue_all(self) -> int:
        names = self.nodes.tenants_on(self.config.node)
        for name in names:
            self.controller.queue.add(name)
        self._log.bind(tenants=len(names)).info("Node is Ready again; re-checking its tenants")
        return len(names)

    def _heartbeat_loop(self) -> None:
        interval = self.config.lease_seconds / 3
        while not self._stop.wait(interval) and not self.lost.is_set():
            try:
                self.heartbeat()
            except (TransientError, FleetError) as error:
                self._log.warning("Heartbeat failed, will retry: {}", error)
            except Exception as error:  # keep beating: a dead heartbeat marks every tenant Unknown
                self._log.exception("Heartbeat raised an unexpected error: {}", error)

    def start(self) -> None:
        self.register()
        self.controller.start()
        self._thread = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.controller.stop()
        if self._thread is not None:
            self._thread.join(5)
        if not self.lost.is_set():
            try:
                self.nodes.release_lease(f"node/{self.config.node}", self.identity)
            except FleetError as error:
                self._log.warning("Could not release the node lease: {}", error)


__all__ = ["Agent", "AgentConfig", "agent_identity", "allocatable"]


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True

"""The LXD driver: each tenant is an unprivileged LXD container, driven through LXD's REST API.

Glue only: requests and error mapping are `lxd_api`, limits `lxd_config`, templates `lxd_images`, the
bridge, addresses and ingress ACL `lxd_network`, host checks and the storage pool `lxd_host`. A tenant is
an instance marked `user.fleet.managed=true` and `user.fleet.role=tenant`; anything else (instances
without the marker, Fleet's template instances) is never listed and never touched; the spec generation
Fleet last wrote is `user.fleet.generation`. Every method reads LXD and the host (a running tenant's init
and addresses from /proc, cheaper than LXD's instance state), never a cache of a tenant (only the fact
that a template is committed is remembered), and is idempotent: LXD finishes an operation it started
even when Fleet is killed half-way, and the next pass finishes what is left. Delete removes the instance
last, so a crash mid-delete leaves something inspect sees. Containers stay unprivileged, each with an id
map of its own (`security.idmap.isolated`), and run `/fleet/init` as their init, as nspawn tenants run it
as their payload.

This module lets only `specs` errors out (LXD's are mapped in `lxd_api`, the host's here).
"""

from __future__ import annotations

import builtins
import copy
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from loguru import logger

from drivers import lxd_exec, lxd_images
from drivers.edge import at_edge
from drivers.exec_process import ExecProcess, ExecRequest
from drivers.lxd_api import Instance, LxdClient
from drivers.lxd_config import (
    GENERATION,
    MARKER,
    NIC_DEVICE,
    ROLE,
    ROOT_DEVICE,
    TEMPLATE,
    TENANT,
    resource_config,
    root_device,
)
from drivers.lxd_egress import Guard, acl_rules
from drivers.lxd_host import DEFAULT_NETWORK, DEFAULT_POOL, ensure_storage_pool, host_problems, pool_space
from drivers.lxd_network import AclView, Bridge, IngressRule, Inside, configure_inside, look_inside
from drivers.lxd_observe import observe, usage_of
from drivers.nspawn_egress import checked_rules
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
from specs.errors import FleetError
from specs.tenant import egress_summary

TENANT_CONFIG = {
    "raw.lxc": "lxc.init.cmd = /fleet/init",  # Fleet's template contract: /fleet/init is the service
    "security.privileged": "false",
    "security.idmap.isolated": "true",  # a host uid range of its own, disjoint from every other tenant's
    "security.nesting": "false",
}


class LxdDriver:
    name = "lxd"

    def __init__(
        self,
        socket: Path | None = None,
        storage_pool: str = DEFAULT_POOL,
        network: str = DEFAULT_NETWORK,
        pool_size: int = 20 << 30,
        address_range: str = "10.214.0.0/16",
        node: str = "local",
    ) -> None:
        problems = host_problems(socket=socket, storage_pool=storage_pool)
        if problems:
            raise PermanentError("; ".join(problems), reason="HostUnsupported")
        self.node = node
        self.client = LxdClient(socket)
        self.storage_pool = storage_pool
        ensure_storage_pool(self.client, storage_pool, pool_size)
        # The bridge is made when the first tenant needs it, not here: `fleet template import` opens a driver
        # too, and must not claim an address range for a bridge nobody asked for yet.
        self.bridge = Bridge(self.client, network, address_range)
        self.guard = Guard.of(network, address_range)  # egress: see lxd_egress (made when first needed)
        self._bridge_checked = False
        self._template_lock = threading.Lock()
        # Template refs this process has seen committed: asking LXD before every clone costs ~10 ms, and a
        # clone from a template deleted behind Fleet's back fails, forgets it here and asks again.
        self._templates_seen: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fleet-lxd")
        # Ingress rules `clone` is writing in the background, per tenant: `apply_network` and `delete` wait
        # for them first, so the template's default rule never lands after (over) the tenant's own.
        self._pending_rules: dict[str, Future[None]] = {}
        self._rules_lock = threading.Lock()
        self._info: DriverInfo | None = None

    # -- node-level -------------------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        if self._info is None:
            environment = self.client.server().get("environment") or {}
            tools = {
                "lxd": str(environment.get("server_version", "unknown")),
                "lxc": str(environment.get("driver_version", "unknown")),
                "storage": f"{environment.get('storage', '')} {environment.get('storage_version', '')}".strip(),
                "firewall": str(environment.get("firewall", "")),
                "kernel": str(environment.get("kernel_version", "")),
            }
            self._info = DriverInfo(
                name=self.name,
                version=f"LXD {tools['lxd']}",
                capabilities=("lxd-api", "copy-on-write-copy", "network-acl", "port-isolation", "idmap-isolated",
                              "egress"),
                tools=tools,
                storage=f"LXD pool {self.storage_pool}, bridge {self.bridge.name}",
            )
        return self._info

    def capacity(self) -> NodeCapacity:
        total, _used = pool_space(self.client, self.storage_pool)
        return NodeCapacity(
            cpu_millicores=(psutil.cpu_count() or 1) * 1000,
            memory_bytes=psutil.virtual_memory().total,
            disk_bytes=total,
            max_tenants=min(300, self.bridge.range.num_addresses - 3),
        )

    # -- observation ------------------------------------------------------------------------------------
    @staticmethod
    def _owned_tenant(instance: Instance | None) -> bool:
        return (instance is not None and instance.config.get(MARKER) == "true"
                and instance.config.get(ROLE) == "tenant")

    def _inside(self, instance: Instance) -> Inside | None:
        """The running instance's init and addresses as the host shows them; from LXD's state (slower) only
        when the host cannot tell; None when it is not running."""
        if not instance.running:
            return None
        inside = look_inside(instance.name)
        if inside is not None:
            return inside
        current = self.client.instance(instance.name)  # with its state: ~15 ms of LXD's time
        if current is None or not current.running or current.pid is None:
            return None
        return Inside(current.pid, current.addresses.get(NIC_DEVICE, ()))

    def _guard_problem(self, view: AclView) -> str | None:
        """What the node guard lacks, read only when some tenant has egress rules (an in-process nft read)."""
        return self.guard.problem() if view.egress else None

    def _observe(self, instance: Instance, view: AclView, guard_problem: str | None) -> Observed:
        address = (instance.devices.get(NIC_DEVICE) or {}).get("ipv4.address")
        return observe(instance, view.ingress.get(instance.name), self.bridge, self._inside(instance),
                       view.egress_for(address), guard_problem)

    def _tenants(self, *, state: bool) -> builtins.list[Instance]:
        """Fleet's tenants in one request: LXD leaves out every instance without the marks (their config,
        let alone their state, is never read), and the marks are checked again here."""
        found = self.client.instances(state=state, having={MARKER: "true", ROLE: "tenant"})
        return sorted((i for i in found if self._owned_tenant(i)), key=lambda i: i.name)

    @at_edge
    def list(self) -> builtins.list[Observed]:
        """Two requests whatever the number of tenants (the tenants, the ACL with its ingress and egress
        rules), one nftables read of the node guard when any tenant has egress, and two reads in /proc per
        running tenant."""
        acl = self._pool.submit(self.bridge.view)  # both reads at once: LXD answers them in parallel
        tenants = self._tenants(state=False)
        view = acl.result()
        guard_problem = self._guard_problem(view)
        return [self._observe(i, view, guard_problem) for i in tenants]

    @at_edge
    def inspect(self, tenant: str) -> Observed | None:
        validate_name(tenant)
        acl = self._pool.submit(self.bridge.view)  # both reads at once (unused when there is no tenant)
        instance = self.client.instance(tenant, state=False)
        if instance is None or not self._owned_tenant(instance):
            return None
        view = acl.result()
        return self._observe(instance, view, self._guard_problem(view))

    @at_edge
    def usage(self, tenants: Sequence[str] | None = None) -> builtins.list[Usage]:
        """From LXD's instance state: cgroup CPU time and memory, the root volume's usage, eth0's counters."""
        wanted = None if tenants is None else set(tenants)
        return [usage_of(i) for i in self._tenants(state=True) if wanted is None or i.name in wanted]

    def _require(self, tenant: str, *, state: bool = False) -> Instance:
        instance = self.client.instance(validate_name(tenant), state=state)
        if instance is None:
            raise NotFound(f"tenant {tenant} has no container on node {self.node}")
        if not self._owned_tenant(instance):
            raise PermanentError(f"instance {tenant} exists but is not Fleet's; Fleet never touches it",
                                 reason="NotOwned")
        return instance

    def _settle_rule(self, tenant: str) -> None:
        """Wait for the ingress rule `clone` is writing for `tenant` in the background, if any."""
        with self._rules_lock:
            pending = self._pending_rules.pop(tenant, None)
        if pending is not None:
            wait([pending])  # its failure, if any, is logged; the caller writes the rule itself

    def _ensure_bridge(self) -> None:
        for made in self.bridge.ensure():
            logger.bind(node=self.node, made=made).info("Created LXD network part")
        self._bridge_checked = True

    # -- templates --------------------------------------------------------------------------------------
    @at_edge
    def ensure_template(self, template: Template) -> None:
        if template.ref in self._templates_seen:
            return
        if lxd_images.find(self.client, template.ref):
            self._templates_seen.add(template.ref)
            return
        if template.name not in lxd_images.BUILTIN_NAMES:
            raise PermanentError(f"template {template.ref} is not on node {self.node}; import a rootfs or "
                                 "tarball for it", reason="TemplateMissing")
        with self._template_lock:  # workers cloning the first tenants all find it missing at once
            lxd_images.make(self.client, template, TemplateSource(kind="busybox"), self.storage_pool)

    @at_edge
    def make_template(
        self, template: Template, source: TemplateSource, progress: Callable[[str], None] = lambda line: None
    ) -> bool:
        with self._template_lock:
            return lxd_images.make(self.client, template, source, self.storage_pool, progress)

    @at_edge
    def exec(self, tenant: str, request: ExecRequest) -> ExecProcess:
        """Run a command in the running container through LXD's exec API, as its root (`lxd_exec`)."""
        instance = self._require(tenant)
        if not instance.running:
            raise PermanentError(f"tenant {tenant} has no running container on node {self.node}", reason="NotRunning")
        return lxd_exec.start(self.client, tenant, request)

    # -- provisioning -----------------------------------------------------------------------------------
    @at_edge
    def clone(self, tenant: str, template: Template, *, generation: int | None = None) -> None:
        """One `copy` of the template's snapshot, with its address, NIC, default limits and the spec
        `generation` it was made for. Then the tenant's ingress rule for the template's default ports is
        written in the background, while the next steps run, so a tenant that keeps its template's defaults
        finds it written by the time `apply_network` looks (that waits for it: one ACL writer at a time).
        Not during the copy: on two cores the ACL write (LXD rebuilds the bridge firewall) slowed the copy
        by ~30 ms (measured), and not waited on: until the rule is there the bridge drops what would reach
        the tenant, so only reachability waits for it, never isolation. A crash before it is written
        leaves the rule to `apply_network`, which reads before it writes.

        The address comes from a listing of every instance (one request, config only): LXD 5.0.2 accepts two
        NICs with the same static address on one bridge (measured), so only reading them all keeps a
        tenant from taking an address another operator process or an administrator gave out meanwhile."""
        validate_name(tenant)
        if not self._bridge_checked:
            self._ensure_bridge()
        limits = {key: value for key, value in resource_config(template.resources).items() if value is not None}
        started = time.perf_counter()
        with self.bridge.address_lock:  # the address is chosen and taken in one step per process
            instances = self.client.instances(state=False)
            existing = next((i for i in instances if i.name == tenant), None)
            if existing is not None:
                if not self._owned_tenant(existing):
                    raise PermanentError(f"instance {tenant} exists but is not Fleet's; Fleet never touches it",
                                         reason="NotOwned")
                return
            address = self.bridge.choose_address(instances)
            try:
                self.client.request("POST", "/1.0/instances", json={
                    "name": tenant, "type": "container", "profiles": [], "description": f"Fleet tenant {tenant}",
                    "source": {"type": "copy", "source": lxd_images.snapshot_source(template.ref),
                               "instance_only": True},
                    "config": {**TENANT_CONFIG, **limits, MARKER: "true", ROLE: "tenant", TENANT: tenant,
                               TEMPLATE: template.ref, **_generation_config(generation)},
                    "devices": {ROOT_DEVICE: root_device(self.storage_pool, template.resources),
                                NIC_DEVICE: self.bridge.nic(address)},
                })
            except FleetError:
                self._templates_seen.discard(template.ref)  # ensure_template asks LXD again next pass
                if not lxd_images.find(self.client, template.ref):  # asked only now: it is there on every clone
                    raise PermanentError(f"template {template.ref} is not on node {self.node}",
                                         reason="TemplateMissing") from None
                raise
            rule = self._pool.submit(self.bridge.set_rule, IngressRule(tenant, address, template.network.ingress or ()))
            rule.add_done_callback(lambda done: _report_rule(done, tenant))
            with self._rules_lock:  # finished ones are dropped here too: a clone is not always followed here
                self._pending_rules = {name: f for name, f in self._pending_rules.items() if not f.done()}
                self._pending_rules[tenant] = rule
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, template=template.ref, node=self.node, address=address, ms=ms).info(
            "Cloned tenant")

    def _update(self, tenant: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Read the instance, change its config/devices, write it back unless someone wrote in between."""
        try:
            reply = self.client.get(f"/1.0/instances/{validate_name(tenant)}")
        except NotFound:
            raise NotFound(f"tenant {tenant} has no container on node {self.node}") from None
        body = dict(reply.metadata)
        config = body.get("config") or {}
        if config.get(MARKER) != "true" or config.get(ROLE) != "tenant":
            raise PermanentError(f"instance {tenant} is not Fleet's; Fleet never touches it", reason="NotOwned")
        before = copy.deepcopy((body.get("config"), body.get("devices")))
        change(body)
        # Compared as values, not as text: LXD returns keys sorted, Fleet writes them in its own order, and
        # a needless PUT costs LXD 30-60 ms (it rewrites the cgroups and the volume's quota).
        if (body.get("config"), body.get("devices")) == before:
            return
        headers = {"If-Match": reply.etag} if reply.etag else None
        self.client.request("PUT", f"/1.0/instances/{tenant}", json=body, headers=headers)

    @at_edge
    def apply_resources(self, tenant: str, resources: Resources, *, generation: int | None = None) -> None:
        """Limits change in place: LXD writes the running container's cgroups and the volume's quota. The
        spec `generation` they come from is written with them (`user.fleet.generation`), in the same PUT."""

        def change(body: dict[str, Any]) -> None:
            config = body["config"] = dict(body.get("config") or {})
            config.update(_generation_config(generation))
            for key, value in resource_config(resources).items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
            devices = body["devices"] = dict(body.get("devices") or {})
            devices[ROOT_DEVICE] = root_device(self.storage_pool, resources)

        self._update(tenant, change)
        logger.bind(tenant=tenant, node=self.node, **resources.display()).info("Applied resources")

    @at_edge
    def apply_network(self, tenant: str, network: Network) -> None:
        """The NIC, the ingress rule, then the egress rules (after the node guard, so no allow rule is ever
        in the ACL without it: see lxd_egress); each written only when it differs, the container untouched."""
        egress = checked_rules(network.egress)  # before anything changes: a bad stored value fails here
        self._settle_rule(tenant)
        instance = self._require(tenant)
        if not self._bridge_checked:
            self._ensure_bridge()
        nic = dict(instance.devices.get(NIC_DEVICE) or {})
        address = nic.get("ipv4.address")
        if not self.bridge.nic_ok(nic, address):
            with self.bridge.address_lock:
                others = [i for i in self.client.instances(state=False) if i.name != tenant]
                held = {device.get("ipv4.address") for i in others for device in i.devices.values()
                        if device.get("network") == self.bridge.name}
                if address is None or address in held or address == self.bridge.gateway or \
                        ipaddress.IPv4Address(address) not in self.bridge.range:
                    address = self.bridge.choose_address(others)
                chosen = address
                self._update(tenant, lambda body: body["devices"].__setitem__(NIC_DEVICE, self.bridge.nic(chosen)))
        assert address is not None
        wanted = IngressRule(tenant, address, tuple(network.ingress or ()))
        try:
            self.bridge.set_rule(wanted)  # written only when it differs
        except NotFound:  # the ACL (or the bridge) was removed behind Fleet's back: make them again
            self._ensure_bridge()
            self.bridge.set_rule(wanted)
        if egress and self.guard.ensure():
            logger.bind(node=self.node, table=self.guard.table).info("Made the LXD egress guard")
        self.bridge.set_egress(tenant, address, acl_rules(tenant, address, egress))
        inside = self._inside(instance)
        # The namespace is entered (~5 ms) only when the address is missing there: the same test inspect
        # makes, so what inspect calls converged is never configured again (start has just done it).
        if inside is not None and address not in inside.addresses:
            configure_inside(tenant, inside.pid, address, self.bridge.range.prefixlen, self.bridge.gateway)
        logger.bind(tenant=tenant, node=self.node, address=address, ports=list(wanted.ports),
                    egress=egress_summary(egress)).info("Applied network")

    @at_edge
    def start(self, tenant: str) -> None:
        instance = self._require(tenant)
        nic = dict(instance.devices.get(NIC_DEVICE) or {})
        address = nic.get("ipv4.address")
        if address is None or not self.bridge.nic_ok(nic, address):
            raise TransientError(f"tenant {tenant} has no NIC on {self.bridge.name} yet; apply its network first")
        began = time.perf_counter()
        started = not instance.running
        if started:
            self.client.request("PUT", f"/1.0/instances/{tenant}/state", json={"action": "start"})
        # Its init, to configure the address through: from /proc, or LXD's state if the host cannot tell.
        inside = self._inside(replace(instance, status="Running"))
        if inside is None:
            raise TransientError(f"tenant {tenant} stopped right after it started; see `lxc info --show-log {tenant}`")
        configure_inside(tenant, inside.pid, address, self.bridge.range.prefixlen, self.bridge.gateway)
        if started:
            logger.bind(tenant=tenant, node=self.node, pid=inside.pid,
                        ms=round((time.perf_counter() - began) * 1000, 1)).info("Started tenant")

    @at_edge
    def stop(self, tenant: str) -> None:
        instance = self.client.instance(validate_name(tenant), state=False)
        if instance is None or not instance.running:
            return
        if not self._owned_tenant(instance):
            raise PermanentError(f"instance {tenant} is not Fleet's; Fleet never touches it", reason="NotOwned")
        # Forced: Fleet's init is a plain service that ignores SIGPWR, so a clean stop only waits out a timeout.
        self.client.request("PUT", f"/1.0/instances/{tenant}/state", json={"action": "stop", "force": True})

    @at_edge
    def delete(self, tenant: str) -> DeleteReceipt:
        started = time.perf_counter()
        self._settle_rule(tenant)
        instance = self.client.instance(validate_name(tenant))
        if instance is not None and not self._owned_tenant(instance):
            raise PermanentError(f"instance {tenant} is not Fleet's; Fleet never deletes it", reason="NotOwned")
        removed: list[str] = []
        absent: list[str] = []
        if instance is not None and instance.running:
            self.client.request("PUT", f"/1.0/instances/{tenant}/state", json={"action": "stop", "force": True})
            removed.append(f"process {instance.pid}")
        else:
            absent.append("process")
        view = self.bridge.view()
        rule, egress = view.ingress.get(tenant), view.egress_of(tenant)
        if (rule is not None or egress) and self.bridge.remove_rule(tenant):
            if rule is not None:
                removed.append(f"ingress rule of {rule.address} in ACL {self.bridge.acl}")
            if egress:
                removed.append(f"{len(egress)} egress rule(s) in ACL {self.bridge.acl}")
        # The instance goes last: while it exists, inspect sees the tenant and the next pass finishes.
        if instance is not None:
            self.client.request("DELETE", f"/1.0/instances/{tenant}")  # with its snapshots and root volume
            removed += [f"instance {tenant}", f"root volume {self.storage_pool}/container/{tenant}"]
            removed += [f"snapshot {tenant}/{s}" for s in instance.snapshots]
            address = (instance.devices.get(NIC_DEVICE) or {}).get("ipv4.address")
            if address:
                removed.append(f"address {address}")
        else:
            absent.append("instance")
        leftovers = self._leftovers(tenant)
        if leftovers:
            raise TransientError(f"tenant {tenant} still has parts after delete: {', '.join(leftovers)}")
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, node=self.node, removed=len(removed), ms=ms).info("Deleted tenant")
        return DeleteReceipt(tenant=tenant, removed=tuple(removed), already_absent=tuple(absent))

    def _leftovers(self, tenant: str) -> builtins.list[str]:
        found = []
        if self.client.instance(tenant, state=False) is not None:
            found.append("instance")
        if self.client.exists(f"/1.0/storage-pools/{self.storage_pool}/volumes/container/{tenant}"):
            found.append("root volume")
        view = self.bridge.view()
        if tenant in view.ingress:
            found.append("ingress rule")
        if view.egress_of(tenant):
            found.append("egress rules")
        return found

    def close(self) -> None:
        """Containers keep running: closing the driver (or the operator exiting) never stops a tenant."""
        self._pool.shutdown(wait=True)
        self.client.close()


def _generation_config(generation: int | None) -> dict[str, str]:
    """The instance key recording which spec generation Fleet last wrote (none when the caller has none)."""
    return {} if generation is None else {GENERATION: str(generation)}


def _report_rule(rule: Future[None], tenant: str) -> None:
    """The outcome of an ingress rule written in the background: a failure is only logged (apply_network
    writes it again; the clone itself stands)."""
    error = rule.exception()
    if error is not None:
        logger.bind(tenant=tenant, error=str(error)).warning("Could not write the ingress rule yet")

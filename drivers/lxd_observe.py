"""What an LXD tenant is, read from LXD each time: its limits, network, process and usage as `specs` models.

Why apart from the driver: observation is pure reading (the instance LXD returned, its ingress and egress
rules, the node guard's state, what the host shows of its init and addresses, two cgroup counters), and
keeping it here keeps the driver to the steps that change things.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drivers.lxd_api import Instance
from drivers.lxd_config import GENERATION, NIC_DEVICE, TEMPLATE, observed_resources
from drivers.lxd_egress import foreign, rules_in_force
from drivers.lxd_network import Bridge, IngressRule, Inside
from specs import Network, Observed, Usage


def oom_kills(instance: str) -> int:
    """OOM kills in the instance's memory cgroup (v1 memory.oom_control, or v2 memory.events)."""
    for path, key in ((Path(f"/sys/fs/cgroup/memory/lxc.payload.{instance}/memory.oom_control"), "oom_kill"),
                      (Path(f"/sys/fs/cgroup/lxc.payload.{instance}/memory.events"), "oom_kill")):
        try:
            for line in path.read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def observe(instance: Instance, rule: IngressRule | None, bridge: Bridge, inside: Inside | None,
            egress: Sequence[dict[str, Any]] = (), guard_problem: str | None = None) -> Observed:
    """The tenant as LXD shows it; its network counts only when NIC, rule and address inside all agree.
    `inside` is what the host shows of the running instance (None when it is stopped); `egress` the ACL's
    egress rules that may apply to its address, in force only while the node guard is whole."""
    tenant = instance.name
    problems: list[str] = []
    nic = instance.devices.get(NIC_DEVICE)
    address = nic.get("ipv4.address") if nic else None
    if not bridge.nic_ok(dict(nic or {}), address):
        problems.append(f"NIC {NIC_DEVICE} on {bridge.name} missing or changed")
        address = None
    if address is not None and (rule is None or rule.address != address):
        problems.append("ingress rule missing")
    running = instance.running
    if address is not None and running and address not in (inside.addresses if inside else ()):
        problems.append(f"address {address} not configured inside")
    ready = not problems and rule is not None
    # Egress that is not in force shows as less egress than the spec's (so the planner applies the network
    # again), not as a tenant that is not ready: its address and ingress still work.
    in_force = rules_in_force(egress, tenant, address) if guard_problem is None else ()
    if egress and guard_problem is not None:
        problems.append(f"egress not in force: {guard_problem}")
    problems += [f"egress rule not Fleet's: {text}" for text in foreign(egress, tenant, address)]
    killed = oom_kills(tenant) if running else 0
    if killed:
        problems.append(f"{killed} process(es) killed at the memory limit")
    return Observed(
        name=tenant,
        template=instance.config.get(TEMPLATE),
        resources=observed_resources(instance.config, instance.devices),
        network=Network.model_construct(ingress=rule.ports, egress=in_force) if ready and rule is not None
        else Network(),
        running=running,
        address=address if ready else None,
        pid=inside.pid if running and inside is not None else None,
        problems=tuple(problems),
        generation=_generation(instance.config.get(GENERATION)),
    )


def _generation(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def usage_of(instance: Instance) -> Usage:
    return Usage(tenant=instance.name, running=instance.running, cpu_seconds=instance.cpu_ns / 1e9,
                 memory_bytes=instance.memory_bytes, memory_peak_bytes=instance.memory_peak_bytes,
                 disk_bytes=instance.disk_bytes, network_in_bytes=instance.network_in_bytes,
                 network_out_bytes=instance.network_out_bytes)

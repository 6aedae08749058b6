"""The LXD driver's network: one Fleet bridge, static tenant addresses, and one ingress ACL.

Why this shape (measured on LXD 5.0.2): per-NIC ACLs are not accepted on bridged NICs, and changing a
network's `security.acls` list re-applies the bridge's firewall (~0.8 s), while rewriting one ACL's rules
takes 30-60 ms. So Fleet's bridge carries one Fleet ACL, attached once, with default ingress and egress
`drop`; each tenant owns exactly one ingress rule in it, marked by its description `fleet:<tenant>`: `allow`
tcp to its address on its ingress ports (or `drop`, for none), and the egress rules its `spec.network.egress`
makes, marked the same (`lxd_egress`; the ACL keeps its name `<bridge>-ingress` from before egress).
LXD makes ACLs stateful (replies pass), and allows the bridge's DHCP/DNS itself. Tenants cannot reach
each other because every tenant NIC has `security.port_isolation` (the kernel bridge's isolated ports
never forward to one another; routed back through the host, the egress guard of `lxd_egress` drops
them), and cannot pass for another because of `security.ipv4_filtering` / `mac_filtering` on their static address.

LXD leaves an address on a bridged NIC to DHCP inside the instance, and Fleet's templates run no DHCP
client, so the driver puts the address on the instance's eth0 itself, from the host, in the instance's
network namespace (entered from a short-lived thread, after checking that the pid is that instance's).

This module never touches a network or ACL without Fleet's marker, nor a rule without its tenant's mark.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from pyroute2 import IPRoute

from drivers import netns
from drivers.lxd_api import Instance, LxdClient
from drivers.lxd_config import MARKER, NIC_DEVICE
from specs import NotFound, PermanentError, TransientError, validate_name

RULE_PREFIX = "fleet:"
T = TypeVar("T")


@dataclass(frozen=True)
class IngressRule:
    """One tenant's rule in the Fleet ACL."""

    tenant: str
    address: str
    ports: tuple[int, ...]

    def to_api(self) -> dict[str, str]:
        rule = {"destination": self.address, "state": "enabled", "description": RULE_PREFIX + self.tenant}
        if not self.ports:
            return rule | {"action": "drop"}
        return rule | {"action": "allow", "protocol": "tcp", "destination_port": ",".join(map(str, self.ports))}

    @classmethod
    def from_api(cls, rule: dict[str, Any]) -> IngressRule | None:
        description = str(rule.get("description") or "")
        if not description.startswith(RULE_PREFIX):
            return None
        ports: tuple[int, ...] = ()
        if rule.get("action") == "allow":
            text = str(rule.get("destination_port") or "")
            ports = tuple(sorted(int(p) for p in text.split(",") if p.strip().isdigit()))
        return cls(description.removeprefix(RULE_PREFIX), str(rule.get("destination") or ""), ports)


class Bridge:
    """Fleet's bridge and its ingress ACL: created when absent, read and changed through LXD."""

    def __init__(self, client: LxdClient, name: str, address_range: str) -> None:
        self.client = client
        self.name = name
        self.acl = f"{name}-ingress"
        self.range = ipaddress.IPv4Network(address_range)
        if self.range.num_addresses < 4:
            raise PermanentError(f"address range {address_range} has no room for tenants", reason="BadRange")
        self.gateway = str(self.range.network_address + 1)
        self._lock = threading.Lock()  # read-modify-write of the ACL, within this process
        # The ACL's ingress and egress rules as this process last read or wrote them (None: unknown). Only
        # `set_rule` and `set_egress` use it, to skip a read (~10 ms) when they already say what it would
        # write; every read of the ACL (each inspect and list) replaces it, so a rule changed behind
        # Fleet's back is seen by the pass's inspect first and then written. Nothing is ever written from
        # it: writes read first.
        self._last_seen: dict[str, list[dict[str, Any]]] | None = None
        self._rewrites = 0  # so a read that a write of this process overtook does not replace _last_seen
        self.address_lock = threading.Lock()  # choosing an address and creating the NIC that takes it

    # -- set-up ---------------------------------------------------------------------------------------
    def ensure(self) -> list[str]:
        """The bridge and its ACL, made when absent; what was made, for the log."""
        made = []
        acl = self._get_acl()
        if acl is None:
            self.client.request("POST", "/1.0/network-acls", json={
                "name": self.acl, "description": "Fleet: tenant ingress (managed by Fleet)",
                "config": {MARKER: "true"}, "ingress": [], "egress": []})
            made.append(f"network ACL {self.acl}")
        elif acl.get("config", {}).get(MARKER) != "true":
            raise PermanentError(f"network ACL {self.acl} exists but is not Fleet's; remove or rename it",
                                 reason="NotOwned")
        network = self._get_network()
        if network is None:
            self.client.request("POST", "/1.0/networks", json={
                "name": self.name, "type": "bridge", "description": "Fleet: tenant bridge (managed by Fleet)",
                "config": {
                    "ipv4.address": f"{self.gateway}/{self.range.prefixlen}", "ipv4.nat": "false",
                    "ipv4.dhcp": "false", "ipv6.address": "none", "dns.mode": "none", MARKER: "true",
                    "security.acls": self.acl, "security.acls.default.ingress.action": "drop",
                    "security.acls.default.egress.action": "drop",
                }})
            made.append(f"bridge {self.name} ({self.gateway}/{self.range.prefixlen})")
            return made
        config = network.get("config", {})
        if config.get(MARKER) != "true":
            raise PermanentError(f"network {self.name} exists but is not Fleet's (no {MARKER}); choose another "
                                 "bridge name or remove it", reason="NotOwned")
        wanted = f"{self.gateway}/{self.range.prefixlen}"
        if config.get("ipv4.address") != wanted:
            raise PermanentError(f"bridge {self.name} has address {config.get('ipv4.address')}, not {wanted}: "
                                 "pass its range as --address-range", reason="BadRange")
        if self.acl not in config.get("security.acls", "").split(","):
            # Drift: the ACL was detached by hand; attach it again (slow: LXD rebuilds the bridge firewall).
            self.client.request("PATCH", f"/1.0/networks/{self.name}", json={"config": {
                "security.acls": self.acl, "security.acls.default.ingress.action": "drop",
                "security.acls.default.egress.action": "drop"}})
            made.append(f"ACL {self.acl} on {self.name}")
        return made

    def _get_acl(self) -> dict[str, Any] | None:
        try:
            acl: dict[str, Any] = self.client.get(f"/1.0/network-acls/{self.acl}").metadata
            return acl
        except NotFound:
            return None

    def _get_network(self) -> dict[str, Any] | None:
        try:
            network: dict[str, Any] = self.client.get(f"/1.0/networks/{self.name}").metadata
            return network
        except NotFound:
            return None

    # -- addresses ------------------------------------------------------------------------------------
    def choose_address(self, instances: Iterable[Instance]) -> str:
        """The lowest address of the range that no NIC on this bridge holds (any instance, Fleet's or not)."""
        taken = {self.gateway}
        for instance in instances:
            for device in instance.devices.values():
                if device.get("network") == self.name and device.get("ipv4.address"):
                    taken.add(device["ipv4.address"])
        for host in self.range.hosts():
            if str(host) not in taken:
                return str(host)
        raise PermanentError(f"address range {self.range} has no free address left", reason="AddressesExhausted")

    def nic(self, address: str) -> dict[str, str]:
        return {
            "type": "nic", "network": self.name, "name": NIC_DEVICE, "ipv4.address": address,
            "security.port_isolation": "true", "security.ipv4_filtering": "true", "security.mac_filtering": "true",
        }

    def nic_ok(self, device: dict[str, str] | None, address: str | None = None) -> bool:
        if not device or address is None:
            return False
        wanted = self.nic(address)
        return all(device.get(key) == value for key, value in wanted.items())

    # -- the ACL's rules ----------------------------------------------------------------------------
    def view(self) -> AclView:
        """The ACL's ingress rules by tenant and its egress rules as LXD holds them, in one read."""
        rewrites = self._rewrites
        acl = self._get_acl()
        lists = _lists(acl) if acl is not None else None
        with self._lock:
            if rewrites == self._rewrites:
                self._last_seen = lists
        found: dict[str, IngressRule] = {}
        for raw in (lists or {}).get("ingress") or []:
            rule = IngressRule.from_api(raw)
            if rule is not None:
                found[rule.tenant] = rule
        return AclView(found, tuple((lists or {}).get("egress") or ()))

    def rules(self) -> dict[str, IngressRule]:
        return self.view().ingress

    def _rewrite(self, change: Callable[[dict[str, list[dict[str, Any]]]], dict[str, list[dict[str, Any]]]]) -> None:
        """Read the ACL, change its rules, write it back only if nobody wrote in between (ETag)."""
        with self._lock:
            self._rewrites += 1
            self._last_seen = None  # unknown until this read-modify-write has finished
            reply = self.client.get(f"/1.0/network-acls/{self.acl}")
            acl = reply.metadata
            if acl.get("config", {}).get(MARKER) != "true":
                raise PermanentError(f"network ACL {self.acl} lost Fleet's marker; not touching it", reason="NotOwned")
            before = _lists(acl)
            after = change({key: list(value) for key, value in before.items()})
            if after == before:
                self._last_seen = before
                return  # nothing to change: LXD would rebuild the bridge's firewall for nothing
            body = {"description": acl.get("description", ""), "config": acl.get("config", {}), **after}
            headers = {"If-Match": reply.etag} if reply.etag else None
            self.client.request("PUT", f"/1.0/network-acls/{self.acl}", json=body, headers=headers)
            self._last_seen = after

    def _write(self, change: Callable[[dict[str, list[dict[str, Any]]]], dict[str, list[dict[str, Any]]]]) -> None:
        with self._lock:
            seen = self._last_seen
        if seen is not None and change({key: list(value) for key, value in seen.items()}) == seen:
            return  # as this process last saw the ACL, the rules are there (see _last_seen)
        self._rewrite(change)

    def set_rule(self, rule: IngressRule) -> None:
        validate_name(rule.tenant)
        ipaddress.IPv4Address(rule.address)
        mark = RULE_PREFIX + rule.tenant
        wanted = rule.to_api()

        def change(lists: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
            rules, egress = lists["ingress"], lists["egress"]
            # Another tenant's rules for this address are stale (that tenant's NIC is gone): they must not
            # open this tenant's ports, nor let it out.
            egress = [r for r in egress if r.get("description") == mark or r.get("source") != rule.address]
            mine = [r for r in rules if r.get("description") == mark]
            if not (len(mine) == 1 and IngressRule.from_api(mine[0]) == rule):
                rules = [r for r in rules if r.get("description") != mark and r.get("destination") != rule.address] \
                    + [wanted]
            return {"ingress": rules, "egress": egress}

        self._write(change)

    def set_egress(self, tenant: str, address: str, wanted: list[dict[str, str]]) -> None:
        """The tenant's egress rules exactly `wanted` (from `lxd_egress.acl_rules`; none: no egress)."""
        mark = RULE_PREFIX + validate_name(tenant)
        ipaddress.IPv4Address(address)

        def change(lists: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
            egress = lists["egress"]
            mine = [r for r in egress if r.get("description") == mark]
            others = [r for r in egress if r.get("description") != mark and r.get("source") != address]
            if _canonical(mine) == _canonical(wanted) and len(others) + len(mine) == len(egress):
                return lists
            return {"ingress": lists["ingress"], "egress": others + list(wanted)}

        self._write(change)

    def remove_rule(self, tenant: str) -> bool:
        """The tenant's ingress and egress rules gone; True when there were some."""
        mark = RULE_PREFIX + validate_name(tenant)
        view = self.view()
        if tenant not in view.ingress and not any(r.get("description") == mark for r in view.egress):
            return False
        self._rewrite(lambda lists: {direction: [r for r in rules if r.get("description") != mark]
                                     for direction, rules in lists.items()})
        return True


@dataclass(frozen=True)
class AclView:
    """The ACL as one read showed it: ingress rules by tenant, egress rules as LXD returned them."""

    ingress: dict[str, IngressRule]
    egress: tuple[dict[str, Any], ...]

    def egress_of(self, tenant: str) -> list[dict[str, Any]]:
        """The rules marked as the tenant's."""
        mark = RULE_PREFIX + tenant
        return [r for r in self.egress if r.get("description") == mark]

    def egress_for(self, address: str | None) -> list[dict[str, Any]]:
        """The rules whose `source` may cover `address`: those from exactly it, and every rule with an
        empty or wider source (found through an index, so a list of N tenants is not N scans)."""
        if address is None:
            return []
        exact, wide = self._egress_index
        return exact.get(address, []) + wide

    @functools.cached_property
    def _egress_index(self) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        exact: dict[str, list[dict[str, Any]]] = {}
        wide: list[dict[str, Any]] = []
        for rule in self.egress:
            source = str(rule.get("source") or "")
            try:
                exact.setdefault(str(ipaddress.IPv4Address(source)), []).append(rule)
            except ValueError:
                wide.append(rule)
        return exact, wide


def _lists(acl: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {"ingress": list(acl.get("ingress") or []), "egress": list(acl.get("egress") or [])}


def _canonical(rules: list[dict[str, Any]]) -> list[tuple[tuple[str, str], ...]]:
    """Rules compared as LXD returns them: empty fields left out, order ignored."""
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items() if v not in (None, ""))) for r in rules)


# -- the address inside the instance --------------------------------------------------------------------
@dataclass(frozen=True)
class Inside:
    """A running instance as the host sees it without asking LXD: its init and its namespace's IPv4 addresses.

    Why not LXD's instance state: LXD renders it by starting a helper process in the instance's network
    namespace and asking btrfs for the root volume's usage, ~15 ms per instance (measured on 5.0.2), on
    every inspect, start and resync; these two reads cost well under a millisecond."""

    pid: int
    addresses: tuple[str, ...]  # local IPv4 addresses in the instance's network namespace, loopback left out


def _payload_cgroups(instance: str) -> list[Path]:
    """The instance's payload cgroup in each hierarchy LXD uses (cgroup v1 controllers, or v2's one tree)."""
    name = f"lxc.payload.{instance}"
    return [path for path in (Path("/sys/fs/cgroup/pids") / name, Path("/sys/fs/cgroup") / name) if path.is_dir()]


def _ns_pids(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:]
    return []


def init_pid(instance: str) -> int | None:
    """The pid of the instance's init: the process of its payload cgroup that is pid 1 of the instance's own
    pid namespace, one level below the host's (a pid namespace a tenant nests inside has more levels, so a
    tenant cannot pass its own process off as init). None when the host cannot tell; ask LXD then."""
    for cgroup in _payload_cgroups(instance):
        for procs in cgroup.rglob("cgroup.procs"):
            try:
                pids = [int(p) for p in procs.read_text().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                try:
                    if _ns_pids(pid) == [str(pid), "1"]:
                        return pid
                except OSError:  # it exited meanwhile
                    continue
    return None


def local_addresses(pid: int) -> tuple[str, ...]:
    """The IPv4 addresses local to `pid`'s network namespace, from its routing trie in /proc (the `/32 host
    LOCAL` entries), loopback left out: a read of one file, no namespace entered."""
    try:
        lines = Path(f"/proc/{pid}/net/fib_trie").read_text().splitlines()
    except OSError:
        return ()
    found: list[str] = []
    for previous, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line and "|-- " in previous:
            address = previous.split("|-- ", 1)[1].strip()
            if not address.startswith("127.") and address not in found:
                found.append(address)
    return tuple(found)


def look_inside(instance: str) -> Inside | None:
    pid = init_pid(instance)
    if pid is None:
        return None
    return Inside(pid, local_addresses(pid))


def _in_namespace(pid: int, function: Callable[[], T]) -> T:
    """Run `function` in the network namespace of `pid`, from a thread of its own (setns moves one thread)."""
    return netns.inside(Path(f"/proc/{pid}/ns/net"), function)


def _belongs_to(pid: int, instance: str) -> bool:
    """Whether `pid` runs in the instance's cgroup (LXD names it lxc.payload.<instance>): a pid read earlier
    may have died and been reused since, and Fleet must never configure another process's network."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(part.split("/")[1:2] == [f"lxc.payload.{instance}"] for part in
               (line.split(":", 2)[-1] for line in text.splitlines()))


def configure_inside(instance: str, pid: int | None, address: str, prefixlen: int, gateway: str) -> bool:
    """Put `address` on the instance's eth0 with a default route via `gateway`; True when it changed."""
    if pid is None or not _belongs_to(pid, instance):
        raise TransientError(f"instance {instance} has no running init to configure; start it first")

    def configure() -> bool:
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=NIC_DEVICE)
            if not links:
                raise TransientError(f"instance {instance} has no {NIC_DEVICE} yet")
            index = links[0]
            have = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]
            if have == [(address, prefixlen)]:
                return False
            for other, other_prefix in have:
                ipr.addr("del", index=index, address=other, prefixlen=other_prefix)
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            ipr.link("set", index=index, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)
            return True

    changed = _in_namespace(pid, configure)
    if changed:
        logger.bind(tenant=instance, address=address).debug("Configured the address inside the instance")
    return changed

"""Per-tenant networking for the nspawn driver: network namespace and veth pair, with the tenant's address
lease and firewall elements.

Layout per tenant `<t>`: a named network namespace `fleet-<t>` (/run/netns), a veth pair whose host end is
`fl<12 hex of sha256(t)>` (interface names are at most 15 characters, tenant names up to 63) carrying the
ifalias `fleet:<t>` so ownership is explicit, and whose other end is `eth0` inside the namespace. Each
tenant leases a /30 from the node's range: the host end gets the first address, the tenant the second and
a default route through the host end.

Addresses come from `nspawn_addresses` (a /30 lease per tenant), isolation from `nspawn_firewall` (one
nftables table), egress from `nspawn_egress`; this module puts them together. The global ip_forward is left
as found: forwarding is switched on per interface, for the veths of tenants with egress and the outbound
interface while any tenant has egress (off for a tenant without).

The namespace belongs to the host's user namespace, so a tenant's root holds no capability over it: it
cannot change its address or routes, nor open raw sockets. Two per-namespace sysctls give back what a
service needs without privilege: `ip_unprivileged_port_start=0` (bind port 80) and `ping_group_range`
(ping through ICMP datagram sockets).

This module must never touch an interface, namespace or nft table that does not carry Fleet's marker, and
no value reaches nft text unchecked (names are DNS labels, interface names hex, ports ints).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from pyroute2 import IPRoute, NetlinkError

from drivers import netns, nspawn_egress
from drivers.nspawn_addresses import Lease, Leases, namespace_ipv4_addresses
from drivers.nspawn_firewall import ALIAS_PREFIX, VETH, Firewall, FirewallState
from drivers.reverter import Reverter
from specs import PermanentError, TransientError, validate_name
from specs.tenant import EgressRule

NETNS_DIR = Path("/run/netns")
# Fleet's range route carries its own protocol number and metric ("proto 211 metric 4211" in `ip route`):
# a replace or delete touches only a route with that metric, and a route someone else made for the same
# range (metric 0 as usual) keeps precedence over it.
ROUTE_PROTO = 211
ROUTE_METRIC = 4211
RTN_UNREACHABLE = 7
LOOPBACK_INDEX = 1  # the kernel gives lo this index in every network namespace
NETNS_SYSCTLS = {
    "net/ipv4/ip_unprivileged_port_start": "0",
    "net/ipv4/ping_group_range": "0\t2147483647",
}


def netns_name(tenant: str) -> str:
    return f"fleet-{validate_name(tenant)}"


def veth_name(tenant: str) -> str:
    """Host end of the tenant's veth: deterministic, 14 characters, owned through its ifalias."""
    return "fl" + hashlib.sha256(validate_name(tenant).encode()).hexdigest()[:12]


def _peer_name(tenant: str) -> str:
    # The namespace end is created under this name inside the namespace, then renamed to eth0.
    return "fp" + veth_name(tenant)[2:]


def netns_path(tenant: str) -> Path:
    return NETNS_DIR / netns_name(tenant)


def _eth0_address() -> str | None:
    """Runs inside a tenant's namespace: the first IPv4 address of eth0 (one raw dump of the namespace's
    few addresses: pyroute2's socket and two requests cost several times more on every observation)."""
    return next((address for address, label in namespace_ipv4_addresses() if label == "eth0"), None)


def _write_namespace_sysctls() -> None:
    """NETNS_SYSCTLS, written from a thread inside the namespace (/proc/sys/net shows the opener's)."""
    for name, value in NETNS_SYSCTLS.items():
        with open(f"/proc/sys/{name}", "w") as handle:
            handle.write(value)


@dataclass(frozen=True)
class NetworkState:
    """The tenant's network as the host shows it."""

    netns: bool
    veth: bool
    veth_up: bool
    address: str | None  # the tenant's address inside its namespace, if set
    ports: tuple[int, ...] | None  # allowed ingress ports in the firewall; None when not isolated
    problems: tuple[str, ...] = ()
    egress: tuple[EgressRule, ...] = ()  # the egress rules in force (every part of them in place)

    @property
    def ready(self) -> bool:
        return self.netns and self.veth and self.veth_up and self.address is not None and self.ports is not None


def _ensure_address(ipr: IPRoute, index: int, address: str, *, fresh: bool) -> None:
    """The link holds `address`/30 and no other IPv4 address; `fresh`: it was just made and holds none."""
    wanted = (address, 30)
    if not fresh:
        for have, prefix in _ipv4_addresses(ipr, index):
            if (have, prefix) != wanted:
                ipr.addr("del", index=index, address=have, prefixlen=prefix)
        if wanted in _ipv4_addresses(ipr, index):
            return
    ipr.addr("add", index=index, address=address, prefixlen=30)


def _link(ipr: IPRoute, name: str) -> Any | None:
    """The link called `name`, asked for by name (one reply) rather than found in a dump of every link,
    which costs as much more as the host has tenants; None when there is none."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return None
        raise


def _ipv4_addresses(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]


@contextlib.contextmanager
def _host_errors(tenant: str) -> Iterator[None]:
    """What the kernel refused while a tenant's network was set up, as a TransientError (the next pass retries)."""
    try:
        yield
    except NetlinkError as error:
        raise TransientError(f"netlink refused a change for tenant {tenant}: {error}") from error
    except OSError as error:
        raise TransientError(f"network setup of tenant {tenant} failed: {error}") from error


class Networks:
    """Facade the driver uses: ensure / observe / remove a tenant's network; list tenants that have one."""

    def __init__(
        self,
        state_dir: Path,
        address_range: str = "10.213.0.0/16",
        firewall: Firewall | None = None,
        egress_interface: str | None = None,
    ) -> None:
        self.leases = Leases(state_dir / "leases.json", address_range)
        self.firewall = firewall or Firewall()
        # Where egress leaves the node (None: the interface of the default route, looked up when needed).
        self.egress_interface = None if egress_interface is None else nspawn_egress.check_interface(egress_interface)
        self.node_egress = nspawn_egress.NodeEgressRecord(state_dir / "egress.json")

    # -- host reading ---------------------------------------------------------------------------------
    def _fleet_veths(self, ipr: IPRoute) -> dict[str, tuple[int, str]]:
        """tenant -> (ifindex, veth name), from the ifalias marker."""
        found: dict[str, tuple[int, str]] = {}
        for link in ipr.get_links():
            alias = link.get("IFLA_IFALIAS") or ""
            name = link.get("IFLA_IFNAME") or ""
            if alias.startswith(ALIAS_PREFIX) and VETH.fullmatch(name):
                found[alias.removeprefix(ALIAS_PREFIX)] = (link["index"], name)
        return found

    def _host_indexes(self) -> dict[int, str]:
        """/30 indexes carried by Fleet veths on the host, and the veth carrying each."""
        used: dict[int, str] = {}
        # One dump of every IPv4 address (its label is the interface's name), not a link dump plus one
        # request per veth: with hundreds of tenants those round trips dominated every network setup.
        for address, label in namespace_ipv4_addresses():
            if not VETH.fullmatch(label) or not address:
                continue
            lease_index = self.leases.index_of(address)
            if lease_index is not None:
                used[lease_index] = label
        return used

    def list_tenants(self) -> list[str]:
        names = {name.removeprefix("fleet-") for name in netns.names() if name.startswith("fleet-")}
        with IPRoute() as ipr:
            names |= set(self._fleet_veths(ipr))
        names |= set(self.leases.all())
        return sorted(names)

    # -- ensure -------------------------------------------------------------------------------------------
    def ensure_namespace(self, tenant: str) -> bool:
        """The tenant's namespace with its sysctls: all a container needs to be launched into (the driver
        starts it before the veth exists, and `ensure` connects it while nspawn boots). True when made now.
        The sysctls are written before the namespace is bound, so no bound namespace lacks them."""
        return netns.create(netns_path(tenant), prepare=_write_namespace_sysctls)

    def ensure(
        self, tenant: str, ports: tuple[int, ...], egress: tuple[EgressRule, ...] = (), *, connect: bool = True
    ) -> str:
        """Make the tenant's namespace, veth, addresses, route, firewall and egress match; returns its address.
        `connect` False (its container is stopped): the lease and the firewall only; `connect_parked` makes
        the namespace and veth at the next start.

        The order keeps a tenant unreachable until it is isolated, even when its container already runs in
        the namespace: the firewall lists the veth's name (sets match interface names, not links) before
        the veth exists, so no packet crosses it unfiltered."""
        started = time.perf_counter()
        veth = veth_name(tenant)
        rules = nspawn_egress.checked_rules(egress)  # before anything changes: a bad rule is refused whole
        wanted_egress = nspawn_egress.elements(veth, rules)
        # A first ensure that fails half way takes back what it made (lease, firewall elements, veth, and the
        # namespace unless it was there before: a container may run in it); a repair of an existing network
        # keeps it, and the next pass converges either way.
        with _host_errors(tenant), Reverter() as revert, IPRoute() as ipr:
            existing = self._owned_link(ipr, tenant, veth)
            lease = self.leases.get(tenant)
            if lease is None:  # the host is searched for addresses in use only when a lease is made
                lease = self.leases.acquire(tenant, self._host_indexes(), veth)
                revert.add("release the address lease", lambda: self.leases.release(tenant))
                revert.add("remove the firewall elements", lambda: self._unfirewall_if_unlinked(veth))
                revert.add("remove the veth", lambda: self._delete_link(veth, tenant))
            # After the lease exists (a release of the range's last lease removes the route under the leases'
            # lock), and whether or not the container runs: a stopped tenant's address has no veth.
            self._range_unreachable(ipr)
            with self.firewall.locked():  # the node's egress and the tenant's elements, seen together
                if wanted_egress:
                    self._ensure_node_egress()
                before = self.firewall.ensure_tenant(
                    tenant, veth, ports, lease.tenant_address, self._known_sources(), egress=wanted_egress
                )
                if not wanted_egress and (before.egress_of(veth) or (before.egress_out and not before.egress)):
                    self._remove_node_egress_if_unused()  # its rules were the last, or none were left
            if connect:
                self._connect(ipr, revert, tenant, lease, existing, egress=bool(wanted_egress))
            revert.success()
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, address=lease.tenant_address, ports=list(ports), egress=len(rules), ms=ms).info(
            "Applied network"
        )
        return lease.tenant_address

    def _connect(
        self, ipr: IPRoute, revert: Reverter, tenant: str, lease: Lease, existing: Any | None, *, egress: bool
    ) -> None:
        """Namespace, veth pair, addresses, route and the veth's forwarding (on only with egress rules)."""
        veth, peer, ns = veth_name(tenant), _peer_name(tenant), netns_name(tenant)
        if self.ensure_namespace(tenant):
            revert.add("remove the network namespace", lambda: netns.remove(netns_path(tenant)))
        peer_index = self._ensure_host_end(ipr, tenant, veth, peer, ns, lease, existing)
        # Forwarding for this veth only while it has egress (its packets still pass the egress chain).
        nspawn_egress.write_forwarding(veth, egress)
        self._ensure_namespace_end(tenant, peer, lease, peer_index)

    def connect_parked(self, tenant: str) -> bool:
        """At the start of a stopped tenant: its namespace and veth again, as its lease and the firewall
        elements it kept while stopped say (those were never removed, so the veth is filtered from its
        first packet). False, with only the namespace made, when the tenant has no lease or no elements yet:
        the planner's ApplyNetwork then sets up the whole network."""
        veth = veth_name(tenant)
        lease = self.leases.get(tenant)
        firewall = self.firewall.read()
        if (lease is None or not firewall.complete or veth not in firewall.links
                or (veth, lease.tenant_address) not in firewall.sources):
            self.ensure_namespace(tenant)
            return False
        started = time.perf_counter()
        with _host_errors(tenant), Reverter() as revert, IPRoute() as ipr:
            existing = self._owned_link(ipr, tenant, veth)
            egress = bool(nspawn_egress.rules_from(veth, firewall.egress))
            self._connect(ipr, revert, tenant, lease, existing, egress=egress)
            revert.success()
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, address=lease.tenant_address, ms=ms).debug("Connected network")
        return True

    def park(self, tenant: str) -> list[str]:
        """A stopped tenant's veth and namespace go back to the kernel (~236 KiB of it per tenant, measured:
        docs/benchmarks.md); its lease and firewall elements stay, so a start reconnects it as it was.
        Returns what was removed; never touches a veth without the tenant's alias."""
        veth, ns = veth_name(tenant), netns_name(tenant)
        removed = []
        try:
            if self.leases.get(tenant) is not None:  # before the veth goes: its address must not route elsewhere
                with IPRoute() as ipr:
                    self._range_unreachable(ipr)
            if self._delete_link(veth, tenant):
                removed.append(f"veth {veth}")
        except NetlinkError as error:
            raise TransientError(f"netlink refused to remove the veth of tenant {tenant}: {error}") from error
        if netns_path(tenant).exists():
            netns.remove(netns_path(tenant))
            removed.append(f"network namespace {ns}")
        return removed

    def _range_unreachable(self, ipr: IPRoute) -> None:
        """The node's whole address range is unreachable on the host except through a tenant's veth (its
        /30 is more specific). Without it, a sleeping tenant's address, whose veth is gone, would follow the
        default route off the node: a gateway's connection to it, or a tenant's egress rule naming it, would
        reach whatever answers there. One netlink message, idempotent."""
        ipr.route("replace", dst=str(self.leases.range), type="unreachable", proto=ROUTE_PROTO,
                  priority=ROUTE_METRIC)

    def ensure_range_route(self) -> None:
        """At the driver's start: after a reboot or a route flush, the route is back before any pass runs."""
        if self.leases.all():
            with _host_errors("(node)"), IPRoute() as ipr:
                self._range_unreachable(ipr)

    def release_range_if_unused(self) -> list[str]:
        """Remove the range's unreachable route once no tenant holds a lease in it (under the leases' lock, so
        a lease acquired meanwhile, whose route is added after it, is never left without one)."""
        return self.leases.when_empty(lambda: remove_range_route(str(self.leases.range))) or []

    def _routes_off_node(self, tenant: str, address: str) -> bool:
        """True when the host would send a packet for a stopped tenant's address anywhere but its own veth
        (the range route is missing): the network is then not whole, and the pass's ApplyNetwork repairs it."""
        with IPRoute() as ipr:
            try:
                found = ipr.route("get", dst=address)
            except NetlinkError as error:
                return bool(error.code != errno.EHOSTUNREACH)
            link = _link(ipr, veth_name(tenant))  # a veth left by a stop that did not finish: still local
        return not found or link is None or found[0].get("RTA_OIF") != link["index"]

    # -- the node's side of egress ------------------------------------------------------------------------
    def outbound_interface(self) -> str:
        """Where egress leaves the node: the configured interface, else the default route's; PermanentError
        saying what to set when there is none."""
        if self.egress_interface is not None:
            if not nspawn_egress.interface_exists(self.egress_interface):
                raise PermanentError(
                    f"spec.network.egress: the egress interface {self.egress_interface} does not exist on this node; "
                    "fix --egress-interface (fleet up, fleet agent) or set the tenant's egress to none",
                    reason="EgressUnavailable",
                )
            return self.egress_interface
        found = nspawn_egress.default_interface()
        if found is None:
            raise PermanentError(
                "spec.network.egress: this node has no IPv4 default route to send tenants' egress out of; name "
                "the outbound interface with --egress-interface (fleet up, fleet agent), or set the tenant's egress "
                "to none",
                reason="EgressUnavailable",
            )
        return nspawn_egress.check_interface(found)

    def _ensure_node_egress(self) -> None:
        """Outbound interface, NAT and its forwarding switched on (its value before recorded first, and the
        guard in place before it forwards anything). Called under the firewall's lock."""
        interface = self.outbound_interface()
        record = self.node_egress.load()
        if record is not None and record.interface != interface:  # moved: put the old one back as found
            if record.forwarding_before == "0":
                nspawn_egress.write_forwarding(record.interface, False)
            self.node_egress.clear()
            record = None
        if record is None:
            before = nspawn_egress.read_forwarding(interface) or "0"
            record = nspawn_egress.NodeEgress(interface, before)
            self.node_egress.save(record)
        self.firewall.ensure_node_egress(interface, str(self.leases.range), guard=record.forwarding_before == "0")
        if not nspawn_egress.write_forwarding(interface, True):
            raise TransientError(f"egress interface {interface} vanished while egress was set up")

    def _remove_node_egress_if_unused(self) -> list[str]:
        """With no tenant's egress rule left: forwarding of the outbound interface as found, then its NAT
        chain and elements. Called under the firewall's lock."""
        if self.firewall.read().egress:
            return []
        removed = []
        record = self.node_egress.load()
        if record is not None and record.forwarding_before == "0":
            nspawn_egress.write_forwarding(record.interface, False)
            removed.append(f"forwarding on {record.interface}")
        if self.firewall.clear_node_egress():
            removed.append("egress NAT")
        self.node_egress.clear()
        return removed

    def _delete_link(self, veth: str, tenant: str) -> bool:
        """Delete the host end `veth` if it carries the tenant's alias (the peer goes with it); True if it did."""
        with IPRoute() as ipr:
            link = _link(ipr, veth)
            if link is not None and (link.get("IFLA_IFALIAS") or "") == ALIAS_PREFIX + tenant:
                ipr.link("del", index=link["index"])
                return True
        return False

    def _unfirewall_if_unlinked(self, veth: str) -> None:
        """Undo of a failed first ensure: the firewall elements go only once the veth is gone (an undo that
        could not delete it must not leave it reachable unfiltered)."""
        with IPRoute() as ipr:
            if _link(ipr, veth) is None:
                self.firewall.remove_tenant(veth)

    def _known_sources(self) -> dict[tuple[str, str], str]:
        return {(veth_name(name), lease.tenant_address): name for name, lease in self.leases.all().items()}

    def _owned_link(self, ipr: IPRoute, tenant: str, veth: str) -> Any | None:
        """The tenant's host end if it exists; NotOwned (before anything is changed) if an interface of that
        name lacks the tenant's alias."""
        link = _link(ipr, veth)
        if link is not None:
            alias = link.get("IFLA_IFALIAS") or ""
            if alias != ALIAS_PREFIX + tenant:
                raise PermanentError(
                    f"interface {veth} exists with alias {alias!r}, not {ALIAS_PREFIX}{tenant}; refusing to adopt it",
                    reason="NotOwned",
                )
        return link

    def _ensure_host_end(
        self, ipr: IPRoute, tenant: str, veth: str, peer: str, ns: str, lease: Lease, link: Any | None
    ) -> int | None:
        """The host end up with its address; returns the peer's index in the namespace when the pair was
        made just now (nothing there to look up or compare), else None."""
        if link is not None and not self._namespace_end(ns, peer):
            # The namespace was recreated and took the old peer with it: a veth without its other end.
            ipr.link("del", index=link["index"])
            link = None
        created = link is None
        if link is None:
            ipr.link("add", ifname=veth, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
            link = _link(ipr, veth)
            if link is None:
                raise TransientError(f"veth {veth} vanished right after it was made")
        index = link["index"]
        ipr.link("set", index=index, ifalias=ALIAS_PREFIX + tenant, state="up")
        # A link made just now has no address to compare (each netlink round trip costs ~1 ms in pyroute2).
        _ensure_address(ipr, index, lease.host_address, fresh=created)
        return link.get("IFLA_LINK") if created else None

    def _namespace_end(self, ns: str, peer: str) -> bool:
        def found() -> bool:
            with IPRoute() as nsr:
                return _link(nsr, "eth0") is not None or _link(nsr, peer) is not None

        try:
            return netns.inside(NETNS_DIR / ns, found)
        except FileNotFoundError:
            return False

    def _ensure_namespace_end(self, tenant: str, peer: str, lease: Lease, peer_index: int | None) -> None:
        netns.inside(
            netns_path(tenant), lambda: self._configure_namespace_end(netns_name(tenant), peer, lease, peer_index)
        )

    def _configure_namespace_end(self, ns: str, peer: str, lease: Lease, peer_index: int | None) -> None:
        """Runs inside the tenant's namespace: the sysctls again (a repair costs nothing here), eth0, its
        address, lo, the default route. `peer_index`: the peer made just now, under its temporary name."""
        _write_namespace_sysctls()
        with IPRoute() as nsr:
            if peer_index is not None:
                index, renamed = peer_index, True
            else:
                link = _link(nsr, "eth0")
                renamed = link is None
                if link is None:
                    link = _link(nsr, peer)
                    if link is None:
                        raise TransientError(f"veth end {peer} vanished from namespace {ns}")
                index = link["index"]
            if renamed:  # one message: the rename happens before the link comes up (as `ip link set ... name eth0 up`)
                nsr.link("set", index=index, ifname="eth0", state="up")
            else:
                nsr.link("set", index=index, state="up")
            _ensure_address(nsr, index, lease.tenant_address, fresh=renamed)
            nsr.link("set", index=LOOPBACK_INDEX, state="up")
            nsr.route("replace", dst="0.0.0.0/0", gateway=lease.host_address, oif=index)

    # -- observe ----------------------------------------------------------------------------------------
    def observe(self, tenant: str, firewall: FirewallState | None = None, *, parked: bool = False) -> NetworkState:
        """`parked`: the tenant's container is stopped, so it has no namespace or veth by design (`park`);
        its network is then its lease and firewall elements, and its address the lease's."""
        if parked:
            return self._observe_parked(tenant, firewall or self.firewall.read())
        veth, ns = veth_name(tenant), netns_name(tenant)
        problems: list[str] = []
        has_netns = netns.is_bound(netns_path(tenant))
        veth_present = veth_up = False
        with IPRoute() as ipr:
            link = _link(ipr, veth)
            if link is not None:
                veth_present = (link.get("IFLA_IFALIAS") or "") == ALIAS_PREFIX + tenant
                veth_up = veth_present and link.get("IFLA_OPERSTATE") == "UP"
        address = None
        if has_netns:
            try:
                address = netns.inside(netns_path(tenant), _eth0_address)
            except FileNotFoundError:
                has_netns = False
        lease = self.leases.get(tenant)
        firewall = firewall or self.firewall.read()
        ports: tuple[int, ...] | None = None
        egress: tuple[EgressRule, ...] = ()
        pinned = lease is not None and (veth, lease.tenant_address) in firewall.sources
        if firewall.complete and veth in firewall.links and pinned:
            ports = tuple(sorted(port for (name, port) in firewall.ingress if name == veth))
            egress = self._egress_in_force(veth, firewall, veth_present, problems)
        if lease is not None:
            if not has_netns:
                problems.append(f"network namespace {ns} missing")
            if not veth_present:
                problems.append(f"veth {veth} missing")
            elif not veth_up:
                problems.append(f"veth {veth} down")
            if address is not None and address != lease.tenant_address:
                problems.append(f"address {address} differs from lease {lease.tenant_address}")
            if not firewall.complete:
                problems.append("firewall table incomplete")
            elif veth not in firewall.links:
                problems.append(f"firewall does not isolate {veth}")
            elif not pinned:
                problems.append(f"firewall does not pin {veth} to source {lease.tenant_address}")
        if lease is None or (address is not None and address != lease.tenant_address):
            address = None
        return NetworkState(
            netns=has_netns, veth=veth_present, veth_up=veth_up, address=address, ports=ports, problems=tuple(problems),
            egress=egress,
        )

    def _observe_parked(self, tenant: str, firewall: FirewallState) -> NetworkState:
        veth = veth_name(tenant)
        lease = self.leases.get(tenant)
        problems: list[str] = []
        if lease is None:
            return NetworkState(netns=False, veth=False, veth_up=False, address=None, ports=None)
        ports: tuple[int, ...] | None = None
        egress: tuple[EgressRule, ...] = ()
        if not firewall.complete:
            problems.append("firewall table incomplete")
        elif veth not in firewall.links:
            problems.append(f"firewall does not isolate {veth}")
        elif (veth, lease.tenant_address) not in firewall.sources:
            problems.append(f"firewall does not pin {veth} to source {lease.tenant_address}")
        else:
            ports = tuple(sorted(port for (name, port) in firewall.ingress if name == veth))
            egress = self._egress_in_force(veth, firewall, False, problems)
        if ports is not None and self._routes_off_node(tenant, lease.tenant_address):
            problems.append(f"address {lease.tenant_address} routes off the node (the range's unreachable route is "
                            "missing)")
            ports = None
        # Stands for the namespace and veth the next start makes from the lease and these elements.
        whole = ports is not None
        return NetworkState(
            netns=whole, veth=whole, veth_up=whole, address=lease.tenant_address if whole else None, ports=ports,
            problems=tuple(problems), egress=egress,
        )

    def _egress_in_force(
        self, veth: str, firewall: FirewallState, veth_present: bool, problems: list[str]
    ) -> tuple[EgressRule, ...]:
        """The tenant's egress rules if every part is in place (its elements, the node's NAT and outbound
        interface, forwarding on both ends), else none: what it can reach is then less than its rules say."""
        rules = nspawn_egress.rules_from(veth, firewall.egress)
        if not rules:
            return ()
        missing = []
        if not firewall.node_egress:
            missing.append("the node's egress NAT")
        elif self.egress_interface is not None and firewall.egress_out != (self.egress_interface,):
            missing.append(f"egress out of {self.egress_interface}")
        elif nspawn_egress.read_forwarding(firewall.egress_out[0]) != "1":
            missing.append(f"forwarding on {firewall.egress_out[0]}")
        if veth_present and nspawn_egress.read_forwarding(veth) != "1":
            missing.append(f"forwarding on {veth}")
        if missing:
            problems.append("egress not in force: " + ", ".join(missing) + " missing")
            return ()
        return rules

    # -- remove -----------------------------------------------------------------------------------------
    def remove(self, tenant: str) -> list[str]:
        """Firewall elements, veth, namespace and lease, each verified gone; returns what was removed."""
        started = time.perf_counter()
        veth, ns = veth_name(tenant), netns_name(tenant)
        with self.firewall.locked():
            removed = self.firewall.remove_tenant(veth)
            removed += self._remove_node_egress_if_unused()
        removed += self.park(tenant)
        try:
            with IPRoute() as ipr:
                if tenant in self._fleet_veths(ipr) or ns in netns.names():
                    raise TransientError(f"network of tenant {tenant} still present after removal")
        except NetlinkError as error:
            raise TransientError(f"netlink refused to remove network of tenant {tenant}: {error}") from error
        lease = self.leases.release(tenant)
        if lease is not None:
            removed.append(f"address {lease.tenant_address}")
        removed += self.release_range_if_unused()
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, removed=len(removed), ms=ms).info("Removed network")
        return removed


def remove_range_route(address_range: str) -> list[str]:
    """Fleet's unreachable route of `address_range` (told apart from others' by its protocol number)."""
    removed = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, proto=ROUTE_PROTO):
            network = f"{route.get('RTA_DST')}/{route['dst_len']}"
            ours = route["type"] == RTN_UNREACHABLE and route.get("RTA_PRIORITY") == ROUTE_METRIC
            if ours and network == address_range:
                ipr.route("del", dst=network, type="unreachable", proto=ROUTE_PROTO, priority=ROUTE_METRIC)
                removed.append(f"unreachable route {network}")
    return removed

"""Per-tenant networking for the nspawn driver: netns, veth pair, address lease, nftables rules.

Layout per tenant `<t>`: a named network namespace `fleet-<t>` (/run/netns), a veth pair whose host end is
`fl<12 hex of sha256(t)>` (interface names are at most 15 characters, tenant names up to 63) carrying the
ifalias `fleet:<t>` so ownership is explicit, and whose other end is `eth0` inside the namespace. Each
tenant leases a /30 from the node's range: the host end gets the first address, the tenant the second and
a default route through the host end.

Firewall: one table `inet fleet`, marked by its `tenant_links` set's comment, holds three sets whose
elements carry the comment `fleet:<t>`: `tenant_links` (every tenant veth), `tenant_ingress` (veth . port
pairs) and `tenant_sources` (veth . the tenant's leased address). Base rules: before connection tracking,
a packet in from a tenant veth whose source is not that veth's leased address is dropped (no tenant can
pass for another, nor inject into the host's connections to another), and so is all IPv6 from tenants;
the host (and the gateway running on it) reaches a tenant only on its ingress ports; traffic in from a
tenant veth is dropped unless it answers a connection the host opened (so tenants never reach the host's
own services, nor another tenant through the host); forwarding between tenant veths is dropped.
ip_forward is left as found: tenants need no egress.

The namespace belongs to the host's user namespace, so a tenant's root holds no capability over it: it
cannot change its address or routes, nor open raw sockets. Two per-namespace sysctls give back what a
service needs without privilege: `ip_unprivileged_port_start=0` (bind port 80) and `ping_group_range`
(ping through ICMP datagram sockets).

This module must never touch an interface, namespace or nft table that does not carry Fleet's marker, and
no value reaches nft text unchecked (names are DNS labels, interface names hex, ports ints).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from pyroute2 import IPRoute, NetlinkError

from drivers import nspawn_netns
from drivers.nspawn_nft import Nft
from specs import PermanentError, TransientError, validate_name

NETNS_DIR = Path("/run/netns")
TABLE = "fleet"
TABLE_MARKER = "fleet: owned by Fleet, do not edit"
ALIAS_PREFIX = "fleet:"
LOCK_DIR = Path("/run/lock")
_VETH = re.compile(r"^fl[0-9a-f]{12}$")
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


@dataclass(frozen=True)
class Lease:
    index: int
    network: ipaddress.IPv4Network

    @property
    def host_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def tenant_address(self) -> str:
        return str(self.network.network_address + 2)


class Leases:
    """Tenant -> /30 index, persisted in one JSON file written atomically under an exclusive flock.

    The file is the record; allocation also skips any /30 a Fleet veth on the host still carries, so a
    lost or stale file can never hand out an address twice.
    """

    def __init__(self, path: Path, address_range: str) -> None:
        self.path = path
        self.range = ipaddress.IPv4Network(address_range)
        if self.range.prefixlen > 30:
            raise PermanentError(f"address range {address_range} is smaller than one /30", reason="BadRange")
        self.subnets = 1 << (30 - self.range.prefixlen)
        self._lock = threading.Lock()

    def _subnet(self, index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.range.network_address) + 4 * index, 30))

    def index_of(self, address: str) -> int | None:
        ip = ipaddress.IPv4Address(address)
        if ip not in self.range:
            return None
        return (int(ip) - int(self.range.network_address)) // 4

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise TransientError(f"lease file {self.path} is unreadable: {error}") from error
        return {str(name): int(index) for name, index in data.get("leases", {}).items()}

    def _save(self, leases: dict[str, int]) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            json.dump({"range": str(self.range), "leases": dict(sorted(leases.items()))}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def get(self, tenant: str) -> Lease | None:
        with self._locked():
            index = self._load().get(tenant)
        return None if index is None else Lease(index, self._subnet(index))

    def all(self) -> dict[str, Lease]:
        with self._locked():
            return {name: Lease(index, self._subnet(index)) for name, index in self._load().items()}

    def acquire(self, tenant: str, in_use_on_host: dict[int, str]) -> Lease:
        """The tenant's lease, or the lowest /30 neither leased nor on a host interface of another tenant.

        `in_use_on_host` maps /30 indexes to the Fleet veth carrying them."""
        with self._locked():
            leases = self._load()
            if tenant in leases:
                return Lease(leases[tenant], self._subnet(leases[tenant]))
            # A veth still carrying an address of this tenant (lease file lost): take that one back.
            for index, owner in in_use_on_host.items():
                if owner == veth_name(tenant) and index not in leases.values():
                    leases[tenant] = index
                    self._save(leases)
                    return Lease(index, self._subnet(index))
            taken = set(leases.values()) | set(in_use_on_host)
            for index in range(self.subnets):
                if index not in taken:
                    leases[tenant] = index
                    self._save(leases)
                    return Lease(index, self._subnet(index))
        raise PermanentError(f"address range {self.range} has no free /30 left", reason="AddressesExhausted")

    def release(self, tenant: str) -> Lease | None:
        with self._locked():
            leases = self._load()
            index = leases.pop(tenant, None)
            if index is not None:
                self._save(leases)
        return None if index is None else Lease(index, self._subnet(index))


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PermanentError(f"port {port!r} is not 1-65535", reason="BadPort")
    return port


def _check_veth(name: str) -> str:
    if not _VETH.fullmatch(name):
        raise PermanentError(f"interface name {name!r} is not a Fleet veth name", reason="BadInterface")
    return name


def _check_address(address: str) -> str:
    return str(ipaddress.IPv4Address(address))


def _base_ruleset(
    table: str,
    links: dict[str, str],
    ingress: dict[tuple[str, int], str],
    sources: dict[tuple[str, str], str],
) -> str:
    """The whole table as nft text, keeping the given set elements (veth -> tenant, (veth, port) -> tenant,
    (veth, address) -> tenant)."""
    link_elements = ", ".join(
        f'"{_check_veth(veth)}" comment "{ALIAS_PREFIX}{validate_name(tenant)}"'
        for veth, tenant in sorted(links.items())
    )
    ingress_elements = ", ".join(
        f'"{_check_veth(veth)}" . {_check_port(port)} comment "{ALIAS_PREFIX}{validate_name(tenant)}"'
        for (veth, port), tenant in sorted(ingress.items())
    )
    source_elements = ", ".join(
        f'"{_check_veth(veth)}" . {_check_address(address)} comment "{ALIAS_PREFIX}{validate_name(tenant)}"'
        for (veth, address), tenant in sorted(sources.items())
    )
    # nft 1.0.6: every rule ends with a newline before '}' (a rule directly followed by '}' fails to parse).
    return f"""table inet {table} {{
  set tenant_links {{
    type ifname
    comment "{TABLE_MARKER}"
    {f"elements = {{ {link_elements} }}" if link_elements else ""}
  }}
  set tenant_ingress {{
    type ifname . inet_service
    comment "{TABLE_MARKER}"
    {f"elements = {{ {ingress_elements} }}" if ingress_elements else ""}
  }}
  set tenant_sources {{
    type ifname . ipv4_addr
    comment "{TABLE_MARKER}"
    {f"elements = {{ {source_elements} }}" if source_elements else ""}
  }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    iifname @tenant_links meta nfproto ipv6 counter drop comment "fleet:base:no-ipv6"
    iifname @tenant_links iifname . ip saddr != @tenant_sources counter drop comment "fleet:base:antispoof"
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname @tenant_links ct state established,related accept comment "fleet:base:input-replies"
    iifname @tenant_links drop comment "fleet:base:input-drop"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @tenant_links drop comment "fleet:base:forward-from-tenant"
    oifname @tenant_links drop comment "fleet:base:forward-to-tenant"
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname . tcp dport @tenant_ingress accept comment "fleet:base:output-ingress"
    oifname @tenant_links ct state established,related accept comment "fleet:base:output-replies"
    oifname @tenant_links drop comment "fleet:base:output-drop"
  }}
}}
"""


BASE_RULES = frozenset(
    {
        "fleet:base:no-ipv6",
        "fleet:base:antispoof",
        "fleet:base:input-replies",
        "fleet:base:input-drop",
        "fleet:base:forward-from-tenant",
        "fleet:base:forward-to-tenant",
        "fleet:base:output-ingress",
        "fleet:base:output-replies",
        "fleet:base:output-drop",
    }
)


@dataclass(frozen=True)
class FirewallState:
    exists: bool
    owned: bool
    base_rules: frozenset[str] = frozenset()
    links: dict[str, str] = field(default_factory=dict)  # veth -> tenant
    ingress: dict[tuple[str, int], str] = field(default_factory=dict)  # (veth, port) -> tenant
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (veth, address) -> tenant

    @property
    def complete(self) -> bool:
        return self.exists and self.owned and self.base_rules >= BASE_RULES


class Firewall:
    """The `inet fleet` table, read as JSON and changed with nft scripts, in-process through libnftables
    (`nspawn_nft`; the `nft` tool with an argument list where the library is missing, never a shell)."""

    def __init__(self, nft: str = "nft", table: str = TABLE) -> None:
        self.nft = nft
        self._nft = Nft(nft)
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", table):
            raise PermanentError(f"nft table name {table!r} is not a plain identifier", reason="BadTable")
        self.table = table
        # Read-modify-write of the table (a rebuild keeps the elements it read) must not interleave between
        # workers or processes: a second declaration of the table would also append its base rules twice.
        self._lock = threading.RLock()
        self._depth = 0
        self.lock_path = LOCK_DIR / f"fleet-nft-{table}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive within the process (RLock, re-entrant) and across processes (flock, outermost only)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.lock_path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0

    def _run(self, script: str) -> str:
        done = self._nft.run(script)
        if not done.ok:
            first = script.strip().splitlines()[0] if script.strip() else ""
            raise TransientError(f"nft refused {first!r}...: {done.error}")
        return done.output

    def read(self) -> FirewallState:
        done = self._nft.run(f"list table inet {self.table}", json=True)
        if not done.ok:
            if "No such file or directory" in done.error:
                return FirewallState(exists=False, owned=False)
            raise TransientError(f"nft could not list table inet {self.table}: {done.error}")
        owned = False
        rules: set[str] = set()
        links: dict[str, str] = {}
        ingress: dict[tuple[str, int], str] = {}
        sources: dict[tuple[str, str], str] = {}
        for item in json.loads(done.output).get("nftables", []):
            if "set" in item:
                nft_set = item["set"]
                if nft_set.get("name") == "tenant_links" and nft_set.get("comment") == TABLE_MARKER:
                    owned = True
                for element in nft_set.get("elem", []):
                    value, comment = element, ""
                    if isinstance(element, dict) and "elem" in element:
                        value, comment = element["elem"].get("val"), element["elem"].get("comment", "")
                    tenant = comment.removeprefix(ALIAS_PREFIX) if comment.startswith(ALIAS_PREFIX) else ""
                    if nft_set.get("name") == "tenant_links" and isinstance(value, str):
                        links[value] = tenant
                    elif nft_set.get("name") == "tenant_ingress" and isinstance(value, dict):
                        veth, port = value["concat"]
                        ingress[(str(veth), int(port))] = tenant
                    elif nft_set.get("name") == "tenant_sources" and isinstance(value, dict):
                        veth, address = value["concat"]
                        sources[(str(veth), str(address))] = tenant
            elif "rule" in item and str(item["rule"].get("comment", "")).startswith("fleet:base:"):
                rules.add(item["rule"]["comment"])
        return FirewallState(
            exists=True, owned=owned, base_rules=frozenset(rules), links=links, ingress=ingress, sources=sources
        )

    def ensure_table(self, known_sources: dict[tuple[str, str], str] | None = None) -> FirewallState:
        """Create the table, or rebuild it in one transaction (keeping every element) if a base rule is gone.

        `known_sources` (from the address leases) fills `tenant_sources` when the table being rebuilt had
        none (written by an older Fleet): every running tenant keeps answering through the rebuild."""
        with self._locked():
            state = self.read()
            if state.exists and not state.owned:
                message = f"nft table inet {self.table} exists but lacks Fleet's marker; refusing to touch it"
                raise PermanentError(message, reason="NotOwned")
            if state.complete:
                return state
            script = ""
            if state.exists:
                script = f"delete table inet {self.table}\n"
            sources = dict(state.sources)
            for (veth, address), tenant in (known_sources or {}).items():
                if veth in state.links and not any(key[0] == veth for key in sources):
                    sources[(veth, address)] = tenant
            self._run(script + _base_ruleset(self.table, state.links, state.ingress, sources))
            logger.bind(table=self.table, rebuilt=state.exists).info("Wrote firewall table")
            return self.read()

    def ensure_tenant(
        self,
        tenant: str,
        veth: str,
        ports: tuple[int, ...],
        address: str,
        known_sources: dict[tuple[str, str], str] | None = None,
    ) -> None:
        with self._locked():
            state = self.ensure_table(known_sources)
            comment = f'comment "{ALIAS_PREFIX}{validate_name(tenant)}"'
            wanted = {(_check_veth(veth), _check_port(port)) for port in ports}
            have = {key for key, owner in state.ingress.items() if key[0] == veth}
            lines = []
            stale = sorted(have - wanted)
            if stale:
                items = ", ".join(f'"{v}" . {p}' for v, p in stale)
                lines.append(f"delete element inet {self.table} tenant_ingress {{ {items} }}")
            missing = sorted(wanted - have)
            if missing:
                items = ", ".join(f'"{v}" . {p} {comment}' for v, p in missing)
                lines.append(f"add element inet {self.table} tenant_ingress {{ {items} }}")
            wrong_sources = sorted(key for key in state.sources if key[0] == veth and key[1] != address)
            if wrong_sources:
                items = ", ".join(f'"{v}" . {a}' for v, a in wrong_sources)
                lines.append(f"delete element inet {self.table} tenant_sources {{ {items} }}")
            if (veth, _check_address(address)) not in state.sources:
                # Before the link joins tenant_links: its packets are never let in without their source pinned.
                lines.append(f'add element inet {self.table} tenant_sources {{ "{veth}" . {address} {comment} }}')
            if veth not in state.links:
                lines.append(f'add element inet {self.table} tenant_links {{ "{veth}" {comment} }}')
            if lines:
                self._run("\n".join(lines) + "\n")

    def remove_tenant(self, veth: str) -> list[str]:
        with self._locked():
            state = self.read()
            if not state.exists or not state.owned:
                return []
            removed: list[str] = []
            lines: list[str] = []
            ports = sorted(key for key in state.ingress if key[0] == _check_veth(veth))
            if ports:
                items = ", ".join(f'"{name}" . {port}' for name, port in ports)
                lines.append(f"delete element inet {self.table} tenant_ingress {{ {items} }}")
                removed.extend(f"firewall rule {v} tcp/{p}" for v, p in ports)
            if veth in state.links:
                lines.append(f'delete element inet {self.table} tenant_links {{ "{veth}" }}')
                removed.append(f"firewall isolation of {veth}")
            sources = sorted(key for key in state.sources if key[0] == veth)
            if sources:
                items = ", ".join(f'"{v}" . {a}' for v, a in sources)
                lines.append(f"delete element inet {self.table} tenant_sources {{ {items} }}")
                removed.extend(f"firewall source pin {v} {a}" for v, a in sources)
            if lines:
                self._run("\n".join(lines) + "\n")
            after = self.read()
            if veth in after.links or any(key[0] == veth for key in [*after.ingress, *after.sources]):
                raise TransientError(f"firewall elements of {veth} are still present after removal")
            return removed

    def remove_table_if_unused(self) -> bool:
        with self._locked():
            state = self.read()
            if state.exists and state.owned and not state.links and not state.ingress and not state.sources:
                self._run(f"delete table inet {self.table}\n")
                return True
            return False


def _eth0_address() -> str | None:
    """Runs inside a tenant's namespace: the first IPv4 address of eth0."""
    with IPRoute() as nsr:
        eth0 = nsr.link_lookup(ifname="eth0")
        addresses = _ipv4_addresses(nsr, eth0[0]) if eth0 else []
        return str(addresses[0][0]) if addresses else None


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


def _ipv4_addresses(ipr: IPRoute, index: int) -> list[tuple[str, int]]:
    return [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)]


class Networks:
    """Facade the driver uses: ensure / observe / remove a tenant's network; list tenants that have one."""

    def __init__(self, state_dir: Path, address_range: str = "10.213.0.0/16", firewall: Firewall | None = None) -> None:
        self.leases = Leases(state_dir / "leases.json", address_range)
        self.firewall = firewall or Firewall()

    # -- host reading ---------------------------------------------------------------------------------
    def _fleet_veths(self, ipr: IPRoute) -> dict[str, tuple[int, str]]:
        """tenant -> (ifindex, veth name), from the ifalias marker."""
        found: dict[str, tuple[int, str]] = {}
        for link in ipr.get_links():
            alias = link.get("IFLA_IFALIAS") or ""
            name = link.get("IFLA_IFNAME") or ""
            if alias.startswith(ALIAS_PREFIX) and _VETH.fullmatch(name):
                found[alias.removeprefix(ALIAS_PREFIX)] = (link["index"], name)
        return found

    def _host_indexes(self, ipr: IPRoute) -> dict[int, str]:
        """/30 indexes carried by Fleet veths on the host, and the veth carrying each."""
        used: dict[int, str] = {}
        # One dump of every IPv4 address (its label is the interface's name), not a link dump plus one
        # request per veth: with hundreds of tenants those round trips dominated every network setup.
        for message in ipr.get_addr(family=2):
            label = message.get("IFA_LABEL") or ""
            if not _VETH.fullmatch(label):
                continue
            lease_index = self.leases.index_of(message.get("IFA_ADDRESS"))
            if lease_index is not None:
                used[lease_index] = label
        return used

    def list_tenants(self) -> list[str]:
        names = {name.removeprefix("fleet-") for name in nspawn_netns.names() if name.startswith("fleet-")}
        with IPRoute() as ipr:
            names |= set(self._fleet_veths(ipr))
        names |= set(self.leases.all())
        return sorted(names)

    # -- ensure -------------------------------------------------------------------------------------------
    def ensure(self, tenant: str, ports: tuple[int, ...]) -> str:
        """Make the tenant's namespace, veth, addresses, route and firewall match; returns its address."""
        started = time.perf_counter()
        veth, peer, ns = veth_name(tenant), _peer_name(tenant), netns_name(tenant)
        try:
            with IPRoute() as ipr:
                # The host is searched for addresses in use only when a lease is to be made.
                lease = self.leases.get(tenant) or self.leases.acquire(tenant, self._host_indexes(ipr))
                nspawn_netns.create(netns_path(tenant))
                self._ensure_host_end(ipr, tenant, veth, peer, ns, lease)
            self._ensure_namespace_end(tenant, peer, lease)
            self.firewall.ensure_tenant(tenant, veth, ports, lease.tenant_address, self._known_sources())
        except NetlinkError as error:
            raise TransientError(f"netlink refused a change for tenant {tenant}: {error}") from error
        except OSError as error:
            raise TransientError(f"network setup of tenant {tenant} failed: {error}") from error
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, address=lease.tenant_address, ports=list(ports), ms=ms).info("Applied network")
        return lease.tenant_address

    def _known_sources(self) -> dict[tuple[str, str], str]:
        return {(veth_name(name), lease.tenant_address): name for name, lease in self.leases.all().items()}

    def _ensure_host_end(self, ipr: IPRoute, tenant: str, veth: str, peer: str, ns: str, lease: Lease) -> None:
        indexes = ipr.link_lookup(ifname=veth)
        if indexes:
            link = ipr.get_links(indexes[0])[0]
            alias = link.get("IFLA_IFALIAS") or ""
            if alias != ALIAS_PREFIX + tenant:
                raise PermanentError(
                    f"interface {veth} exists with alias {alias!r}, not {ALIAS_PREFIX}{tenant}; refusing to adopt it",
                    reason="NotOwned",
                )
            if not self._namespace_end(ns, peer):
                # The namespace was recreated and took the old peer with it: a veth without its other end.
                ipr.link("del", index=indexes[0])
                indexes = []
        created = not indexes
        if created:
            ipr.link("add", ifname=veth, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
            indexes = ipr.link_lookup(ifname=veth)
        index = indexes[0]
        ipr.link("set", index=index, ifalias=ALIAS_PREFIX + tenant, state="up")
        # A link made just now has no address to compare (each netlink round trip costs ~1 ms in pyroute2).
        _ensure_address(ipr, index, lease.host_address, fresh=created)

    def _namespace_end(self, ns: str, peer: str) -> bool:
        def found() -> bool:
            with IPRoute() as nsr:
                return bool(nsr.link_lookup(ifname="eth0") or nsr.link_lookup(ifname=peer))

        try:
            return nspawn_netns.inside(NETNS_DIR / ns, found)
        except FileNotFoundError:
            return False

    def _ensure_namespace_end(self, tenant: str, peer: str, lease: Lease) -> None:
        nspawn_netns.inside(netns_path(tenant), lambda: self._configure_namespace_end(netns_name(tenant), peer, lease))

    def _configure_namespace_end(self, ns: str, peer: str, lease: Lease) -> None:
        """Runs inside the tenant's namespace: eth0, its address, lo, the default route, the sysctls."""
        _write_namespace_sysctls()
        with IPRoute() as nsr:
            indexes = nsr.link_lookup(ifname="eth0")
            renamed = not indexes
            if renamed:
                indexes = nsr.link_lookup(ifname=peer)
                if not indexes:
                    raise TransientError(f"veth end {peer} vanished from namespace {ns}")
            index = indexes[0]
            if renamed:  # one message: the rename happens before the link comes up (as `ip link set ... name eth0 up`)
                nsr.link("set", index=index, ifname="eth0", state="up")
            else:
                nsr.link("set", index=index, state="up")
            _ensure_address(nsr, index, lease.tenant_address, fresh=renamed)
            loopback = nsr.link_lookup(ifname="lo")
            if loopback:
                nsr.link("set", index=loopback[0], state="up")
            nsr.route("replace", dst="0.0.0.0/0", gateway=lease.host_address, oif=index)

    # -- observe ----------------------------------------------------------------------------------------
    def observe(self, tenant: str, firewall: FirewallState | None = None) -> NetworkState:
        veth, ns = veth_name(tenant), netns_name(tenant)
        problems: list[str] = []
        has_netns = nspawn_netns.is_bound(netns_path(tenant))
        veth_present = veth_up = False
        with IPRoute() as ipr:
            indexes = ipr.link_lookup(ifname=veth)
            if indexes:
                link = ipr.get_links(indexes[0])[0]
                veth_present = (link.get("IFLA_IFALIAS") or "") == ALIAS_PREFIX + tenant
                veth_up = veth_present and link.get("IFLA_OPERSTATE") == "UP"
        address = None
        if has_netns:
            try:
                address = nspawn_netns.inside(netns_path(tenant), _eth0_address)
            except FileNotFoundError:
                has_netns = False
        lease = self.leases.get(tenant)
        firewall = firewall or self.firewall.read()
        ports: tuple[int, ...] | None = None
        pinned = lease is not None and (veth, lease.tenant_address) in firewall.sources
        if firewall.complete and veth in firewall.links and pinned:
            ports = tuple(sorted(port for (name, port) in firewall.ingress if name == veth))
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
            netns=has_netns, veth=veth_present, veth_up=veth_up, address=address, ports=ports, problems=tuple(problems)
        )

    # -- remove -----------------------------------------------------------------------------------------
    def remove(self, tenant: str) -> list[str]:
        """Firewall elements, veth, namespace and lease, each verified gone; returns what was removed."""
        started = time.perf_counter()
        veth, ns = veth_name(tenant), netns_name(tenant)
        removed = self.firewall.remove_tenant(veth)
        try:
            with IPRoute() as ipr:
                indexes = ipr.link_lookup(ifname=veth)
                if indexes:
                    alias = ipr.get_links(indexes[0])[0].get("IFLA_IFALIAS") or ""
                    if alias == ALIAS_PREFIX + tenant:
                        ipr.link("del", index=indexes[0])
                        removed.append(f"veth {veth}")
                if ns in nspawn_netns.names():
                    nspawn_netns.remove(netns_path(tenant))
                    removed.append(f"network namespace {ns}")
                if tenant in self._fleet_veths(ipr) or ns in nspawn_netns.names():
                    raise TransientError(f"network of tenant {tenant} still present after removal")
        except NetlinkError as error:
            raise TransientError(f"netlink refused to remove network of tenant {tenant}: {error}") from error
        lease = self.leases.release(tenant)
        if lease is not None:
            removed.append(f"address {lease.tenant_address}")
        ms = round((time.perf_counter() - started) * 1000, 1)
        logger.bind(tenant=tenant, removed=len(removed), ms=ms).info("Removed network")
        return removed

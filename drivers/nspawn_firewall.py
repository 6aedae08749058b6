"""The nspawn driver's firewall: one nftables table `inet fleet` that isolates tenants.

The table is marked by its `tenant_links` set's comment and holds three sets whose elements carry the
comment `fleet:<t>`: `tenant_links` (every tenant veth), `tenant_ingress` (veth . port pairs) and
`tenant_sources` (veth . the tenant's leased address). Base rules: before connection tracking, a packet in
from a tenant veth whose source is not that veth's leased address is dropped (no tenant can pass for
another, nor inject into the host's connections to another), and so is all IPv6 from tenants; the host
(and the gateway running on it) reaches a tenant only on its ingress ports; traffic in from a tenant veth
is dropped unless it answers a connection the host opened (so tenants never reach the host's own
services, nor another tenant through the host); forwarding between tenant veths is dropped.

Egress (`nspawn_egress`): four more sets of per-tenant elements (`egress_any`, `egress_ports`,
`egress_internet`, `egress_internet_ports`), the constant `egress_blocked`, and the node's `egress_out`,
`egress_nat` and `egress_guard`; a tenant's packet out of the outbound interface jumps to chain `egress`,
replies come back as established, and a `postrouting` NAT chain (present only while some tenant has egress)
masquerades the tenant range.

Read as JSON and changed with nft scripts, in-process through libnftables (`nspawn_nft`). This module must
never change a table that does not carry Fleet's marker, and no value reaches nft text unchecked (names
are DNS labels, interface names hex, ports ints, addresses parsed).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from drivers import nspawn_egress
from drivers.nspawn_nft import Nft
from specs import PermanentError, TransientError, validate_name

TABLE = "fleet"
TABLE_MARKER = "fleet: owned by Fleet, do not edit"
ALIAS_PREFIX = "fleet:"  # the owner marker: an element's comment, a veth's ifalias
LOCK_DIR = Path("/run/lock")
VETH = re.compile(r"^fl[0-9a-f]{12}$")


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PermanentError(f"port {port!r} is not 1-65535", reason="BadPort")
    return port


def _check_veth(name: str) -> str:
    if not VETH.fullmatch(name):
        raise PermanentError(f"interface name {name!r} is not a Fleet veth name", reason="BadInterface")
    return name


def _check_address(address: str) -> str:
    return str(ipaddress.IPv4Address(address))


def _comment(tenant: str) -> str:
    return f'comment "{ALIAS_PREFIX}{validate_name(tenant)}"'


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }}" if items else ""


def _nat_chain(table: str) -> str:
    """The NAT chain of egress: present while some tenant has an egress rule (with the node's elements)."""
    return (
        f"add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
        f"add rule inet {table} postrouting oifname @egress_out ip saddr @egress_nat masquerade "
        f'comment "{NAT_RULE}"\n'
    )


def _base_ruleset(table: str, state: FirewallState) -> str:
    """The whole table as nft text, keeping the set elements of `state` (and its NAT chain when the node's
    egress is set up)."""
    links = [f'"{_check_veth(veth)}" {_comment(tenant)}' for veth, tenant in sorted(state.links.items())]
    ingress = [
        f'"{_check_veth(veth)}" . {_check_port(port)} {_comment(tenant)}'
        for (veth, port), tenant in sorted(state.ingress.items())
    ]
    sources = [
        f'"{_check_veth(veth)}" . {_check_address(address)} {_comment(tenant)}'
        for (veth, address), tenant in sorted(state.sources.items())
    ]
    egress: dict[str, list[str]] = {name: [] for name in nspawn_egress.EGRESS_SETS}
    for element, tenant in sorted(state.egress.items(), key=lambda item: str(item[0])):
        _check_veth(element[1])
        egress[element[0]].append(f"{nspawn_egress.element_text(element)} {_comment(tenant)}")
    node = f'comment "{NODE_COMMENT}"'
    out = [f'"{nspawn_egress.check_interface(name)}" {node}' for name in state.egress_out]
    guard = [f'"{nspawn_egress.check_interface(name)}" {node}' for name in state.egress_guard]
    nat = [f"{ipaddress.IPv4Network(network)} {node}" for network in state.egress_nat]
    blocked = ", ".join(nspawn_egress.BLOCKED)
    # nft 1.0.6: every rule ends with a newline before '}' (a rule directly followed by '}' fails to parse).
    text = f"""table inet {table} {{
  set tenant_links {{
    type ifname
    comment "{TABLE_MARKER}"
    {_elements(links)}
  }}
  set tenant_ingress {{
    type ifname . inet_service
    comment "{TABLE_MARKER}"
    {_elements(ingress)}
  }}
  set tenant_sources {{
    type ifname . ipv4_addr
    comment "{TABLE_MARKER}"
    {_elements(sources)}
  }}
  set egress_any {{
    type ifname . ipv4_addr
    flags interval
    comment "{TABLE_MARKER}"
    {_elements(egress["egress_any"])}
  }}
  set egress_ports {{
    type ifname . ipv4_addr . inet_service
    flags interval
    comment "{TABLE_MARKER}"
    {_elements(egress["egress_ports"])}
  }}
  set egress_internet {{
    type ifname
    comment "{TABLE_MARKER}"
    {_elements(egress["egress_internet"])}
  }}
  set egress_internet_ports {{
    type ifname . inet_service
    comment "{TABLE_MARKER}"
    {_elements(egress["egress_internet_ports"])}
  }}
  set egress_blocked {{
    type ipv4_addr
    flags interval
    comment "{TABLE_MARKER}"
    elements = {{ {blocked} }}
  }}
  set egress_out {{
    type ifname
    comment "{TABLE_MARKER}"
    {_elements(out)}
  }}
  set egress_guard {{
    type ifname
    comment "{TABLE_MARKER}"
    {_elements(guard)}
  }}
  set egress_nat {{
    type ipv4_addr
    flags interval
    comment "{TABLE_MARKER}"
    {_elements(nat)}
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
  chain egress {{
    iifname . ip daddr @egress_any accept comment "fleet:base:egress-any"
    meta l4proto {{ tcp, udp }} iifname . ip daddr . th dport @egress_ports accept comment "fleet:base:egress-ports"
    ip daddr @egress_blocked return comment "fleet:base:egress-blocked"
    iifname @egress_internet accept comment "fleet:base:egress-internet"
    meta l4proto {{ tcp, udp }} iifname . th dport @egress_internet_ports accept \
      comment "fleet:base:egress-internet-ports"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @egress_out oifname @tenant_links ct state established,related accept comment "fleet:base:egress-replies"
    iifname @tenant_links oifname @egress_out jump egress comment "fleet:base:egress"
    iifname @tenant_links drop comment "fleet:base:forward-from-tenant"
    oifname @tenant_links drop comment "fleet:base:forward-to-tenant"
    iifname @egress_guard drop comment "fleet:base:egress-guard"
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname . tcp dport @tenant_ingress accept comment "fleet:base:output-ingress"
    oifname @tenant_links ct state established,related accept comment "fleet:base:output-replies"
    oifname @tenant_links drop comment "fleet:base:output-drop"
  }}
}}
"""
    return text + (_nat_chain(table) if state.egress_out else "")


BASE_RULES = frozenset(
    {
        "fleet:base:no-ipv6",
        "fleet:base:antispoof",
        "fleet:base:input-replies",
        "fleet:base:input-drop",
        "fleet:base:egress-any",
        "fleet:base:egress-ports",
        "fleet:base:egress-blocked",
        "fleet:base:egress-internet",
        "fleet:base:egress-internet-ports",
        "fleet:base:egress-replies",
        "fleet:base:egress",
        "fleet:base:forward-from-tenant",
        "fleet:base:forward-to-tenant",
        "fleet:base:egress-guard",
        "fleet:base:output-ingress",
        "fleet:base:output-replies",
        "fleet:base:output-drop",
    }
)
NAT_RULE = "fleet:egress:masquerade"
NODE_COMMENT = "fleet:node"  # the comment of the node's own elements (outbound interface, NAT range)


@dataclass(frozen=True)
class FirewallState:
    exists: bool
    owned: bool
    base_rules: frozenset[str] = frozenset()
    links: dict[str, str] = field(default_factory=dict)  # veth -> tenant
    ingress: dict[tuple[str, int], str] = field(default_factory=dict)  # (veth, port) -> tenant
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (veth, address) -> tenant
    egress: dict[nspawn_egress.Element, str] = field(default_factory=dict)  # egress set element -> tenant
    egress_out: tuple[str, ...] = ()  # the outbound interface, while some tenant has egress
    egress_guard: tuple[str, ...] = ()  # the same, when Fleet switched its forwarding on
    egress_nat: tuple[str, ...] = ()  # the tenant address range masqueraded out of it
    nat_rule: bool = False  # the postrouting chain's masquerade rule
    blocked: frozenset[str] = frozenset()  # egress_blocked's elements

    @property
    def complete(self) -> bool:
        return (
            self.exists and self.owned and self.base_rules >= BASE_RULES
            and self.blocked == frozenset(nspawn_egress.BLOCKED)
        )

    @property
    def node_egress(self) -> bool:
        """The node's side of egress is whole: an outbound interface, a range to masquerade, the NAT rule."""
        return bool(self.egress_out and self.egress_nat and self.nat_rule)

    def egress_of(self, veth: str) -> set[nspawn_egress.Element]:
        return {element for element in self.egress if element[1] == veth}


class Firewall:
    """The `inet fleet` table, read as JSON and changed with nft scripts, in-process through libnftables
    (`nspawn_nft`; the `nft` tool with an argument list where the library is missing, never a shell)."""

    def __init__(self, nft: str = "nft", table: str = TABLE) -> None:
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

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The table's lock, for a caller whose change spans the table and the host (egress sysctls)."""
        return self._locked()

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
        owned = nat_rule = False
        rules: set[str] = set()
        links: dict[str, str] = {}
        ingress: dict[tuple[str, int], str] = {}
        sources: dict[tuple[str, str], str] = {}
        egress: dict[nspawn_egress.Element, str] = {}
        node: dict[str, list[str]] = {"egress_out": [], "egress_guard": [], "egress_nat": [], "egress_blocked": []}
        for item in json.loads(done.output).get("nftables", []):
            if "set" in item:
                nft_set = item["set"]
                name = nft_set.get("name")
                if name == "tenant_links" and nft_set.get("comment") == TABLE_MARKER:
                    owned = True
                for element in nft_set.get("elem", []):
                    value, comment = element, ""
                    if isinstance(element, dict) and "elem" in element:
                        value, comment = element["elem"].get("val"), element["elem"].get("comment", "")
                    tenant = comment.removeprefix(ALIAS_PREFIX) if comment.startswith(ALIAS_PREFIX) else ""
                    if name == "tenant_links" and isinstance(value, str):
                        links[value] = tenant
                    elif name == "tenant_ingress" and isinstance(value, dict):
                        veth, port = value["concat"]
                        ingress[(str(veth), int(port))] = tenant
                    elif name == "tenant_sources" and isinstance(value, dict):
                        veth, address = value["concat"]
                        sources[(str(veth), str(address))] = tenant
                    elif name in nspawn_egress.EGRESS_SETS:
                        found = nspawn_egress.element_from_json(name, value)
                        if found is not None:
                            egress[found] = tenant
                    elif name in ("egress_out", "egress_guard") and isinstance(value, str):
                        node[name].append(value)
                    elif name in ("egress_nat", "egress_blocked"):
                        node[name].append(nspawn_egress.network_of(value))
            elif "rule" in item:
                comment = str(item["rule"].get("comment", ""))
                if comment.startswith("fleet:base:"):
                    rules.add(comment)
                elif comment == NAT_RULE and item["rule"].get("chain") == "postrouting":
                    nat_rule = True
        return FirewallState(
            exists=True, owned=owned, base_rules=frozenset(rules), links=links, ingress=ingress, sources=sources,
            egress=egress, egress_out=tuple(sorted(node["egress_out"])),
            egress_guard=tuple(sorted(node["egress_guard"])), egress_nat=tuple(sorted(node["egress_nat"])),
            nat_rule=nat_rule, blocked=frozenset(node["egress_blocked"]),
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
            rebuilt = FirewallState(
                exists=True, owned=True, links=state.links, ingress=state.ingress, sources=sources, egress=state.egress,
                egress_out=state.egress_out, egress_guard=state.egress_guard, egress_nat=state.egress_nat,
            )
            self._run(script + _base_ruleset(self.table, rebuilt))
            logger.bind(table=self.table, rebuilt=state.exists).info("Wrote firewall table")
            return self.read()

    def ensure_tenant(
        self,
        tenant: str,
        veth: str,
        ports: tuple[int, ...],
        address: str,
        known_sources: dict[tuple[str, str], str] | None = None,
        egress: set[nspawn_egress.Element] | None = None,
    ) -> FirewallState:
        """The tenant's elements: its link, source pin, ingress ports and (`egress`, from
        `nspawn_egress.elements`) egress rules; stale ones go in the same transaction. Returns the table as
        it was read before the change."""
        with self._locked():
            state = self.ensure_table(known_sources)
            comment = _comment(tenant)
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
            lines += self._egress_changes(state, veth, egress or set(), comment)
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
            return state

    def _egress_changes(
        self, state: FirewallState, veth: str, wanted: set[nspawn_egress.Element], comment: str
    ) -> list[str]:
        """nft commands that make the egress elements of `veth` exactly `wanted` (deletions first: two
        rules' intervals may not overlap within a set, so a replaced range must be gone before its successor)."""
        if any(element[1] != veth for element in wanted):
            raise PermanentError(f"egress elements for another interface than {veth}", reason="BadEgress")
        have = state.egress_of(veth)
        lines = []
        for kind in nspawn_egress.EGRESS_SETS:
            stale = sorted((e for e in have - wanted if e[0] == kind), key=str)
            if stale:
                items = ", ".join(nspawn_egress.element_text(e) for e in stale)
                lines.append(f"delete element inet {self.table} {kind} {{ {items} }}")
        for kind in nspawn_egress.EGRESS_SETS:
            missing = sorted((e for e in wanted - have if e[0] == kind), key=str)
            if missing:
                items = ", ".join(f"{nspawn_egress.element_text(e)} {comment}" for e in missing)
                lines.append(f"add element inet {self.table} {kind} {{ {items} }}")
        return lines

    def ensure_node_egress(self, interface: str, nat_range: str, *, guard: bool) -> None:
        """The node's side of egress: `interface` the one outbound interface, `nat_range` masqueraded out
        of it, `guard` (Fleet switched its forwarding on) whether it forwards nothing but replies to tenants."""
        interface = nspawn_egress.check_interface(interface)
        network = str(ipaddress.IPv4Network(nat_range))
        node = f'comment "{NODE_COMMENT}"'
        with self._locked():
            state = self.ensure_table()
            lines = []
            for name, wanted in (("egress_out", {interface}), ("egress_guard", {interface} if guard else set()),
                                 ("egress_nat", {network})):
                have = set(getattr(state, name))
                quote = (lambda value: value) if name == "egress_nat" else (lambda value: f'"{value}"')
                if have - wanted:
                    items = ", ".join(quote(value) for value in sorted(have - wanted))
                    lines.append(f"delete element inet {self.table} {name} {{ {items} }}")
                if wanted - have:
                    items = ", ".join(f"{quote(value)} {node}" for value in sorted(wanted - have))
                    lines.append(f"add element inet {self.table} {name} {{ {items} }}")
            script = "\n".join(lines) + "\n" if lines else ""
            if not state.nat_rule:
                script += f"delete chain inet {self.table} postrouting\n" if self._has_nat_chain() else ""
                script += _nat_chain(self.table)
            if script:
                self._run(script)
                logger.bind(table=self.table, interface=interface, guard=guard).info("Set up egress on the node")

    def clear_node_egress(self) -> bool:
        """Take the node's side of egress away (NAT chain, outbound interface, range, guard); True if any was there."""
        with self._locked():
            state = self.read()
            if not state.exists or not state.owned:
                return False
            script = f"delete chain inet {self.table} postrouting\n" if self._has_nat_chain() else ""
            for name in ("egress_out", "egress_guard", "egress_nat"):
                if getattr(state, name):
                    script += f"flush set inet {self.table} {name}\n"
            if script:
                self._run(script)
                logger.bind(table=self.table).info("Removed egress from the node")
            return bool(script)

    def _has_nat_chain(self) -> bool:
        return self._nft.run(f"list chain inet {self.table} postrouting").ok

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
            egress = self._egress_changes(state, veth, set(), "")
            if egress:
                lines += egress
                removed.append(f"egress rules of {veth}")
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
            if veth in after.links or any(key[0] == veth for key in [*after.ingress, *after.sources]) or \
                    after.egress_of(veth):
                raise TransientError(f"firewall elements of {veth} are still present after removal")
            return removed

    def remove_table_if_unused(self) -> bool:
        with self._locked():
            state = self.read()
            if state.exists and state.owned and not state.links and not state.ingress and not state.sources \
                    and not state.egress:
                self._run(f"delete table inet {self.table}\n")
                return True
            return False

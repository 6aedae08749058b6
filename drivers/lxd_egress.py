"""Egress by policy for the LXD driver: a tenant's `spec.network.egress` as rules of Fleet's ACL, and the
node guard that keeps the host and the other tenants out of reach whatever those rules allow.

Per tenant, egress rules in the `egress` list of Fleet's ACL, marked `fleet:<tenant>` as its ingress rule,
each with `source` = the tenant's address (the NIC's `security.ipv4_filtering` keeps a tenant from sending
from another's), action `allow`:

    {to: CIDR}                 one rule, destination the CIDR, every protocol
    {to: CIDR, ports: [..]}    two rules, protocol tcp and udp, destination_port the ports
    {to: internet ...}         the same with destination `PUBLIC`: every IPv4 network but `BLOCKED`

LXD ACL rules have no negation, so "internet" is the public complement of the ranges that are never
"internet" (the nspawn driver's `BLOCKED`: private, shared, loopback, link-local and metadata, multicast,
reserved), enumerated (88 CIDRs with today's list); a rule naming such a range by CIDR is what lets a tenant reach it.
The ACL's default egress action stays `drop`, so a tenant without rules reaches nothing.

Why a guard of Fleet's own: a bridge ACL cannot tell traffic to the host from traffic through it (LXD
jumps to the same ACL chain from the input and the forward hooks, per its documentation's "Bridge
limitations"), so an egress rule allowing "internet" would let a tenant reach the host's own public
addresses, and one allowing 10.0.0.0/8 the bridge's gateway and, routed back through the host, the other
tenants' open ports. Table `inet fleet_lxd_<bridge>` drops, whatever the ACL says, every new connection
from the bridge to the host (input) and every new connection forwarded into the bridge (another tenant
through the host, or the outside); replies pass. Its third chain masquerades the tenant range out of any
interface but the bridge (Fleet's NAT, rather than LXD's `ipv4.nat`: changing a bridge's config makes LXD
rebuild the bridge's firewall (~0.8 s), and one table of Fleet's is read in one in-process nftables call
and written in one atomic script). The guard is made when a tenant first needs egress and stays with the
bridge: masquerading what the ACL drops changes nothing, and the guard only ever drops. IPv4 forwarding
is LXD's own (a bridge with `ipv4.routing`, LXD's default, switches it on).

No spec value reaches nft text or an ACL unchecked: networks are parsed, ports are ints, the bridge's
name and range come from the driver's configuration and are matched before use.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drivers.nspawn_egress import BLOCKED
from drivers.nspawn_nft import Nft
from specs import PermanentError, TransientError
from specs.tenant import INTERNET, EgressRule, egress_rules

RULE_PREFIX = "fleet:"
PROTOCOLS = ("tcp", "udp")
BRIDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
GUARD_COMMENTS = ("fleet:guard:host", "fleet:guard:into-bridge", "fleet:masquerade")


@functools.cache
def public_networks() -> tuple[str, ...]:
    """Every IPv4 network but `BLOCKED`, as few CIDRs as cover it (what "internet" allows)."""
    rest = [ipaddress.IPv4Network("0.0.0.0/0")]
    for blocked in map(ipaddress.IPv4Network, BLOCKED):
        kept: list[ipaddress.IPv4Network] = []
        for network in rest:
            if not network.overlaps(blocked):
                kept.append(network)
            elif not blocked.supernet_of(network):
                kept.extend(network.address_exclude(blocked))
        rest = kept
    return tuple(str(n) for n in ipaddress.collapse_addresses(rest))


def public_destination() -> str:
    return ",".join(public_networks())


def acl_rules(tenant: str, address: str, rules: Iterable[EgressRule]) -> list[dict[str, str]]:
    """The ACL egress rules that enforce `rules` (canonical, checked) for the tenant at `address`."""
    source = str(ipaddress.IPv4Address(address))
    made: list[dict[str, str]] = []
    for rule in rules:
        destination = public_destination() if rule.to == INTERNET else str(ipaddress.IPv4Network(rule.to))
        base = {"action": "allow", "state": "enabled", "description": RULE_PREFIX + tenant, "source": source,
                "destination": destination}
        if rule.ports is None:
            made.append(base)
            continue
        ports = ",".join(str(_port(p)) for p in rule.ports)
        made += [base | {"protocol": protocol, "destination_port": ports} for protocol in PROTOCOLS]
    return made


def _port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PermanentError(f"port {port!r} is not 1-65535", reason="BadPort")
    return port


def _ports(text: str) -> set[int] | None:
    """A destination_port as Fleet writes it ("80,443"); None for anything else (ranges, junk)."""
    found: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            return None
        found.add(int(part))
    return found or None


def applies_to(rule: dict[str, Any], address: str) -> bool:
    """Whether an egress rule's `source` covers `address` (empty: every source; unreadable: assumed to, so
    it is shown rather than hidden)."""
    source = str(rule.get("source") or "").strip()
    if not source:
        return True
    wanted = ipaddress.IPv4Address(address)
    for part in (p.strip() for p in source.split(",")):
        try:
            if "-" in part:
                low, high = (ipaddress.IPv4Address(end.strip()) for end in part.split("-", 1))
                if low <= wanted <= high:
                    return True
            elif wanted in ipaddress.IPv4Network(part, strict=False):
                return True
        except ValueError:
            return True
    return False


def _fleets(rule: dict[str, Any], mark: str, address: str) -> bool:
    """Whether `rule` has the exact shape `acl_rules` writes for the tenant marked `mark` at `address`."""
    protocol = str(rule.get("protocol") or "")
    ports = str(rule.get("destination_port") or "")
    return (rule.get("description") == mark and rule.get("source") == address and rule.get("action") == "allow"
            and rule.get("state") == "enabled" and bool(rule.get("destination"))
            and not any(rule.get(key) for key in ("source_port", "icmp_type", "icmp_code"))
            and ((protocol in PROTOCOLS and _ports(ports) is not None) or (not protocol and not ports)))


def foreign(raw: Iterable[dict[str, Any]], tenant: str, address: str | None) -> list[str]:
    """The ACL's egress rules that apply to the tenant's address (by `source`) and are not the ones Fleet
    writes for it: a hand-made or hand-edited rule, another tenant's mark, a drop. Each makes the tenant's
    observed egress differ from any spec, so it is shown (and the next pass rewrites the tenant's own)."""
    if address is None:
        return []
    mark = RULE_PREFIX + tenant
    return [f"{rule.get('action') or '?'} {rule.get('protocol') or 'any protocol'} from {rule.get('source') or 'any'} "
            f"to {rule.get('destination') or 'any'} ({rule.get('description') or 'no description'})"
            for rule in raw
            if rule.get("state") != "disabled" and applies_to(rule, address) and not _fleets(rule, mark, address)]


def rules_in_force(raw: Iterable[dict[str, Any]], tenant: str, address: str | None) -> tuple[EgressRule, ...]:
    """The egress the ACL gives the tenant at `address`, canonical: the rules Fleet writes for it (a
    destination with ports counts for the ports both its tcp and its udp rule list: one without the other is
    not what a spec makes), plus, for every `foreign` rule, an entry no spec makes, so it differs."""
    if address is None:
        return ()
    raw = list(raw)
    mark = RULE_PREFIX + tenant
    any_protocol: set[str] = set()
    by_protocol: dict[str, dict[str, set[int]]] = {}
    for rule in raw:
        if not _fleets(rule, mark, address):
            continue
        destination = str(rule["destination"])
        protocol = str(rule.get("protocol") or "")
        if not protocol:
            any_protocol.add(destination)
        else:
            numbers = _ports(str(rule.get("destination_port") or "")) or set()
            by_protocol.setdefault(destination, {}).setdefault(protocol, set()).update(numbers)
    targets: dict[str, set[int] | None] = {d: None for d in any_protocol}
    for destination, protocols in by_protocol.items():
        both = protocols.get("tcp", set()) & protocols.get("udp", set())
        if destination not in targets and both:
            targets[destination] = both
    listed: list[dict[str, Any]] = []
    for destination, ports in targets.items():
        to = INTERNET if destination == public_destination() else destination
        listed.append({"to": to} if ports is None else {"to": to, "ports": sorted(ports)})
    others = tuple(EgressRule.model_construct(to=f"not Fleet's: {text}", ports=None)
                   for text in foreign(raw, tenant, address))
    try:
        return (egress_rules(listed) or ()) + others
    except ValueError:  # hand-edited destinations no spec makes (a list of networks, overlaps): shown as found
        return tuple(EgressRule.model_construct(to=item["to"], ports=tuple(item["ports"]) if "ports" in item else None)
                     for item in listed) + others


# -- the node guard ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guard:
    """Table `inet fleet_lxd_<bridge>`: no new connection from the bridge to the host or into the bridge
    through the host; the tenant range masqueraded out of every other interface."""

    bridge: str
    address_range: str
    nft: Nft

    @classmethod
    def of(cls, bridge: str, address_range: str, nft: Nft | None = None) -> Guard:
        if not BRIDGE_NAME.fullmatch(bridge):
            raise PermanentError(f"bridge name {bridge!r} is not an interface name", reason="BadNetwork")
        return cls(bridge, str(ipaddress.IPv4Network(address_range)), nft or Nft())

    @property
    def table(self) -> str:
        return "fleet_lxd_" + self.bridge.replace("-", "_")

    def script(self) -> str:
        bridge, network = self.bridge, self.address_range
        return (
            f"table inet {self.table}\n"
            f"delete table inet {self.table}\n"
            f"table inet {self.table} {{\n"
            "  chain input {\n"
            "    type filter hook input priority filter; policy accept;\n"
            f'    iifname "{bridge}" ct state established,related accept\n'
            f'    iifname "{bridge}" drop comment "fleet:guard:host"\n'
            "  }\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            f'    oifname "{bridge}" ct state established,related accept\n'
            f'    oifname "{bridge}" drop comment "fleet:guard:into-bridge"\n'
            "  }\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {network} ip daddr != {network} oifname != "{bridge}" masquerade'
            ' comment "fleet:masquerade"\n'
            "  }\n"
            "}\n"
        )

    def problem(self) -> str | None:
        """None when the guard is complete; else what is missing (one in-process nftables read)."""
        result = self.nft.run(f"list table inet {self.table}", json=True)
        if not result.ok:
            return f"table inet {self.table} missing"
        try:
            items = json.loads(result.output).get("nftables", [])
        except ValueError:
            return f"table inet {self.table} unreadable"
        comments = {item["rule"].get("comment") for item in items if "rule" in item}
        missing = [c for c in GUARD_COMMENTS if c not in comments]
        return f"table inet {self.table} lacks {', '.join(missing)}" if missing else None

    def ensure(self) -> bool:
        """Write the guard when it is not complete; True when it was written."""
        if self.problem() is None:
            return False
        result = self.nft.run(self.script())
        if not result.ok:
            if "No such file or directory" in result.error and "nft failed to run" in result.error:
                raise PermanentError(f"egress on LXD needs nftables (nft): {result.error}", reason="EgressUnavailable")
            raise TransientError(f"could not write table inet {self.table}: {result.error}")
        return True

    def remove(self) -> bool:
        return self.nft.run(f"delete table inet {self.table}").ok

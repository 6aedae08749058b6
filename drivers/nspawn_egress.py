"""Egress by policy for the nspawn driver: what a tenant may reach outside itself, as nftables elements,
and the node's side of it (outbound interface, masquerading, forwarding sysctls).

A tenant's `spec.network.egress` rules become elements of four sets of Fleet's table (`nspawn_firewall`),
each keyed by the tenant's veth and commented `fleet:<t>`:

    egress_any             veth . network           {to: CIDR}                every protocol and port
    egress_ports           veth . network . port    {to: CIDR, ports: [..]}   TCP and UDP to those ports
    egress_internet        veth                     {to: internet}            public addresses, everything
    egress_internet_ports  veth . port              {to: internet, ports}     public addresses, TCP/UDP ports

"internet" is every address but those in `BLOCKED` (private, shared, loopback, link-local and metadata,
multicast, reserved): a rule naming such a range by CIDR is what lets a tenant reach it. Whatever the rules,
a tenant never reaches the node itself (its input chain drops it) nor another tenant (forwarding between
tenant veths is dropped), and egress leaves only through the outbound interface.

The node's side exists while at least one tenant has an egress rule: the outbound interface in the set
`egress_out`, the tenant address range in `egress_nat` and a `postrouting` NAT chain masquerading that
range out of it; IPv4 forwarding switched on for the outbound interface and for each tenant veth with egress
(per interface: `net.ipv4.conf.<if>.forwarding`, never the global `ip_forward`). When Fleet had to switch
the outbound interface's forwarding on, the set `egress_guard` holds it, and a base rule drops everything it
would now forward but replies to tenants; the value found is kept in `egress.json` and put back with the
last egress rule.

No value reaches nft text unchecked: networks are parsed, ports ints, interface names matched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from specs import PermanentError
from specs.tenant import INTERNET, EgressRule, egress_rules

# Never "internet": RFC 6890 special-purpose ranges that are not globally reachable, and multicast. The
# documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) and benchmarking (198.18/15) are left
# out: nothing routes them, and tests use them as the stand-in for the outside.
BLOCKED: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
    "168.63.129.16/32",  # Azure's host endpoint (WireServer): public-range, but it answers for the host VM
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # private
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
EGRESS_SETS = ("egress_any", "egress_ports", "egress_internet", "egress_internet_ports")
INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # a Linux interface name, as nft and /proc take it
FORWARDING = "/proc/sys/net/ipv4/conf/{}/forwarding"

# (set, veth, network or None, port or None): one element of one of EGRESS_SETS.
Element = tuple[str, str, str | None, int | None]


def check_interface(name: str) -> str:
    if not INTERFACE.fullmatch(name) or name in {".", ".."}:
        raise PermanentError(f"egress interface {name!r} is not an interface name", reason="BadInterface")
    return name


def checked_rules(rules: tuple[EgressRule, ...] | None) -> tuple[EgressRule, ...]:
    """The rules, parsed again (a raw SQL writer may have stored what no spec validates); none when unset."""
    if not rules:
        return ()
    try:
        checked = egress_rules([{"to": r.to, **({} if r.ports is None else {"ports": list(r.ports)})} for r in rules])
    except (ValueError, TypeError) as error:
        raise PermanentError(f"spec.network.egress: {error}", reason="BadEgress") from error
    return checked or ()


def elements(veth: str, rules: tuple[EgressRule, ...]) -> set[Element]:
    """The set elements that enforce `rules` (canonical, checked) for the tenant behind `veth`."""
    found: set[Element] = set()
    for rule in rules:
        network = None if rule.to == INTERNET else str(ipaddress.IPv4Network(rule.to))
        if rule.ports is None:
            found.add(("egress_internet", veth, None, None) if network is None else ("egress_any", veth, network, None))
            continue
        for port in rule.ports:
            if network is None:
                found.add(("egress_internet_ports", veth, None, int(port)))
            else:
                found.add(("egress_ports", veth, network, int(port)))
    return found


def rules_from(veth: str, present: set[Element] | dict[Element, str]) -> tuple[EgressRule, ...]:
    """The rules the elements of `veth` enforce, canonical (what `Observed.network.egress` reports)."""
    targets: dict[str, set[int] | None] = {}
    for kind, name, network, port in present:
        if name != veth:
            continue
        to = INTERNET if kind in ("egress_internet", "egress_internet_ports") else str(network)
        if kind in ("egress_internet", "egress_any"):
            targets[to] = None
        elif targets.get(to, set()) is not None:
            targets.setdefault(to, set()).add(int(port or 0))  # type: ignore[union-attr]
    listed: list[dict[str, Any]] = [
        {"to": to} if ports is None else {"to": to, "ports": sorted(ports)} for to, ports in targets.items()
    ]
    try:
        return egress_rules(listed) or ()
    except ValueError:  # elements added by hand that no spec makes (they overlap): shown as found, so they differ
        return tuple(
            EgressRule.model_construct(to=item["to"], ports=tuple(item.get("ports") or ()) or None) for item in listed
        )


def element_text(element: Element) -> str:
    """nft text of one element's key (without its comment)."""
    kind, veth, network, port = element
    if kind == "egress_any":
        return f'"{veth}" . {ipaddress.IPv4Network(network)}'
    if kind == "egress_ports":
        return f'"{veth}" . {ipaddress.IPv4Network(network)} . {_port(port)}'
    if kind == "egress_internet":
        return f'"{veth}"'
    if kind == "egress_internet_ports":
        return f'"{veth}" . {_port(port)}'
    raise ValueError(f"not an egress set: {kind}")


def _port(port: int | None) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PermanentError(f"port {port!r} is not 1-65535", reason="BadPort")
    return port


def network_of(value: Any) -> str:
    """A network as nft's JSON shows an interval element's address part: "a.b.c.d" (a /32), a prefix, or a
    range; canonical CIDR text where it is one network."""
    if isinstance(value, str):
        return str(ipaddress.IPv4Network(value))
    if isinstance(value, dict) and "prefix" in value:
        return str(ipaddress.IPv4Network(f"{value['prefix']['addr']}/{value['prefix']['len']}"))
    if isinstance(value, dict) and "range" in value:
        low, high = (ipaddress.IPv4Address(v) for v in value["range"])
        networks = list(ipaddress.summarize_address_range(low, high))
        return str(networks[0]) if len(networks) == 1 else f"{low}-{high}"
    return repr(value)


def element_from_json(kind: str, value: Any) -> Element | None:
    """One element of an egress set, from nft's JSON; None for a shape Fleet never writes."""
    parts = value["concat"] if isinstance(value, dict) and "concat" in value else [value]
    try:
        if kind == "egress_any" and len(parts) == 2:
            return kind, str(parts[0]), network_of(parts[1]), None
        if kind == "egress_ports" and len(parts) == 3:
            return kind, str(parts[0]), network_of(parts[1]), int(parts[2])
        if kind == "egress_internet" and len(parts) == 1 and isinstance(parts[0], str):
            return kind, parts[0], None, None
        if kind == "egress_internet_ports" and len(parts) == 2:
            return kind, str(parts[0]), None, int(parts[1])
    except (ValueError, TypeError, KeyError):
        return None
    return None


# -- the node's side: outbound interface and forwarding sysctls ------------------------------------------
def default_interface() -> str | None:
    """The interface of the host's IPv4 default route (the main table), or None when there is none."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=2):
            index = route.get("RTA_OIF")
            if index is None:
                continue
            links = ipr.link("get", index=index)
            if links:
                return str(links[0].get("IFLA_IFNAME"))
    return None


def interface_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{check_interface(name)}").exists()


def read_forwarding(interface: str) -> str | None:
    """The interface's IPv4 forwarding switch ("0"/"1"), None when the interface is gone."""
    try:
        return Path(FORWARDING.format(check_interface(interface))).read_text().strip()
    except FileNotFoundError:
        return None


def write_forwarding(interface: str, on: bool) -> bool:
    """Set the interface's IPv4 forwarding; False when the interface is gone. Written only when it differs."""
    path = Path(FORWARDING.format(check_interface(interface)))
    wanted = "1" if on else "0"
    try:
        if path.read_text().strip() == wanted:
            return True
        path.write_text(wanted)
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class NodeEgress:
    """What Fleet changed on the node for egress: the outbound interface and its forwarding as found."""

    interface: str
    forwarding_before: str  # "0": Fleet switched it on (and guards it); "1": it was on already


class NodeEgressRecord:
    """`egress.json` in the driver's state directory: written before the sysctl changes, removed after it
    is put back, so a crash in between still knows what to restore."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> NodeEgress | None:
        try:
            data = json.loads(self.path.read_text())
            return NodeEgress(check_interface(str(data["interface"])), str(data["forwarding_before"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError, PermanentError):
            return None

    def save(self, record: NodeEgress) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"interface": record.interface, "forwarding_before": record.forwarding_before}))
        os.replace(temporary, self.path)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

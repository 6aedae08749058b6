"""The nspawn driver's firewall: one nftables table `inet fleet` that isolates tenants.

The table is marked by its `tenant_links` set's comment and holds three sets whose elements carry the
comment `fleet:<t>`: `tenant_links` (every tenant veth), `tenant_ingress` (veth . port pairs) and
`tenant_sources` (veth . the tenant's leased address). Base rules: before connection tracking, a packet in
from a tenant veth whose source is not that veth's leased address is dropped (no tenant can pass for
another, nor inject into the host's connections to another), and so is all IPv6 from tenants; the host
(and the gateway running on it) reaches a tenant only on its ingress ports; traffic in from a tenant veth
is dropped unless it answers a connection the host opened (so tenants never reach the host's own
services, nor another tenant through the host); forwarding between tenant veths is dropped.

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

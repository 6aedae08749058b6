"""The LXD driver's egress without a daemon: spec rules as ACL rules and back (what inspect reports), what
a hand edit makes of them, the public complement "internet" stands for, and the node guard's table."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from drivers.lxd_egress import (
    Guard,
    acl_rules,
    applies_to,
    foreign,
    public_destination,
    public_networks,
    rules_in_force,
)
from drivers.nspawn_egress import BLOCKED
from drivers.nspawn_nft import Result
from specs import Network, PermanentError
from specs.tenant import INTERNET

ADDRESS = "10.219.0.7"


def as_lxd(rules: list[dict[str, str]]) -> list[dict[str, Any]]:
    """As LXD returns rules: every field present, empty when unset."""
    fields = ("action", "state", "description", "source", "destination", "protocol", "source_port",
              "destination_port", "icmp_type", "icmp_code")
    return [{key: rule.get(key, "") for key in fields} for rule in rules]


@pytest.mark.parametrize("egress", [
    "internet",
    [{"to": "internet", "ports": [443, 80]}],
    [{"to": "198.51.100.7"}, {"to": "10.0.0.0/8", "ports": [5432]}, {"to": "internet", "ports": [443]}],
])
def test_rules_round_trip_through_the_acl(egress: object) -> None:
    wanted = Network(egress=egress).egress
    assert wanted
    written = acl_rules("acme", ADDRESS, wanted)
    assert all(rule["source"] == ADDRESS and rule["description"] == "fleet:acme" for rule in written)
    assert rules_in_force(as_lxd(written), "acme", ADDRESS) == wanted
    assert foreign(as_lxd(written), "acme", ADDRESS) == []
    assert rules_in_force(as_lxd(written), "acme", "10.219.0.8") == ()  # not from its address: not its egress
    stolen = rules_in_force(as_lxd(written), "other", ADDRESS)  # another tenant's mark on this one's address
    assert stolen and all(rule.to.startswith("not Fleet's: allow") for rule in stolen)


def test_ports_count_only_where_tcp_and_udp_both_list_them() -> None:
    written = acl_rules("acme", ADDRESS, Network(egress=[{"to": "198.51.100.0/24", "ports": [53, 443]}]).egress or ())
    assert sorted(rule["protocol"] for rule in written) == ["tcp", "udp"]
    only_tcp = [rule for rule in written if rule["protocol"] == "tcp"]
    assert rules_in_force(as_lxd(only_tcp), "acme", ADDRESS) == ()
    fewer = [rule | {"destination_port": "53"} if rule["protocol"] == "udp" else rule for rule in written]
    assert rules_in_force(as_lxd(fewer), "acme", ADDRESS) == Network(egress=[{"to": "198.51.100.0/24",
                                                                               "ports": [53]}]).egress


def test_hand_made_rules_show_as_found_so_they_differ_from_any_spec() -> None:
    edited = as_lxd([{"action": "allow", "state": "enabled", "description": "fleet:acme", "source": ADDRESS,
                      "destination": "198.51.100.0/24,203.0.113.0/24"}])
    assert [rule.to for rule in rules_in_force(edited, "acme", ADDRESS)] == ["198.51.100.0/24,203.0.113.0/24"]
    anywhere = as_lxd([{"action": "allow", "state": "enabled", "description": "fleet:acme", "source": ADDRESS}])
    assert foreign(anywhere, "acme", ADDRESS) == [f"allow any protocol from {ADDRESS} to any (fleet:acme)"]
    assert [rule.to for rule in rules_in_force(anywhere, "acme", ADDRESS)] == [
        f"not Fleet's: allow any protocol from {ADDRESS} to any (fleet:acme)"]
    # an administrator's rule for a whole range, or for every source, applies to the tenant too
    for source in ("10.219.0.0/24", "", "10.219.0.5-10.219.0.9"):
        wide = as_lxd([{"action": "allow", "state": "enabled", "description": "ops", "source": source,
                        "destination": "9.9.9.9"}])
        assert applies_to(wide[0], ADDRESS) and rules_in_force(wide, "acme", ADDRESS) != ()
    elsewhere = as_lxd([{"action": "allow", "state": "enabled", "source": "10.219.0.8", "destination": "9.9.9.9"}])
    assert not applies_to(elsewhere[0], ADDRESS) and rules_in_force(elsewhere, "acme", ADDRESS) == ()
    disabled = as_lxd([rule | {"state": "disabled"} for rule in acl_rules(
        "acme", ADDRESS, Network(egress="internet").egress or ())])
    assert rules_in_force(disabled, "acme", ADDRESS) == () and foreign(disabled, "acme", ADDRESS) == []


def test_internet_is_the_complement_of_the_blocked_ranges() -> None:
    networks = [ipaddress.IPv4Network(n) for n in public_networks()]
    blocked = [ipaddress.IPv4Network(n) for n in BLOCKED]
    assert not any(n.overlaps(b) for n in networks for b in blocked)
    assert sum(n.num_addresses for n in networks) + sum(b.num_addresses for b in blocked) == 1 << 32
    assert acl_rules("acme", ADDRESS, Network(egress="internet").egress or ())[0]["destination"] == public_destination()
    assert rules_in_force(as_lxd(acl_rules("acme", ADDRESS, Network(egress="internet").egress or ())), "acme",
                          ADDRESS)[0].to == INTERNET


class FakeNft:
    def __init__(self, listing: dict[str, Any] | None) -> None:
        self.listing = listing
        self.ran: list[str] = []

    def run(self, commands: str, *, json: bool = False) -> Result:
        self.ran.append(commands)
        if commands.startswith("list table"):
            if self.listing is None:
                return Result(False, "", "Error: No such file or directory")
            return Result(True, _dumps(self.listing), "")
        return Result(True, "", "")


def _dumps(value: Any) -> str:
    return json.dumps(value)


def test_the_guard_is_read_and_written_whole() -> None:
    nft = FakeNft(None)
    guard = Guard.of("fleettest0", "10.219.0.0/24", nft)  # type: ignore[arg-type]
    assert guard.table == "fleet_lxd_fleettest0"
    assert guard.problem() == "table inet fleet_lxd_fleettest0 missing"
    assert guard.ensure() is True
    script = nft.ran[-1]
    assert 'iifname "fleettest0" drop comment "fleet:guard:host"' in script
    assert 'oifname "fleettest0" drop comment "fleet:guard:into-bridge"' in script
    assert "ip saddr 10.219.0.0/24 ip daddr != 10.219.0.0/24" in script
    nft.listing = {"nftables": [{"rule": {"comment": c}} for c in ("fleet:guard:host", "fleet:masquerade")]}
    assert guard.problem() == "table inet fleet_lxd_fleettest0 lacks fleet:guard:into-bridge"
    nft.listing["nftables"].append({"rule": {"comment": "fleet:guard:into-bridge"}})
    assert guard.problem() is None and guard.ensure() is False


def test_a_bridge_name_that_is_no_interface_name_is_refused() -> None:
    with pytest.raises(PermanentError) as raised:
        Guard.of('br" drop; flush ruleset #', "10.219.0.0/24")
    assert raised.value.reason == "BadNetwork"

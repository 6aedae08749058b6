"""Egress by policy on LXD tenants, against the real daemon: `spec.network.egress` none, internet and rule
lists as rules of Fleet's ACL, changed in place, drift repaired, deleted with the tenant, and nothing
reaching the host or another tenant in any mode.

The outside is the test's own (made by tests/egress_outside.py): a network namespace `elt-outside` joined to
the host by a veth the test makes (`elt-up` on the host), holding 198.18.0.2 (benchmarking range: public to
Fleet) on its end, plus 203.0.113.19 (another public one), 10.223.9.9 (private) and 169.254.223.9
(link-local) on its loopback, each routed to it from the host by a /32 route the test adds. Its servers (TCP
8080 and 8443, UDP 5353) say which address they were reached on and whom they saw. Every probe runs *as the
tenant's payload* (a CGI its own busybox httpd runs: busybox nc and ping, tenant_probe for UDP). Everything
made here is removed after (the namespace, the veth, the routes; the guard table with the bridge, by the
session).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.lxd import LxdDriver
from drivers.lxd_egress import public_destination
from reconciler.actions import ApplyNetwork
from reconciler.plan import plan
from specs import Network, Observed, ResolvedSpec, Resources, Template

pytest.register_assert_rewrite("tests.lxd.runtime")
from tests.egress_outside import HostListener, Outside, OutsideAddresses, outside_world  # noqa: E402
from tests.lxd.runtime import as_payload  # noqa: E402

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]

OUTSIDE_NS = "elt-outside"
UPLINK, DOWNLINK = "elt-up", "elt-down"
HOST_SIDE, OUTSIDE = "198.18.0.1", "198.18.0.2"
PUBLIC_TOO, PRIVATE, LINK_LOCAL = "203.0.113.19", "10.223.9.9", "169.254.223.9"
HOST_PORT = 8098  # a listener of the host's own, on its addresses a tenant could try
PROBE_SOURCE = Path(__file__).parents[1] / "integration" / "probes" / "tenant_probe.c"
MakeTenant = Callable[..., Observed]
ADDRESSES = OutsideAddresses(OUTSIDE_NS, UPLINK, DOWNLINK, HOST_SIDE, OUTSIDE, PUBLIC_TOO, PRIVATE, LINK_LOCAL)


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    with outside_world(ADDRESSES) as world:
        yield world


@pytest.fixture(scope="module")
def tenant_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/integration/probes/tenant_probe.c built static, to be copied into a tenant's own tree."""
    compiler = shutil.which("gcc")
    if compiler is None or not list(Path("/usr/lib").glob("*/libc.a")):
        pytest.skip("needs gcc and a static libc to build the tenant probe: apt-get install -y gcc libc6-dev")
    binary = tmp_path_factory.mktemp("probe") / "tenant_probe"
    subprocess.run([compiler, "-static", "-O1", "-Wall", "-o", str(binary), str(PROBE_SOURCE)], check=True)
    return binary


@pytest.fixture
def driver(lxd_driver: object, outside: Outside) -> LxdDriver:
    assert isinstance(lxd_driver, LxdDriver)
    return lxd_driver


PROBE = r"""
t() { out=$(echo | nc -w 2 "$1" "$2" 2>/dev/null)
  case "$out" in outside*|host*|*Fleet*) echo "tcp $1:$2 OK $out";; *) echo "tcp $1:$2 FAIL";; esac; }
u() { if out=$(tenant_probe udp "$1" "$2"); then echo "udp $1:$2 OK $out"; else echo "udp $1:$2 FAIL"; fi; }
p() { if ping -c 1 -W 2 "$1" >/dev/null 2>&1; then echo "icmp $1 OK"; else echo "icmp $1 FAIL"; fi; }
"""


def probe(driver: LxdDriver, tenant: Observed, tool: Path, checks: list[str]) -> dict[str, str]:
    """Run the checks ("tcp ADDRESS PORT", "udp ADDRESS PORT", "icmp ADDRESS") at once as the tenant's payload;
    returns e.g. {"tcp 198.18.0.2:8080": "OK outside 198.18.0.2:8080 saw 198.18.0.1"}."""
    assert tenant.address is not None
    lines = [f"{ {'tcp': 't', 'udp': 'u', 'icmp': 'p'}[kind] } {' '.join(rest)} &"
             for kind, *rest in (check.split() for check in checks)]
    script = PROBE + "\n".join(lines) + "\nwait\necho probe-done\n"
    output = as_payload(driver.client, tenant.name, tenant.address, script, probe=tool)
    assert "probe-done" in output, output
    found = {}
    for line in output.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] in ("tcp", "udp", "icmp"):
            found[f"{parts[0]} {parts[1]}"] = parts[2]
    assert len(found) == len(checks), output
    return found


def passed(results: dict[str, str]) -> set[str]:
    return {key for key, value in results.items() if value.startswith("OK")}


OUT_TCP = [f"tcp {OUTSIDE} 8080", f"tcp {OUTSIDE} 8443", f"tcp {PUBLIC_TOO} 8080"]
OUT_OTHER = [f"udp {OUTSIDE} 5353", f"icmp {OUTSIDE}"]
NON_PUBLIC = [f"tcp {PRIVATE} 8080", f"tcp {LINK_LOCAL} 8080"]


def forbidden(driver: LxdDriver, neighbour: Observed) -> list[str]:
    """What no mode ever reaches: the host (the bridge's gateway, its public address on the uplink) and
    another tenant (its open port and its address, straight or routed through the host)."""
    assert neighbour.address is not None
    gateway = driver.bridge.gateway
    return [f"tcp {gateway} {HOST_PORT}", f"tcp {HOST_SIDE} {HOST_PORT}", f"tcp {neighbour.address} 80",
            f"icmp {neighbour.address}", f"icmp {gateway}", f"icmp {HOST_SIDE}"]


def apply(driver: LxdDriver, tenant: str, egress: object) -> Observed:
    driver.apply_network(tenant, Network(ingress=(80,), egress=egress))
    observed = driver.inspect(tenant)
    assert observed is not None
    return observed


def acl_egress(driver: LxdDriver, tenant: str) -> list[dict[str, Any]]:
    """The tenant's egress rules as `lxc network acl show` lists them."""
    acl = driver.client.get(f"/1.0/network-acls/{driver.bridge.acl}").metadata
    return [rule for rule in acl.get("egress") or [] if rule.get("description") == f"fleet:{tenant}"]


def test_none_internet_and_rule_lists_apply_in_place_and_never_reach_the_host_or_another_tenant(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, tenant_probe: Path, outside: Outside
) -> None:
    tenant, neighbour = make_lxd_tenant("eg-a"), make_lxd_tenant("eg-b")
    every = OUT_TCP + OUT_OTHER + NON_PUBLIC
    never = forbidden(driver, neighbour)
    with HostListener([driver.bridge.gateway, HOST_SIDE], HOST_PORT) as host:
        # none: nothing outside the tenant
        assert tenant.network.egress == () and acl_egress(driver, tenant.name) == []
        assert passed(probe(driver, tenant, tenant_probe, every + never)) == set()

        # internet: public addresses, masqueraded; never private or link-local, the host or the neighbour
        observed = apply(driver, tenant.name, "internet")
        assert observed.network.egress == Network(egress="internet").egress and observed.problems == ()
        assert observed.pid == tenant.pid, "changed in place: the container was not restarted"
        rules = acl_egress(driver, tenant.name)
        assert [(r["source"], r["destination"], r.get("protocol", "")) for r in rules] == [
            (tenant.address, public_destination(), "")]
        results = probe(driver, tenant, tenant_probe, every + never)
        assert passed(results) == {f"tcp {OUTSIDE}:8080", f"tcp {OUTSIDE}:8443", f"tcp {PUBLIC_TOO}:8080",
                                   f"udp {OUTSIDE}:5353", f"icmp {OUTSIDE}"}, results
        assert results[f"tcp {OUTSIDE}:8080"] == f"OK outside {OUTSIDE}:8080 saw {HOST_SIDE}", "masqueraded"
        assert passed(probe(driver, neighbour, tenant_probe, OUT_TCP)) == set(), "the neighbour kept none"

        # a list, in place: one port of one address, and a private range by name
        listed = [{"to": f"{OUTSIDE}/32", "ports": [8443]}, {"to": "10.223.9.0/24", "ports": [8080, 5353]}]
        observed = apply(driver, tenant.name, listed)
        assert observed.network.egress == Network(egress=listed).egress and observed.pid == tenant.pid
        shown = sorted((r["destination"], r["protocol"], r["destination_port"])
                       for r in acl_egress(driver, tenant.name))
        assert shown == [("10.223.9.0/24", "tcp", "5353,8080"), ("10.223.9.0/24", "udp", "5353,8080"),
                         (f"{OUTSIDE}/32", "tcp", "8443"), (f"{OUTSIDE}/32", "udp", "8443")]
        results = probe(driver, tenant, tenant_probe, every + never)
        assert passed(results) == {f"tcp {OUTSIDE}:8443", f"tcp {PRIVATE}:8080"}, results

        # all of 10/8 allowed, the tenants' own range and the gateway with it: still neither host nor neighbour
        observed = apply(driver, tenant.name, [{"to": "10.0.0.0/8"}, {"to": "169.254.223.9/32"}])
        assert observed.problems == () and observed.pid == tenant.pid
        results = probe(driver, tenant, tenant_probe, every + never)
        assert passed(results) == {f"tcp {PRIVATE}:8080", f"tcp {LINK_LOCAL}:8080"}, results

        # back to none: the tenant's rules leave the ACL
        observed = apply(driver, tenant.name, "none")
        assert observed.network.egress == () and observed.pid == tenant.pid
        assert acl_egress(driver, tenant.name) == []
        assert passed(probe(driver, tenant, tenant_probe, every + never)) == set()
        assert host.accepted == [], f"the host was reached from {host.accepted}"


def _desired(name: str, network: Network) -> ResolvedSpec:
    return ResolvedSpec(name=name, generation=1, template=Template(name="base", version="1"),
                        resources=Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi"), network=network)


def _remove_by_hand(driver: LxdDriver, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Edit the ACL as `lxc network acl edit` would: its egress rules but those `keep` refuses."""
    acl = driver.client.get(f"/1.0/network-acls/{driver.bridge.acl}").metadata
    body = {"description": acl["description"], "config": acl["config"], "ingress": acl["ingress"],
            "egress": [rule for rule in acl["egress"] if keep(rule)]}
    driver.client.request("PUT", f"/1.0/network-acls/{driver.bridge.acl}", json=body)


@pytest.mark.parametrize("drift", ["acl-rule", "guard", "foreign-grant"])
def test_egress_drift_is_observed_and_repaired_by_the_next_pass(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, tenant_probe: Path, outside: Outside, drift: str
) -> None:
    tenant = make_lxd_tenant("eg-drift")
    wanted = Network(ingress=(80,), egress=[{"to": "internet", "ports": [8080]}])
    driver.apply_network(tenant.name, wanted)
    check = [f"tcp {OUTSIDE} 8080", f"tcp {OUTSIDE} 8443"]
    right = {f"tcp {OUTSIDE}:8080"}
    assert passed(probe(driver, tenant, tenant_probe, check)) == right

    if drift == "acl-rule":
        _remove_by_hand(driver, lambda rule: not (rule.get("description") == f"fleet:{tenant.name}"
                                                  and rule.get("protocol") == "tcp"))
        bitten: set[str] = set()
    elif drift == "guard":
        subprocess.run(["nft", "delete", "table", "inet", driver.guard.table], check=True)
        bitten = set()
    else:  # a rule added by hand that lets the tenant out further than its spec
        acl = driver.client.get(f"/1.0/network-acls/{driver.bridge.acl}").metadata
        grant = {"action": "allow", "state": "enabled", "description": "added by hand", "source": tenant.address,
                 "destination": f"{OUTSIDE}/32", "protocol": "tcp", "destination_port": "8443"}
        driver.client.request("PUT", f"/1.0/network-acls/{driver.bridge.acl}", json={
            "description": acl["description"], "config": acl["config"], "ingress": acl["ingress"],
            "egress": [*acl["egress"], grant]})
        bitten = right | {f"tcp {OUTSIDE}:8443"}
    assert passed(probe(driver, tenant, tenant_probe, check)) == bitten, "the drift bites"

    observed = driver.inspect(tenant.name)
    assert observed is not None and observed.address == tenant.address, "still reachable: only egress differs"
    assert observed.network.egress != wanted.egress, observed.network
    if drift == "guard":
        assert observed.network.egress == ()
        assert any(p.startswith("egress not in force: table inet") for p in observed.problems), observed.problems
    if drift == "foreign-grant":
        assert any(p.startswith("egress rule not Fleet's: allow tcp") for p in observed.problems), observed.problems
    desired = _desired(tenant.name, wanted)
    assert ApplyNetwork(wanted) in plan(desired, observed), (observed.network, observed.problems)
    sent: list[str] = []
    send = driver.client.request

    def counted(method: str, path: str, **options: Any) -> Any:
        sent.append(f"{method} {path}")
        return send(method, path, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(driver.client, "request", counted)
        listed = {o.name: o for o in driver.list()}
    assert listed[tenant.name].network == observed.network, "list sees what inspect sees"
    assert len(sent) == 2, sent  # the tenants and the ACL; the guard is read from nftables, in process

    driver.apply_network(tenant.name, wanted)  # what the next pass runs
    repaired = driver.inspect(tenant.name)
    assert repaired is not None and repaired.network == wanted and plan(desired, repaired) == []
    assert repaired.pid == tenant.pid and repaired.problems == ()
    assert passed(probe(driver, tenant, tenant_probe, check)) == right


def test_delete_removes_the_tenants_egress_rules_and_the_next_tenant_has_none(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, tenant_probe: Path, outside: Outside
) -> None:
    tenant = make_lxd_tenant("eg-gone")
    driver.apply_network(tenant.name, Network(ingress=(80,), egress="internet"))
    assert acl_egress(driver, tenant.name) != []
    receipt = driver.delete(tenant.name)
    assert any("egress rule(s)" in part for part in receipt.removed), receipt
    assert acl_egress(driver, tenant.name) == []
    acl = driver.client.get(f"/1.0/network-acls/{driver.bridge.acl}").metadata
    assert not [r for r in acl.get("egress") or [] if r.get("source") == tenant.address], acl["egress"]

    again = make_lxd_tenant("eg-again")  # the lowest free address: most likely the one just freed
    assert again.network.egress == () and acl_egress(driver, again.name) == []
    assert passed(probe(driver, again, tenant_probe, [f"tcp {OUTSIDE} 8080"])) == set()

"""Egress by policy on the real host: `spec.network.egress` none, internet and rule lists, changed in place,
drift repaired, and nothing reaching the node or another tenant in any mode.

The outside is the test's own (made by tests/egress_outside.py): a network namespace `egt-outside` joined to
the host by a veth the test makes (`egt-up` on the host, the driver's outbound interface), holding a
public-looking address of the documentation range 198.51.100.0/24, plus 203.0.113.9 (another public one),
10.222.9.9 (private) and 169.254.222.9 (link-local) on its loopback, each routed to it from the host by a
/32 route the test adds. Servers in it (TCP 8080 and 8443, UDP 5353) say which address they were reached on
and whom they saw.

Every probe runs *as the tenant's payload* (a CGI its own busybox httpd runs: busybox nc for TCP,
tenant_probe for UDP and ICMP), never entered from the host. Everything made here is removed after,
and the outbound interface's forwarding switch is set to 0 when it is made, so the test sees the driver
switch it on and put it back.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers import nspawn_egress
from drivers.nspawn import NspawnDriver
from drivers.nspawn_network import veth_name
from reconciler.actions import ApplyNetwork
from reconciler.plan import plan
from specs import Network, Observed, PermanentError, ResolvedSpec, Resources, Template

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.egress_outside import HostListener, Outside, OutsideAddresses, outside_world  # noqa: E402
from tests.integration.conftest_runtime import TEST_DATA_DIR, TEST_IMAGE_SIZE, as_payload  # noqa: E402

pytest_plugins = ["tests.integration.conftest_runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]

OUTSIDE_NS = "egt-outside"
UPLINK, DOWNLINK = "egt-up", "egt-down"
HOST_SIDE, OUTSIDE = "198.51.100.1", "198.51.100.2"
PUBLIC_TOO, PRIVATE, LINK_LOCAL = "203.0.113.9", "10.222.9.9", "169.254.222.9"
HOST_PORT = 8099  # a listener of the host's own, on its addresses a tenant could try
MakeTenant = Callable[..., Observed]
ADDRESSES = OutsideAddresses(OUTSIDE_NS, UPLINK, DOWNLINK, HOST_SIDE, OUTSIDE, PUBLIC_TOO, PRIVATE, LINK_LOCAL)


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    def forwarding_off() -> None:  # as on a host that forwards nothing
        Path(nspawn_egress.FORWARDING.format(UPLINK)).write_text("0")

    with outside_world(ADDRESSES, before_up=forwarding_off) as world:
        yield world


@pytest.fixture
def egress_driver(nspawn_driver: object, outside: Outside) -> NspawnDriver:
    """A driver on the session's pool whose outbound interface is the test's uplink."""
    assert isinstance(nspawn_driver, NspawnDriver)
    return NspawnDriver(TEST_DATA_DIR, image_size=TEST_IMAGE_SIZE, egress_interface=UPLINK)


PROBE = r"""
t() { out=$(echo | nc -w 1 "$1" "$2" 2>/dev/null)
  case "$out" in outside*|host*) echo "tcp $1:$2 OK $out";; *) echo "tcp $1:$2 FAIL";; esac; }
u() { if out=$(tenant_probe udp "$1" "$2"); then echo "udp $1:$2 OK $out"; else echo "udp $1:$2 FAIL"; fi; }
p() { if tenant_probe icmp "$1" >/dev/null; then echo "icmp $1 OK"; else echo "icmp $1 FAIL"; fi; }
"""


def probe(driver: NspawnDriver, tenant: str, tool: Path, checks: list[str]) -> dict[str, str]:
    """Run the checks ("tcp ADDRESS PORT", "udp ADDRESS PORT", "icmp ADDRESS") at once as the tenant's payload;
    returns e.g. {"tcp 198.51.100.2:8080": "OK outside 198.51.100.2:8080 saw 198.51.100.1"}."""
    lines = []
    for check in checks:
        kind, *rest = check.split()
        lines.append(f"{ {'tcp': 't', 'udp': 'u', 'icmp': 'p'}[kind] } {' '.join(rest)} &")
    output = as_payload(driver, tenant, PROBE + "\n".join(lines) + "\nwait\necho probe-done\n", probe=tool)
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


def forbidden(driver: NspawnDriver, tenant: str, neighbour: Observed) -> list[str]:
    """What no mode ever reaches: the node (its end of the tenant's veth, its outbound address) and another
    tenant (its address, and its own end of that tenant's veth)."""
    lease = driver.networks.leases.get(tenant)
    other = driver.networks.leases.get(neighbour.name)
    assert lease is not None and other is not None and neighbour.address is not None
    return [
        f"tcp {lease.host_address} {HOST_PORT}",
        f"tcp {HOST_SIDE} {HOST_PORT}",
        f"tcp {other.host_address} {HOST_PORT}",
        f"tcp {neighbour.address} 80",
        f"icmp {neighbour.address}",
        f"icmp {lease.host_address}",
    ]


def forwarding(interface: str) -> str | None:
    return nspawn_egress.read_forwarding(interface)


def table() -> dict[str, object]:
    done = subprocess.run(["nft", "-j", "list", "table", "inet", "fleet"], capture_output=True, text=True, check=True)
    found: dict[str, object] = {}
    for item in json.loads(done.stdout)["nftables"]:
        if "set" in item:
            found[item["set"]["name"]] = item["set"].get("elem", [])
        if "chain" in item:
            found["chain " + item["chain"]["name"]] = True
    return found


def apply(driver: NspawnDriver, tenant: str, egress: object) -> Observed:
    driver.apply_network(tenant, Network(ingress=(80,), egress=egress))
    observed = driver.inspect(tenant)
    assert observed is not None
    return observed


def test_none_internet_and_rule_lists_apply_in_place_and_never_reach_the_node_or_another_tenant(
    egress_driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path, outside: Outside
) -> None:
    driver = egress_driver
    global_forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    tenant, neighbour = make_tenant("eg-a"), make_tenant("eg-b")
    veth = veth_name(tenant.name)
    lease = driver.networks.leases.get(tenant.name)
    other = driver.networks.leases.get(neighbour.name)
    assert lease is not None and other is not None
    every = OUT_TCP + OUT_OTHER + NON_PUBLIC
    with HostListener([lease.host_address, HOST_SIDE, other.host_address], HOST_PORT) as host:
        never = forbidden(driver, tenant.name, neighbour)

        # none: today's behaviour, nothing outside the tenant
        assert tenant.network.egress == ()
        assert passed(probe(driver, tenant.name, tenant_probe, every + never)) == set()
        assert forwarding(veth) == "0" and forwarding(UPLINK) == "0"
        assert table().get("egress_out") == [] and "chain postrouting" not in table()

        # internet: public addresses through the outbound interface, masqueraded; never private or link-local
        observed = apply(driver, tenant.name, "internet")
        assert observed.network.egress == Network(egress="internet").egress and observed.problems == ()
        assert observed.pid == tenant.pid, "changed in place: the container was not restarted"
        results = probe(driver, tenant.name, tenant_probe, every + never)
        assert passed(results) == {
            f"tcp {OUTSIDE}:8080",
            f"tcp {OUTSIDE}:8443",
            f"tcp {PUBLIC_TOO}:8080",
            f"udp {OUTSIDE}:5353",
            f"icmp {OUTSIDE}",
        }, results
        assert results[f"tcp {OUTSIDE}:8080"] == f"OK outside {OUTSIDE}:8080 saw {HOST_SIDE}", "masqueraded"
        assert forwarding(veth) == "1" and forwarding(UPLINK) == "1" and forwarding(veth_name(neighbour.name)) == "0"
        guard = table()["egress_guard"]
        assert isinstance(guard, list) and [e if isinstance(e, str) else e["elem"]["val"] for e in guard] == [UPLINK]
        assert passed(probe(driver, neighbour.name, tenant_probe, OUT_TCP)) == set(), "the neighbour kept none"

        # a list, in place: one port of one address, and a private range by name
        rules = [{"to": f"{OUTSIDE}/32", "ports": [8443]}, {"to": "10.222.9.0/24", "ports": [8080, 5353]}]
        observed = apply(driver, tenant.name, rules)
        assert observed.network.egress == Network(egress=rules).egress and observed.pid == tenant.pid
        results = probe(driver, tenant.name, tenant_probe, every + never)
        assert passed(results) == {f"tcp {OUTSIDE}:8443", f"tcp {PRIVATE}:8080"}, results

        # all of 10/8 allowed, the tenants' own range with it: still neither the node nor the neighbour
        observed = apply(driver, tenant.name, [{"to": "10.0.0.0/8"}, {"to": "169.254.222.9"}])
        results = probe(driver, tenant.name, tenant_probe, every + never)
        assert passed(results) == {f"tcp {PRIVATE}:8080", f"tcp {LINK_LOCAL}:8080"}, results

        # back to none: the node's side goes with the last egress rule, its forwarding as it was found
        observed = apply(driver, tenant.name, "none")
        assert observed.network.egress == () and observed.pid == tenant.pid
        assert passed(probe(driver, tenant.name, tenant_probe, every + never)) == set()
        assert forwarding(veth) == "0" and forwarding(UPLINK) == "0"
        state = table()
        assert state["egress_out"] == [] and state["egress_guard"] == [] and state["egress_nat"] == []
        assert "chain postrouting" not in state and not (driver.data_dir / "state" / "egress.json").exists()
        assert host.accepted == [], f"the node was reached from {host.accepted}"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == global_forwarding, "the global switch untouched"


def _delete_rule(chain: str, comment: str) -> None:
    listed = json.loads(
        subprocess.run(
            ["nft", "-j", "-a", "list", "chain", "inet", "fleet", chain], capture_output=True, text=True, check=True
        ).stdout
    )
    handle = next(
        item["rule"]["handle"]
        for item in listed["nftables"]
        if "rule" in item and item["rule"].get("comment") == comment
    )
    subprocess.run(["nft", "delete", "rule", "inet", "fleet", chain, "handle", str(handle)], check=True)


def _desired(name: str, network: Network) -> ResolvedSpec:
    return ResolvedSpec(
        name=name,
        generation=1,
        template=Template(name="base", version="1"),
        resources=Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi"),
        network=network,
    )


@pytest.mark.parametrize("drift", ["element", "masquerade", "forwarding", "base-rule"])
def test_egress_drift_is_observed_and_repaired_by_the_next_pass(
    egress_driver: NspawnDriver, make_tenant: MakeTenant, tenant_probe: Path, outside: Outside, drift: str
) -> None:
    driver = egress_driver
    tenant = make_tenant("eg-drift")
    veth = veth_name(tenant.name)
    wanted = Network(ingress=(80,), egress=[{"to": "internet", "ports": [8080]}])
    driver.apply_network(tenant.name, wanted)
    assert passed(probe(driver, tenant.name, tenant_probe, [f"tcp {OUTSIDE} 8080"])) == {f"tcp {OUTSIDE}:8080"}

    if drift == "element":
        subprocess.run(
            ["nft", "delete", "element", "inet", "fleet", "egress_internet_ports", f'{{ "{veth}" . 8080 }}'], check=True
        )
    elif drift == "masquerade":
        _delete_rule("postrouting", "fleet:egress:masquerade")
    elif drift == "forwarding":
        Path(nspawn_egress.FORWARDING.format(veth)).write_text("0")
    else:
        _delete_rule("forward", "fleet:base:egress-replies")
    if drift != "base-rule":  # an incomplete table is observed as no network at all (no address to probe)
        assert passed(probe(driver, tenant.name, tenant_probe, [f"tcp {OUTSIDE} 8080"])) == set(), "the drift bites"

    observed = driver.inspect(tenant.name)
    assert observed is not None
    desired = _desired(tenant.name, wanted)
    assert ApplyNetwork(wanted) in plan(desired, observed), (observed.network, observed.problems)
    driver.apply_network(tenant.name, wanted)  # what the next pass runs
    repaired = driver.inspect(tenant.name)
    assert repaired is not None and repaired.network == wanted and plan(desired, repaired) == []
    assert passed(probe(driver, tenant.name, tenant_probe, [f"tcp {OUTSIDE} 8080"])) == {f"tcp {OUTSIDE}:8080"}


def test_egress_out_of_an_interface_the_node_lacks_is_refused_saying_what_to_set(
    nspawn_driver: object, make_tenant: MakeTenant, outside: Outside
) -> None:
    driver = NspawnDriver(TEST_DATA_DIR, image_size=TEST_IMAGE_SIZE, egress_interface="egt-missing")
    tenant = make_tenant("eg-nowhere")
    with pytest.raises(PermanentError, match="--egress-interface") as raised:
        driver.apply_network(tenant.name, Network(ingress=(80,), egress="internet"))
    assert raised.value.reason == "EgressUnavailable"
    observed = driver.inspect(tenant.name)
    assert observed is not None and observed.network.egress == () and observed.address == tenant.address
    assert table().get("egress_out") == []


# -- the whole operator: `fleet up --egress-interface`, specs written with `fleet apply` ------------------
E2E_DIR = Path("/var/tmp/fleet-test-egress")  # fixed, so a killed run's leftovers are found and removed
E2E_PREFIX, E2E_RANGE = "fx-", "10.224.0.0/16"  # no other test uses 10.224/16
E2E_TENANT = "kind: Tenant\nmetadata: {name: fx-web}\nspec: {template: base, network: {egress: EGRESS}}\n"


def _e2e_sweep() -> None:
    from tests.integration.sweep import sweep_node

    sweep_node(E2E_DIR, prefix=E2E_PREFIX, address_range=E2E_RANGE)


def test_fleet_up_applies_a_policy_change_in_place_and_repairs_a_rule_deleted_by_hand(
    nspawn_driver: object, outside: Outside, tenant_probe: Path
) -> None:
    from tests.e2e.conftest import Fleet, start_operator, stop_operator
    from tests.helpers import wait_for

    _e2e_sweep()
    fleet = Fleet(data_dir=E2E_DIR)
    process = start_operator(fleet, "--driver", "nspawn", "--pool-size", "2Gi", "--address-range", E2E_RANGE,
                             "--egress-interface", UPLINK)
    try:
        fleet.run("apply", "-f", "-", stdin=E2E_TENANT.replace("EGRESS", "internet"))
        wait_for(lambda: (fleet.tenant("fx-web") or {}).get("status", {}).get("phase") == "Running", timeout=60,
                 what="fx-web to run")
        view = NspawnDriver(E2E_DIR, image_size=2 << 30, address_range=E2E_RANGE)  # reads the host, as fleet up does
        checks = [f"tcp {OUTSIDE} 8080", f"tcp {OUTSIDE} 8443", f"tcp {PRIVATE} 8080"]
        assert passed(probe(view, "fx-web", tenant_probe, checks)) == {f"tcp {OUTSIDE}:8080", f"tcp {OUTSIDE}:8443"}
        shown = fleet.run("get", "tenant", "fx-web", "-o", "yaml").stdout
        assert "egress: internet" in shown, shown
        container = view.processes.find("fx-web")
        assert container is not None

        # a policy change through the store, applied in place by the reconciler
        fleet.run("apply", "-f", "-", stdin=E2E_TENANT.replace("EGRESS", f"[{{to: {OUTSIDE}, ports: [8443]}}]"))
        narrowed = {f"tcp {OUTSIDE}:8443"}
        wait_for(lambda: passed(probe(view, "fx-web", tenant_probe, checks)) == narrowed, timeout=30,
                 what="the narrowed policy to be in force")
        again = view.processes.find("fx-web")
        assert again is not None and again.pid == container.pid, "changed without a restart"
        assert f"Egress:        {OUTSIDE}/32:8443" in fleet.run("describe", "tenant", "fx-web").stdout

        # drift: the rule deleted by hand comes back on the next pass
        veth = veth_name("fx-web")
        applied = fleet.run("events", "fx-web").stdout.count("NetworkApplied")
        subprocess.run(["nft", "delete", "element", "inet", "fleet", "egress_ports",
                        f'{{ "{veth}" . {OUTSIDE}/32 . 8443 }}'], check=True)
        wait_for(lambda: passed(probe(view, "fx-web", tenant_probe, checks)) == narrowed, timeout=30,
                 what="the deleted rule to be put back")
        wait_for(lambda: fleet.run("events", "fx-web").stdout.count("NetworkApplied") > applied, timeout=30,
                 what="the repair to be recorded")
        view.close()

        # the node's side goes with the last tenant
        fleet.run("delete", "tenant", "fx-web", "--wait", "--timeout", "60")
        state = table()
        assert state["egress_out"] == [] and "chain postrouting" not in state
        assert forwarding(UPLINK) == "0"
    finally:
        stop_operator(fleet, process)
        _e2e_sweep()

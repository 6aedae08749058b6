"""LXD tenants as a user sees them: the page answers at the address Fleet reports, limits hold in place,
a memory hog stops at its own limit, and tenants reach neither each other nor the host's services. Every
probe from inside runs *as the tenant's payload* (a CGI its own httpd runs)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.lxd import LxdDriver
from drivers.lxd_config import NIC_DEVICE
from drivers.lxd_network import IngressRule
from specs import Network, Observed, Resources

pytest.register_assert_rewrite("tests.lxd.runtime")
from tests.lxd.runtime import BASE, TEST_PREFIX, as_payload, http_get, wait_for, wait_http  # noqa: E402

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
MakeTenant = Callable[..., Observed]


@pytest.fixture
def driver(lxd_driver: object) -> LxdDriver:
    assert isinstance(lxd_driver, LxdDriver)
    return lxd_driver


def _cgroup(controller: str, tenant: str, name: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/lxc.payload.{tenant}/{name}")


def test_tenant_page_answers_at_the_address_fleet_reports(driver: LxdDriver, make_lxd_tenant: MakeTenant) -> None:
    tenant = make_lxd_tenant("page")
    assert tenant.running and tenant.address is not None and tenant.problems == ()
    page = wait_http(tenant.address)
    assert b"This is a Fleet tenant" in page and tenant.name.encode() in page
    assert tenant.template == "base@1"


def test_requota_changes_the_running_container_in_place(driver: LxdDriver, make_lxd_tenant: MakeTenant) -> None:
    before = make_lxd_tenant("requota", Resources(cpu="500m", memory="64Mi", pids=64, disk="64Mi"))
    wanted = Resources(cpu="1.5", memory="256Mi", pids=300, disk="256Mi")
    driver.apply_resources(before.name, wanted)
    after = driver.inspect(before.name)
    assert after is not None and after.resources == wanted and after.pid == before.pid and after.running
    assert _cgroup("cpu", before.name, "cpu.cfs_quota_us").read_text().strip() == "150000"  # a hard quota
    assert _cgroup("memory", before.name, "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    assert _cgroup("pids", before.name, "pids.max").read_text().strip() == "300"


def test_memory_hog_is_stopped_at_its_limit_and_the_neighbour_never_notices(
    driver: LxdDriver, make_lxd_tenant: MakeTenant
) -> None:
    hog = make_lxd_tenant("hog", Resources(cpu="1", memory="48Mi", pids=64, disk="64Mi"))
    calm = make_lxd_tenant("calm")
    assert hog.address and calm.address
    # dd allocates and fills one 256 MiB block: far over the tenant's 48 MiB.
    hog_script = "dd if=/dev/zero of=/dev/null bs=256M count=1; echo rc=$?"
    output = as_payload(driver.client, hog.name, hog.address, hog_script)
    assert "rc=137" in output, output  # SIGKILL: the OOM killer inside the tenant's own cgroup
    observed = driver.inspect(hog.name)
    assert observed is not None and any("memory limit" in problem for problem in observed.problems)
    assert http_get(calm.address) is not None and http_get(hog.address) is not None


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP service on every host address, as the host's private services would listen."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.sendall(b"HTTP/1.0 200 OK\r\n\r\nhost-secret\n")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_tenants_reach_neither_each_other_nor_host_services(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, host_listener: int
) -> None:
    a, b = make_lxd_tenant("iso-a"), make_lxd_tenant("iso-b")
    assert a.address and b.address
    wait_http(b.address)
    script = (f"wget -T 3 -q -O - http://{b.address}/ && echo REACHED-B; "
              f"wget -T 3 -q -O - http://{driver.bridge.gateway}:{host_listener}/ && echo REACHED-HOST; "
              f"ping -c 1 -W 2 {b.address} >/dev/null 2>&1 && echo PINGED-B; "
              f"ip addr add {b.address}/24 dev eth0 2>&1; echo probe-done")
    output = as_payload(driver.client, a.name, a.address, script)
    assert "probe-done" in output, output
    for claim in ("REACHED-B", "REACHED-HOST", "PINGED-B", "host-secret"):
        assert claim not in output, f"{claim} from inside tenant a:\n{output}"
    assert http_get(b.address) is not None  # while the host (the gateway) reaches b's page
    with socket.create_connection((b.address, 80), timeout=2):
        pass
    assert http_get(b.address, port=81, timeout=1.0) is None  # only the spec's ingress ports are let in


def test_a_fresh_clone_is_unreachable_until_its_ingress_rule_lands(
    driver: LxdDriver, make_lxd_tenant: MakeTenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clone` writes the tenant's ingress rule in the background: the window before it lands, held open
    here, must leave the new tenant closed to its neighbours and to the host alike (the bridge drops what
    no rule lets in), and once the rule lands only the host gets in."""
    a = make_lxd_tenant("win-a")
    assert a.address is not None
    name = f"{TEST_PREFIX}win-b"
    hold, held_for = threading.Event(), threading.Event()
    write = driver.bridge.set_rule

    def held(rule: IngressRule) -> None:
        if rule.tenant == name:
            held_for.set()
            assert hold.wait(120), "the test never released the rule"
        write(rule)

    monkeypatch.setattr(driver.bridge, "set_rule", held)
    try:
        driver.clone(name, BASE, generation=1)
        driver.apply_resources(name, BASE.resources, generation=1)
        driver.start(name)
        wait_for(held_for.is_set, timeout=10, what="the background ingress-rule write to begin")
        instance = driver.client.instance(name, state=False)
        assert instance is not None and instance.running
        b_address = instance.devices[NIC_DEVICE]["ipv4.address"]
        observed = driver.inspect(name)
        assert observed is not None and observed.address is None, "not ready before its rule is written"
        assert "ingress rule missing" in observed.problems
        script = (f"wget -T 2 -q -O - http://{b_address}/ && echo REACHED-B; "
                  f"ping -c 1 -W 2 {b_address} >/dev/null 2>&1 && echo PINGED-B; echo probe-done")
        output = as_payload(driver.client, a.name, a.address, script)
        assert "probe-done" in output and "REACHED-B" not in output and "PINGED-B" not in output, output
        assert http_get(b_address, timeout=1.0) is None, "the host reached the tenant before its rule landed"
        hold.set()
        driver.apply_network(name, Network(ingress=(80,)))  # waits for the background write, as the planner's step
        assert b"This is a Fleet tenant" in wait_http(b_address)
        output = as_payload(driver.client, a.name, a.address, script)
        assert "probe-done" in output and "REACHED-B" not in output and "PINGED-B" not in output, output
    finally:
        hold.set()
        driver.delete(name)


UNPRIVILEGED_PROBE = r"""
echo "uidmap: $(cat /proc/self/uid_map)"; id -u; grep CapEff /proc/self/status
v=$(cat /proc/sys/kernel/core_pattern); echo "read core_pattern=$v"
echo "$v" > /proc/sys/kernel/core_pattern && echo WROTE core_pattern
echo h > /proc/sysrq-trigger && echo WROTE sysrq
mount -o remount,rw /sys && echo REMOUNTED sys
mount -o remount,bind,rw /proc/sys && echo REMOUNTED proc_sys
mkdir -p /tmp/s /tmp/b /tmp/p
# A fresh proc or sysfs of its own namespaces may be mounted (as in any unprivileged container): the host's
# knobs seen through it must stay unwritable.
mount -t proc proc /tmp/p && echo "fresh proc mounted"
v=$(cat /tmp/p/sys/kernel/core_pattern) && echo "$v" > /tmp/p/sys/kernel/core_pattern && echo WROTE fresh_core_pattern
echo h > /tmp/p/sysrq-trigger && echo WROTE fresh_sysrq
mount -t sysfs sysfs /tmp/s && echo "fresh sysfs mounted"
v=$(cat /tmp/s/kernel/mm/ksm/run) && echo "$v" > /tmp/s/kernel/mm/ksm/run && echo WROTE fresh_ksm_run
mknod /tmp/blk b 7 0 && mount /tmp/blk /tmp/b && echo MOUNTED block
dd if=/tmp/blk of=/dev/null bs=4k count=1 2>/dev/null && echo READ block
echo probe-done
"""


def test_tenant_runs_unprivileged_in_a_uid_range_of_its_own(driver: LxdDriver, make_lxd_tenant: MakeTenant) -> None:
    a, b = make_lxd_tenant("priv-a"), make_lxd_tenant("priv-b")
    host_core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    ranges = []
    for tenant in (a, b):
        assert tenant.address is not None
        output = as_payload(driver.client, tenant.name, tenant.address, UNPRIVILEGED_PROBE)
        assert "probe-done" in output, output
        inside, outside, count = (int(v) for v in re.search(r"uidmap:\s*(\d+)\s+(\d+)\s+(\d+)", output).groups())  # type: ignore[union-attr]
        assert inside == 0 and outside > 0, f"root of {tenant.name} is host uid {outside}:\n{output}"
        assert re.search(r"^0$", output, re.M), "the payload is root of its own namespace"
        ranges.append(range(outside, outside + count))
        assert "mknod: /tmp/blk: Operation not permitted" in output, output  # so no disk can be mounted
        for claim in ("WROTE", "REMOUNTED", "MOUNTED block", "READ block"):
            assert claim not in output, f"{claim!r} from inside {tenant.name}:\n{output}"
    first, second = ranges
    assert first.stop <= second.start or second.stop <= first.start, f"id ranges overlap: {ranges}"
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core_pattern


def test_egress_no_spec_makes_is_refused_and_the_tenant_keeps_what_it_had(
    driver: LxdDriver, make_lxd_tenant: MakeTenant
) -> None:
    """Egress itself is tests/lxd/test_lxd_egress.py; a value a raw SQL writer stored past validation (two
    overlapping rules, host bits set) fails before anything changes, typed."""
    from specs import PermanentError
    from specs.tenant import EgressRule

    tenant = make_lxd_tenant("egress")
    driver.apply_network(tenant.name, Network(ingress=(80,), egress=[{"to": "198.51.100.0/24", "ports": [443]}]))
    for bad in ((EgressRule.model_construct(to="198.51.100.7/24", ports=None),),
                (EgressRule.model_construct(to="10.0.0.0/8", ports=None),
                 EgressRule.model_construct(to="10.1.0.0/16", ports=(443,)))):
        with pytest.raises(PermanentError) as raised:
            driver.apply_network(tenant.name, Network.model_construct(ingress=(80,), egress=bad))
        assert raised.value.reason == "BadEgress"
    after = driver.inspect(tenant.name)
    assert after is not None and after.network == Network(ingress=(80,), egress=[{"to": "198.51.100.0/24",
                                                                                   "ports": [443]}])
    assert after.address == tenant.address and after.pid == tenant.pid
    driver.apply_network(tenant.name, Network(ingress=(80,), egress="none"))
    assert tenant.address is not None and b"Fleet tenant" in wait_http(tenant.address)

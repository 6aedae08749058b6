"""A tenant's usage: the fake driver's (what unit tests and the simulation see) and how the nspawn facet reads
the kernel's files (cgroup v1 and v2, the host end of the veth), on a copy of their layout."""

from pathlib import Path

from drivers.fake import FakeDriver
from drivers.nspawn_network import veth_name
from drivers.nspawn_usage import cgroup_usage, network_bytes, tenant_usage
from specs import Template, Usage

BASE = Template(name="base", version="1")


def test_the_fake_driver_reports_usage_of_its_tenants_only() -> None:
    driver = FakeDriver()
    driver.ensure_template(BASE)
    for name in ("a", "b"):
        driver.clone(name, BASE)
    driver.start("a")
    driver.set_usage("a", cpu_seconds=2.5, memory_bytes=1 << 20, network_in_bytes=7)
    assert driver.usage() == [
        Usage(tenant="a", running=True, cpu_seconds=2.5, memory_bytes=1 << 20, network_in_bytes=7),
        Usage(tenant="b", running=False),
    ]
    assert driver.usage(["b", "gone"]) == [Usage(tenant="b")], "a name it does not have is left out"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_cgroup_v1_usage_is_read_from_cpuacct_and_memory(tmp_path: Path) -> None:
    _write(tmp_path / "cpuacct/fleet/tenant-acme/cpuacct.usage", "2500000000")
    _write(tmp_path / "memory/fleet/tenant-acme/memory.usage_in_bytes", "1048576")
    _write(tmp_path / "memory/fleet/tenant-acme/memory.max_usage_in_bytes", "4194304")
    usage = cgroup_usage(tmp_path, 1, "acme")
    assert (usage.cpu_seconds, usage.memory_bytes, usage.memory_peak_bytes) == (2.5, 1 << 20, 4 << 20)


def test_cgroup_v2_usage_is_read_from_cpu_stat_and_memory_current(tmp_path: Path) -> None:
    _write(tmp_path / "fleet.slice/tenant-acme/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000")
    _write(tmp_path / "fleet.slice/tenant-acme/memory.current", "2097152")
    _write(tmp_path / "fleet.slice/tenant-acme/memory.peak", "3145728")
    usage = cgroup_usage(tmp_path, 2, "acme")
    assert (usage.cpu_seconds, usage.memory_bytes, usage.memory_peak_bytes) == (1.5, 2 << 20, 3 << 20)


def test_a_tenant_without_cgroups_or_veth_uses_nothing(tmp_path: Path) -> None:
    usage = tenant_usage("idle", cgroup_root=tmp_path, cgroup_version=1, disk_bytes=16384, running=False,
                         net_class=tmp_path / "net")
    assert usage == Usage(tenant="idle", disk_bytes=16384)


def test_network_in_is_what_the_host_end_of_the_veth_sent(tmp_path: Path) -> None:
    statistics = tmp_path / veth_name("acme") / "statistics"
    _write(statistics / "tx_bytes", "1000")  # the host end sent it: the tenant received it
    _write(statistics / "rx_bytes", "250")  # the host end received it: the tenant sent it
    assert network_bytes("acme", tmp_path) == (1000, 250)

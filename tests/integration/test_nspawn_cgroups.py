"""Per-tenant cgroups on the real host (v1, proven here) and the v2 file formats (on a scratch tree)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import nspawn_cgroups
from drivers.nspawn_cgroups import CgroupsV1, CgroupsV2
from specs import Resources

pytest.register_assert_rewrite("tests.integration.conftest_runtime")  # before the import: its asserts are rewritten
from tests.integration.conftest_runtime import TEST_PREFIX, runtime_unavailable, wait_for  # noqa: E402

TENANT = f"{TEST_PREFIX}cgroups"


@pytest.fixture
def cgroups() -> Iterator[nspawn_cgroups.Cgroups]:
    reason = runtime_unavailable()
    if reason:
        pytest.skip(reason)
    layout = nspawn_cgroups.detect()
    if layout.version != 1:
        pytest.skip("this host offers cgroup v2; the v1 tests prove the v1 layout")
    layout.remove(TENANT)
    try:
        yield layout
    finally:
        layout.remove(TENANT)


def _join(procs_files: list[Path]) -> None:
    for procs in procs_files:
        procs.write_text(str(os.getpid()))


def _spawn_in(cgroups: nspawn_cgroups.Cgroups, code: str) -> subprocess.Popen[bytes]:
    # preexec_fn is fine in a single-threaded test: it puts the child in the tenant's cgroups before exec.
    files = cgroups.procs_files(TENANT)
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=lambda: _join(files))


@pytest.mark.root
def test_limits_are_written_to_the_kernel_and_read_back(cgroups: nspawn_cgroups.Cgroups) -> None:
    cgroups.apply(TENANT, Resources(cpu="250m", memory="96Mi", pids=50))
    cpu = Path("/sys/fs/cgroup/cpu/fleet/tenant-" + TENANT)
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    memory = Path("/sys/fs/cgroup/memory/fleet/tenant-" + TENANT) / "memory.limit_in_bytes"
    assert memory.read_text().strip() == str(96 << 20)
    assert (Path("/sys/fs/cgroup/pids/fleet/tenant-" + TENANT) / "pids.max").read_text().strip() == "50"
    assert cgroups.read(TENANT) == Resources(cpu="250m", memory="96Mi", pids=50)


@pytest.mark.root
def test_requota_changes_values_and_none_means_unlimited(cgroups: nspawn_cgroups.Cgroups) -> None:
    cgroups.apply(TENANT, Resources(cpu="2", memory="1Gi", pids=4000))
    cgroups.apply(TENANT, Resources(cpu="100m"))
    observed = cgroups.read(TENANT)
    assert (observed.cpu, observed.memory, observed.pids) == (100, None, None)


@pytest.mark.root
def test_a_cpu_limit_carries_a_burst_of_one_period_and_lowering_it_lowers_the_burst(
    cgroups: nspawn_cgroups.Cgroups,
) -> None:
    cpu = Path("/sys/fs/cgroup/cpu/fleet/tenant-" + TENANT)
    if not (cpu.parent.parent / "cpu.cfs_burst_us").exists():
        pytest.skip("this kernel has no CPU burst (5.14+)")
    cgroups.apply(TENANT, Resources(cpu="2"))
    assert (cpu / "cpu.cfs_burst_us").read_text().strip() == "200000"
    # The kernel refuses a quota below the burst: the driver lowers both without an error.
    cgroups.apply(TENANT, Resources(cpu="100m"))
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "10000"
    assert (cpu / "cpu.cfs_burst_us").read_text().strip() == "10000"
    cgroups.apply(TENANT, Resources())
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert (cpu / "cpu.cfs_burst_us").read_text().strip() == "0"


@pytest.mark.root
def test_remove_kills_tasks_and_removes_nested_groups_deepest_first(cgroups: nspawn_cgroups.Cgroups) -> None:
    cgroups.apply(TENANT, Resources(pids=20))
    child = _spawn_in(cgroups, "import time; time.sleep(60)")
    nested = Path("/sys/fs/cgroup/systemd/fleet/tenant-" + TENANT) / "payload" / "inner"
    nested.mkdir(parents=True)
    wait_for(lambda: child.pid in cgroups.pids(TENANT), what="the child to be in the tenant's cgroups")
    assert TENANT in cgroups.list_tenants()
    removed = cgroups.remove(TENANT)
    assert child.wait(timeout=5) == -9
    # rmdir refuses a cgroup with children, so "gone" also proves the order: deepest first
    assert f"cgroup {nested.parent.parent} and 2 below it" in removed, removed
    assert not nested.exists()
    assert not cgroups.exists(TENANT)
    assert cgroups.remove(TENANT) == []  # twice is fine
    assert TENANT not in cgroups.list_tenants()


@pytest.mark.root
def test_remove_and_pids_follow_a_tree_deeper_than_path_max(cgroups: nspawn_cgroups.Cgroups) -> None:
    """A tenant may mkdir in its delegated subtree as deep as it likes; no path could name the bottom."""
    cgroups.apply(TENANT, Resources(pids=20))
    top = Path("/sys/fs/cgroup/systemd/fleet/tenant-" + TENANT)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(30):  # 30 x 201 bytes: past PATH_MAX (4096)
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("cgroup.procs", os.O_WRONLY, dir_fd=fd), "w") as procs:
            child_process = _spawn_in(cgroups, "import time; time.sleep(60)")
            procs.write(str(child_process.pid))  # moved to the bottom of the tree
    finally:
        os.close(fd)
    assert child_process.pid in cgroups.pids(TENANT)
    removed = cgroups.remove(TENANT)
    assert child_process.wait(timeout=5) == -9
    assert f"cgroup {top} and 30 below it" in removed, removed
    assert not cgroups.exists(TENANT)


@pytest.mark.root
def test_memory_hog_is_oom_killed_and_counted(cgroups: nspawn_cgroups.Cgroups) -> None:
    cgroups.apply(TENANT, Resources(memory="32Mi"))
    assert cgroups.oom_kills(TENANT) == 0
    hog = _spawn_in(cgroups, "b = bytearray(256 << 20)")
    assert hog.wait(timeout=30) == -9
    assert cgroups.oom_kills(TENANT) >= 1


@pytest.mark.root
def test_cpu_usage_is_accounted(cgroups: nspawn_cgroups.Cgroups) -> None:
    cgroups.apply(TENANT, Resources(cpu="1"))
    worker = _spawn_in(cgroups, "sum(range(3_000_000))")
    assert worker.wait(timeout=30) == 0
    assert cgroups.cpu_usage_ns(TENANT) > 0


# -- v2: not available on this CI host; the file formats are checked on a scratch tree -------------------
def _fake_v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_is_detected_when_the_unified_hierarchy_has_the_controllers(tmp_path: Path) -> None:
    assert isinstance(nspawn_cgroups.detect(_fake_v2_root(tmp_path)), CgroupsV2)


def test_v2_writes_cpu_max_memory_max_pids_max_in_kernel_format(tmp_path: Path) -> None:
    root = _fake_v2_root(tmp_path)
    layout = CgroupsV2(root)
    layout.apply("alpha", Resources(cpu="1.5", memory="256Mi", pids=100))
    group = root / "fleet.slice" / "tenant-alpha"
    assert (group / "cpu.max").read_text() == "150000 100000"
    assert not (group / "cpu.max.burst").exists()  # a kernel without the burst file: the quota alone
    (group / "cpu.max.burst").write_text("0")
    layout.apply("alpha", Resources(cpu="1.5", memory="256Mi", pids=100))
    assert (group / "cpu.max.burst").read_text() == "150000"
    assert (group / "memory.max").read_text() == str(256 << 20)
    assert (group / "pids.max").read_text() == "100"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids +io"
    assert layout.read("alpha") == Resources(cpu="1.5", memory="256Mi", pids=100)
    layout.apply("alpha", Resources())
    assert (group / "cpu.max").read_text() == "max 100000"
    assert layout.read("alpha") == Resources()
    # memory and swap: v2 cannot bound them together, so a limited tenant gets no swap; io.max per device
    (group / "memory.swap.max").write_text("max")
    layout.apply("alpha", Resources(memory="64Mi", io="2Mi"), io_devices=["7:0"])
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "io.max").read_text() == f"7:0 rbps={2 << 20} wbps={2 << 20}"
    (group / "io.max").write_text(f"7:0 rbps={2 << 20} wbps={2 << 20} riops=max wiops=max\n")  # as the kernel shows it
    assert layout.read("alpha", ["7:0"]) == Resources(memory="64Mi", io="2Mi")
    (group / "memory.swap.max").write_text("max")  # swap let loose by hand: drift the planner repairs
    assert layout.read("alpha", ["7:0"]).memory is None
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert layout.oom_kills("alpha") == 2
    assert layout.list_tenants() == ["alpha"]


def test_v1_is_detected_on_this_kind_of_host(tmp_path: Path) -> None:
    for hierarchy in CgroupsV1.HIERARCHIES:
        (tmp_path / hierarchy).mkdir()
    assert isinstance(nspawn_cgroups.detect(tmp_path), CgroupsV1)

"""A real nspawn tenant's usage, as the driver reads it from the host (cgroup v1 files, the btrfs qgroup and
the host end of its veth), and as `fleet top tenants` shows it: the tenant burns CPU, writes a file and
answers HTTP requests as its own payload, and every counter moves by what it did."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from specs import Observed, Resources, Usage
from state import Store
from tests.helpers import wait_for
from tests.integration.conftest_runtime import BASE, TEST_DATA_DIR, TEST_PREFIX, as_payload, http_get, wait_http

pytest_plugins = ["tests.integration.conftest_runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]

FLEET = str(Path(sys.executable).parent / "fleet")
WRITTEN = 8 << 20


def usage_of(driver: object, tenant: str) -> Usage:
    found = driver.usage([tenant])  # type: ignore[attr-defined]
    assert [u.tenant for u in found] == [tenant]
    return found[0]


def test_usage_moves_with_what_the_tenant_does(nspawn_driver: object, make_tenant: Callable[..., Observed],
                                               tmp_path: Path) -> None:
    observed = make_tenant("usage", resources=Resources(cpu="1", memory="128Mi", pids=128, disk="256Mi"))
    assert observed.address is not None
    wait_http(observed.address)
    before = usage_of(nspawn_driver, observed.name)
    assert before.running and before.memory_bytes > 0, before

    # As its own payload: burn CPU for a while, write 8 MiB to its own disk.
    as_payload(nspawn_driver, observed.name,
               "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; "
               f"dd if=/dev/urandom of=/srv/blob bs=1M count={WRITTEN >> 20} 2>/dev/null; echo done")
    for _ in range(20):  # requests from the host: bytes into the tenant, pages out of it
        # busybox httpd now and then resets a connection while its CGI child is still exiting: ask again.
        wait_for(lambda: http_get(observed.address), timeout=5, what="a page from the tenant")  # type: ignore[arg-type]

    # btrfs charges writes to the qgroup when it commits its transaction (every 30 s): commit now.
    subprocess.run(["btrfs", "filesystem", "sync", str(nspawn_driver.pool.root)], check=True)  # type: ignore[attr-defined]
    after = wait_for(lambda: (u := usage_of(nspawn_driver, observed.name)).disk_bytes >= WRITTEN and u,
                     timeout=30, what="the 8 MiB written to be charged to the tenant's qgroup")
    assert after.cpu_seconds > before.cpu_seconds + 0.05, (before, after)
    assert after.network_in_bytes > before.network_in_bytes + 20 * 60, "20 requests' bytes reached the tenant"
    assert after.network_out_bytes > before.network_out_bytes + 20 * 100, "20 pages left it"
    assert after.memory_peak_bytes >= after.memory_bytes > 0
    assert after.memory_bytes <= 128 << 20, "within its memory limit"

    # `fleet top tenants` on this node shows the same tenant, with the counters at least where they were.
    store = tmp_path / "fleet.db"
    Store(f"sqlite:///{store}").close()  # top reads the tenants' limits from the store; this one has none
    result = subprocess.run(
        [FLEET, "--db", f"sqlite:///{store}", "top", "tenants", "--driver", "nspawn", "--data-dir",
         str(TEST_DATA_DIR), "--interval", "0.5", "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["tenant"]: row for row in json.loads(result.stdout)}
    assert observed.name in rows, result.stdout
    shown = rows[observed.name]
    assert shown["running"] is True
    assert shown["cpu_seconds"] >= after.cpu_seconds and shown["disk_bytes"] >= WRITTEN
    assert shown["network_in_bytes"] >= after.network_in_bytes
    assert shown["cpu_cores"] is not None and shown["cpu_cores"] >= 0


def test_disk_shared_by_copy_on_write_counts_the_template_once_per_clone(nspawn_driver: object) -> None:
    """The node's report: each template's size (its qgroup's referenced bytes, as the kernel keeps them under
    simple quotas) times the tenants cloned from it. Two clones add two template sizes, and a clone that
    rewrites part of its template still counts whole (the documented upper bound)."""
    from drivers import nspawn_btrfs as btrfs

    pool = nspawn_driver.pool  # type: ignore[attr-defined]
    # A template built moments ago (this session) is charged when btrfs commits its transaction: commit now.
    subprocess.run(["btrfs", "filesystem", "sync", str(pool.root)], check=True)
    template_id = btrfs.subvolume_id(pool.template_path(BASE.ref))
    sysfs = Path(f"/sys/fs/btrfs/{pool.fs_uuid}/qgroups/0_{template_id}")
    template_bytes = int((sysfs / "referenced").read_text())
    assert template_bytes > 1 << 20, "the busybox template holds at least its busybox binary"
    before = nspawn_driver.capacity().disk_shared_bytes  # type: ignore[attr-defined]
    assert before is not None, "nspawn measures it on a pool with quotas"
    names = [f"{TEST_PREFIX}cow-{i}" for i in range(2)]
    try:
        for name in names:
            nspawn_driver.clone(name, BASE)  # type: ignore[attr-defined]
        assert nspawn_driver.capacity().disk_shared_bytes == before + 2 * template_bytes  # type: ignore[attr-defined]
        # A rewrite of a template file is the tenant's own bytes now; the shared count stays an upper bound.
        (pool.tenant_path(names[0]) / "etc" / "hostname").write_text("rewritten\n")
        assert nspawn_driver.capacity().disk_shared_bytes == before + 2 * template_bytes  # type: ignore[attr-defined]
    finally:
        for name in names:
            nspawn_driver.delete(name)  # type: ignore[attr-defined]
    assert nspawn_driver.capacity().disk_shared_bytes == before  # type: ignore[attr-defined]

"""The nspawn driver's btrfs pool on a real loop-backed btrfs filesystem (root only)."""

import errno
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_templates
from drivers.nspawn_pool import Pool
from specs import NotFound, PermanentError, Template
from tests.helpers import wait_for

pytestmark = pytest.mark.root

MiB = 1 << 20


def fill(path: Path, size: int) -> int:
    """Write up to `size` bytes and fsync; return how many were written before EDQUOT (or size)."""
    written = 0
    chunk = os.urandom(MiB)
    try:
        with open(path, "wb") as handle:
            while written < size:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        if error.errno != errno.EDQUOT:
            raise
        return written
    return written


def import_big_template(pool: Pool, rootfs: Path, size: int) -> str:
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "data.bin").write_bytes(os.urandom(size))
    template = Template(name="big", version="1")
    try:
        nspawn_templates.import_rootfs(pool, template, rootfs)
    finally:
        shutil.rmtree(rootfs)  # the pool has its own copy now; leave no large files behind
    return template.ref


def test_open_makes_layout_with_simple_quotas(btrfs_pool: Pool) -> None:
    assert btrfs_pool.quota_mode == "squota"
    assert (btrfs_pool.root / ".fleet-owned").is_file()
    assert (btrfs_pool.root / "templates").is_dir() and (btrfs_pool.root / "tenants").is_dir()
    assert btrfs_pool.list_tenants() == []


def test_clone_is_copy_on_write_and_fast(btrfs_pool: Pool, tmp_path: Path) -> None:
    ref = import_big_template(btrfs_pool, tmp_path / "rootfs", 32 * MiB)
    btrfs.sync(btrfs_pool.root)
    _total, free_before = btrfs_pool.space()
    timings = []
    for index in range(10):
        start = time.perf_counter()
        btrfs_pool.clone(f"t{index}", ref, disk_limit=64 * MiB)
        timings.append(time.perf_counter() - start)
    btrfs.sync(btrfs_pool.root)
    _total, free_after = btrfs_pool.space()

    assert btrfs_pool.list_tenants() == [f"t{index}" for index in range(10)]
    # Ten copies of 32 MiB would take 320 MiB; copy-on-write clones share the template's blocks.
    assert free_before - free_after < 16 * MiB
    assert all(btrfs_pool.disk_usage(f"t{index}") < MiB for index in range(10))
    assert statistics.median(timings) < 0.1, f"clone median {statistics.median(timings) * 1000:.1f} ms"
    # A write in one clone changes neither the template nor the other clones.
    (btrfs_pool.tenant_path("t0") / "data.bin").write_bytes(b"changed")
    assert (btrfs_pool.template_path(ref) / "data.bin").stat().st_size == 32 * MiB
    assert (btrfs_pool.tenant_path("t1") / "data.bin").stat().st_size == 32 * MiB
    assert btrfs_pool.template_of("t0") == ref


def test_half_made_clone_is_cleaned_and_clone_completes_once(btrfs_pool: Pool, base_template: Template) -> None:
    # A crash right after the snapshot leaves tenants/.tmp-acme, possibly with writes in it.
    btrfs.snapshot(btrfs_pool.template_path(base_template.ref), btrfs_pool.tenants_dir, ".tmp-acme")
    (btrfs_pool.tenants_dir / ".tmp-acme" / "stale").write_text("from the crashed attempt")
    assert btrfs_pool.list_tenants() == []
    assert not btrfs_pool.tenant_exists("acme")

    btrfs_pool.clone("acme", base_template.ref, disk_limit=32 * MiB)
    subvolume = btrfs.subvolume_id(btrfs_pool.tenant_path("acme"))
    btrfs_pool.clone("acme", base_template.ref, disk_limit=32 * MiB)  # again: nothing happens

    assert btrfs_pool.list_tenants() == ["acme"]
    assert not (btrfs_pool.tenants_dir / ".tmp-acme").exists()
    assert not (btrfs_pool.tenant_path("acme") / "stale").exists()
    assert btrfs.subvolume_id(btrfs_pool.tenant_path("acme")) == subvolume
    assert btrfs_pool.disk_limit("acme") == 32 * MiB


def test_cleanup_half_made_removes_leftovers_with_their_qgroups(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs.snapshot(btrfs_pool.template_path(base_template.ref), btrfs_pool.tenants_dir, ".tmp-zed")
    qgroup = btrfs.subvolume_id(btrfs_pool.tenants_dir / ".tmp-zed")
    btrfs_pool.clone("keep", base_template.ref)

    removed = btrfs_pool.cleanup_half_made()

    assert removed == ["subvolume tenants/.tmp-zed", f"qgroup 0/{qgroup}"]
    assert not btrfs.qgroup_exists(btrfs_pool.fs_uuid, qgroup)
    assert btrfs_pool.list_tenants() == ["keep"]
    assert btrfs_pool.cleanup_half_made() == []


def test_writing_past_disk_limit_fails_with_edquot_while_neighbour_writes(
    btrfs_pool: Pool, base_template: Template
) -> None:
    btrfs_pool.clone("greedy", base_template.ref, disk_limit=16 * MiB)
    btrfs_pool.clone("neighbour", base_template.ref, disk_limit=64 * MiB)

    with pytest.raises(OSError) as refused, open(btrfs_pool.tenant_path("greedy") / "fill", "wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(MiB))
        handle.flush()
        os.fsync(handle.fileno())
    assert refused.value.errno == errno.EDQUOT == 122

    assert fill(btrfs_pool.tenant_path("neighbour") / "fill", 32 * MiB) == 32 * MiB
    # Copy-on-write overwrites of template files are charged to the tenant too.
    with pytest.raises(OSError) as overwrite:
        (btrfs_pool.tenant_path("greedy") / "usr/bin/busybox").write_bytes(os.urandom(4 * MiB))
    assert overwrite.value.errno == errno.EDQUOT


def test_set_disk_limit_on_tenant_already_over_it(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("acme", base_template.ref, disk_limit=64 * MiB)
    assert fill(btrfs_pool.tenant_path("acme") / "data", 24 * MiB) == 24 * MiB
    wait_for(lambda: btrfs_pool.disk_usage("acme") >= 24 * MiB, what="usage to be accounted")

    btrfs_pool.set_disk_limit("acme", 16 * MiB)  # now over its limit
    btrfs_pool.set_disk_limit("acme", 8 * MiB)  # changing a limit while over it still works
    assert btrfs_pool.disk_limit("acme") == 8 * MiB
    with pytest.raises(OSError) as refused:
        (btrfs_pool.tenant_path("acme") / "more").write_bytes(os.urandom(4 * MiB))
    assert refused.value.errno == errno.EDQUOT

    btrfs_pool.set_disk_limit("acme", 128 * MiB)
    assert btrfs_pool.disk_limit("acme") == 128 * MiB
    assert fill(btrfs_pool.tenant_path("acme") / "after", 8 * MiB) == 8 * MiB


def test_disk_limit_is_read_from_the_kernel(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("acme", base_template.ref)
    assert btrfs_pool.disk_limit("acme") is None
    # Drift made by hand on the host (on the tenant's level-1 group, which carries its limit) is seen.
    group = btrfs.qgroup_id(1, btrfs.subvolume_id(btrfs_pool.tenant_path("acme")))
    btrfs.set_exclusive_limit(btrfs_pool.root, group, 20 * MiB)
    assert btrfs_pool.disk_limit("acme") == 20 * MiB
    with pytest.raises(NotFound):
        btrfs_pool.disk_limit("ghost")


def test_delete_removes_subvolume_and_qgroup(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("acme", base_template.ref, disk_limit=32 * MiB)
    btrfs_pool.clone("other", base_template.ref)
    fill(btrfs_pool.tenant_path("acme") / "data", 4 * MiB)
    qgroup = btrfs.subvolume_id(btrfs_pool.tenant_path("acme"))

    removed = btrfs_pool.delete_tenant("acme")

    assert removed == ["subvolume tenants/acme", f"qgroup 0/{qgroup}", f"qgroup 1/{qgroup}"]
    assert not btrfs_pool.tenant_path("acme").exists()
    assert not btrfs.qgroup_exists(btrfs_pool.fs_uuid, qgroup)
    assert not btrfs.qgroup_exists(btrfs_pool.fs_uuid, btrfs.qgroup_id(1, qgroup))
    assert btrfs_pool.list_tenants() == ["other"]
    assert btrfs_pool.delete_tenant("acme") == []
    assert list(btrfs_pool.deleting_dir.iterdir()) == []


def test_delete_never_touches_unmarked_directories(btrfs_pool: Pool, base_template: Template) -> None:
    manual = btrfs_pool.tenants_dir / "manual"
    manual.mkdir()
    (manual / "precious").write_text("an operator's files")
    btrfs.create_subvolume(btrfs_pool.tenants_dir, "foreign")  # a subvolume without Fleet's marker

    for name in ("manual", "foreign"):
        with pytest.raises(PermanentError, match="marker"):
            btrfs_pool.delete_tenant(name)
        with pytest.raises(PermanentError, match="not a Fleet tenant"):
            btrfs_pool.clone(name, base_template.ref)
    assert (manual / "precious").read_text() == "an operator's files"
    assert btrfs.is_subvolume(btrfs_pool.tenants_dir / "foreign")
    assert btrfs_pool.list_tenants() == []
    assert btrfs_pool.cleanup_half_made() == []


def test_open_reattaches_image_after_reboot(
    btrfs_pool_factory: Callable[[Path], Pool], tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    pool = btrfs_pool_factory(data_dir)
    nspawn_templates.ensure_builtin(pool, Template(name="base"))
    pool.clone("acme", "base@1", disk_limit=48 * MiB)
    (pool.tenant_path("acme") / "kept").write_text("survives a reboot")

    pool.detach()  # what a reboot does to the mount and the loop device
    assert not (data_dir / "pool" / "tenants").exists()
    assert (data_dir / "pool.img").is_file()

    again = btrfs_pool_factory(data_dir)
    assert again.root == pool.root
    assert again.quota_mode == "squota"
    assert again.list_tenants() == ["acme"]
    assert (again.tenant_path("acme") / "kept").read_text() == "survives a reboot"
    assert again.disk_limit("acme") == 48 * MiB
    assert again.template_of("acme") == "base@1"
    # Opening an already mounted pool changes nothing.
    assert btrfs_pool_factory(data_dir).list_tenants() == ["acme"]


def test_open_refuses_a_directory_not_on_btrfs(btrfs_pool_factory: Callable[[Path], Pool], tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    try:
        btrfs.filesystem_uuid(plain)
    except PermanentError:
        pass
    else:
        pytest.skip(f"{tmp_path} is itself on btrfs")
    with pytest.raises(PermanentError, match="not on a btrfs"):
        Pool.open(tmp_path, pool_path=plain)


def test_pool_path_on_existing_btrfs_is_used_as_is(btrfs_pool: Pool, base_template: Template) -> None:
    inner = Pool.open(btrfs_pool.root / "nested-data", pool_path=btrfs_pool.root / "nested")
    assert inner.root == btrfs_pool.root / "nested"
    assert inner.quota_mode == "squota"
    inner.detach()  # not an image this Pool made: nothing is unmounted
    assert btrfs_pool.root.is_dir() and btrfs_pool.has_template(base_template.ref)


def test_bad_names_and_missing_templates_are_permanent_errors(btrfs_pool: Pool, base_template: Template) -> None:
    for bad in ("../etc", "a/b", ".tmp-x", "UPPER", ""):
        with pytest.raises(PermanentError):
            btrfs_pool.clone(bad, base_template.ref)
        with pytest.raises(PermanentError):
            btrfs_pool.delete_tenant(bad)
    with pytest.raises(PermanentError, match="not in the pool"):
        btrfs_pool.clone("acme", "missing@1")
    with pytest.raises(PermanentError):
        btrfs_pool.clone("acme", "../../etc@1")
    assert not btrfs_pool.tenant_exists("acme")


def test_delete_removes_subvolumes_a_tenant_made_inside_its_own(btrfs_pool: Pool, base_template: Template) -> None:
    btrfs_pool.clone("nester", base_template.ref)
    btrfs.create_subvolume(btrfs_pool.tenant_path("nester") / "srv", "inner")
    btrfs.create_subvolume(btrfs_pool.tenant_path("nester") / "srv/inner", "deeper")
    ids = [btrfs.subvolume_id(btrfs_pool.tenant_path("nester") / p) for p in ("srv/inner/deeper", "srv/inner", ".")]

    removed = btrfs_pool.delete_tenant("nester")

    assert removed == [
        f"nested subvolume 'deeper' (id {ids[0]})",
        f"nested subvolume 'inner' (id {ids[1]})",
        "subvolume tenants/nester",
        *(f"qgroup 0/{i}" for i in ids),
        f"qgroup 1/{ids[-1]}",
    ]
    assert not btrfs_pool.tenant_path("nester").exists()
    assert not any(btrfs.qgroup_exists(btrfs_pool.fs_uuid, i) for i in ids)


def _mount_options(path: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(path):
            return set(line.split()[5].split(","))
    raise AssertionError(f"{path} is not a mount point")


def test_the_pool_is_mounted_nosuid_nodev_and_an_older_mount_is_fixed_on_open(
    btrfs_pool_factory: Callable[[Path], Pool], tmp_path: Path
) -> None:
    data_dir = tmp_path / "fleet-data"
    pool = btrfs_pool_factory(data_dir)
    assert {"nosuid", "nodev"} <= _mount_options(pool.root)
    # As an older Fleet mounted it: set-uid programs and device nodes a tenant wrote would work on the host.
    subprocess.run(["mount", "-o", "remount,suid,dev", str(pool.root)], check=True)
    assert not {"nosuid", "nodev"} & _mount_options(pool.root)
    reopened = btrfs_pool_factory(data_dir)
    assert {"nosuid", "nodev"} <= _mount_options(reopened.root)

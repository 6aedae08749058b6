"""Fixtures for integration tests against the real host (root, btrfs, loop devices).

Each fixture cleans up everything it made, also when the test fails: the teardown works from what the
host shows (mounts, loop devices backing the image), not from the objects the test may have replaced.
"""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers import nspawn_templates
from drivers.nspawn_pool import Pool
from specs import Template

BTRFS_TOOLS = ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount")
TEST_IMAGE_SIZE = 1 << 30  # sparse; large enough for mkfs.btrfs and a few quota tests


def btrfs_pool_unavailable() -> str | None:
    """Why a loop-backed btrfs pool cannot be made here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root: loop devices, mounts and btrfs ioctls"
    missing = [tool for tool in BTRFS_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install btrfs-progs mount"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing): modprobe loop"
    if "btrfs" not in Path("/proc/filesystems").read_text():
        return "kernel has no btrfs: modprobe btrfs"
    return None


def teardown_loop_pool(data_dir: Path) -> None:
    """Unmount data_dir/pool, detach every loop device backing data_dir/pool.img, delete the image."""
    mountpoint, image = (data_dir / "pool").resolve(), (data_dir / "pool.img").resolve()
    with open("/proc/self/mountinfo") as handle:
        mounted = any(line.split()[4] == str(mountpoint) for line in handle)
    if mounted:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)
        with open("/proc/self/mountinfo") as handle:
            if any(line.split()[4] == str(mountpoint) for line in handle):
                subprocess.run(["umount", "--lazy", str(mountpoint)], check=False, capture_output=True)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == str(image):
                subprocess.run(["losetup", "-d", f"/dev/{backing.parent.parent.name}"], check=False)
        except OSError:
            continue
    for leftover in (image, image.with_name(".tmp-pool.img")):
        leftover.unlink(missing_ok=True)


@pytest.fixture
def btrfs_pool_factory(tmp_path: Path) -> Iterator[Callable[[Path], Pool]]:
    """Opens loop-backed pools under data directories in tmp_path; tears every one down afterwards."""
    reason = btrfs_pool_unavailable()
    if reason:
        pytest.skip(reason)
    data_dirs: list[Path] = []

    def open_pool(data_dir: Path) -> Pool:
        data_dirs.append(data_dir)
        return Pool.open(data_dir, image_size=TEST_IMAGE_SIZE)

    try:
        yield open_pool
    finally:
        for data_dir in data_dirs:
            teardown_loop_pool(data_dir)
            if not (data_dir / "pool").is_mount():
                shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def btrfs_pool(btrfs_pool_factory: Callable[[Path], Pool], tmp_path: Path) -> Pool:
    """A fresh loop-backed btrfs pool with simple quotas, removed after the test."""
    return btrfs_pool_factory(tmp_path / "fleet-data")


@pytest.fixture
def base_template(btrfs_pool: Pool) -> Template:
    """The built-in busybox template base@1, built into btrfs_pool."""
    template = Template(name="base", version="1")
    nspawn_templates.ensure_builtin(btrfs_pool, template)
    return template

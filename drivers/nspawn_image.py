"""The loop-backed btrfs image an nspawn pool lives on (when no btrfs pool_path is given), and its mount.

The image is sparse (blocks are used as the pool fills), formatted once with one copy of metadata, attached
to a loop device unless one already backs it (found from sysfs, so Fleet's restarts re-attach rather than
stack devices), and mounted noatime,nosuid,nodev. A pool given as a path is remounted nosuid,nodev (bound
onto itself first when it is not its own mount, so other users of that filesystem keep their options).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from drivers.nspawn_files import TEMP_PREFIX
from specs import TransientError

MOUNT_FLAGS = ("nosuid", "nodev")


def wait_for(check: Callable[[], object], seconds: float, what: str) -> str:
    """Poll `check` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return str(value)
        if time.monotonic() > deadline:
            raise TransientError(f"timed out after {seconds:.0f} s waiting for {what}", reason="Timeout")
        time.sleep(0.01)


def mounts() -> Iterator[tuple[str, str, str]]:
    """(mount point, filesystem type, source) from this process's mount table."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            mount_point = fields[4].encode().decode("unicode_escape")
            yield mount_point, fields[separator + 1], fields[separator + 2]


def mount_options(path: Path) -> tuple[str, set[str]] | None:
    """(mount point, per-mount options) of the mount `path` is on: the longest mount point above it."""
    best: tuple[str, set[str]] | None = None
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) >= len(best[0])
            ):
                best = (point, set(fields[5].split(",")))
    return best


def secure_mount(root: Path) -> None:
    """Make the mount under the pool nosuid,nodev: remount it if it is the pool's own, else bind the pool
    onto itself first so other users of that filesystem keep their options."""
    found = mount_options(root)
    if found is None or set(MOUNT_FLAGS) <= found[1]:
        return
    if found[0] != str(root):
        btrfs.run_cli(["mount", "--bind", str(root), str(root)], f"bind {root} for nosuid,nodev")
    options = ",".join(("remount", "bind", *MOUNT_FLAGS))
    btrfs.run_cli(["mount", "-o", options, str(root)], f"remount {root} nosuid,nodev")
    logger.bind(pool=str(root)).info("Remounted pool nosuid,nodev")


def is_mountpoint(path: Path) -> bool:
    return any(point == str(path) for point, _type, _source in mounts())


def loops_backing(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (read from sysfs: no fork, and survives our restarts)."""
    devices = []
    for backing in sorted(Path("/sys/block").glob("loop*/loop/backing_file")):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == str(image):
                devices.append(f"/dev/{backing.parent.parent.name}")
    return devices


def attach_image(image: Path, mountpoint: Path, image_size: int) -> None:
    """Create the image once, attach it to a loop device unless one already backs it, mount it."""
    if any(point == str(mountpoint) and kind == "btrfs" for point, kind, _source in mounts()):
        secure_mount(mountpoint)  # mounted by an older Fleet, perhaps without nosuid,nodev
        return
    if not image.exists():
        building = image.with_name(f"{TEMP_PREFIX}{image.name}")
        with open(building, "wb") as handle:
            handle.truncate(image_size)  # sparse: blocks are used as the pool fills
        argv = ["mkfs.btrfs", "-f", "-q", "-m", "single", "-L", "fleet-pool", str(building)]
        btrfs.run_cli(argv, f"format {building}")
        os.rename(building, image)
    devices = loops_backing(image)
    if devices:
        device = devices[0]
        logger.bind(image=str(image), device=device).info("Re-attached pool image")
    else:
        device = btrfs.run_cli(["losetup", "--find", "--show", str(image)], f"attach {image}").strip()
    mountpoint.mkdir(exist_ok=True)
    # -m single: one copy of metadata. DUP (the default) would store a tenant's small files, which live in
    # metadata, twice, so the pool would fill at twice the rate the quotas count; the image's own disk is
    # where redundancy belongs.
    # noatime: reading a template file from a clone would otherwise copy-on-write metadata per read.
    options = ",".join(("noatime", *MOUNT_FLAGS))
    btrfs.run_cli(["mount", "-t", "btrfs", "-o", options, device, str(mountpoint)], f"mount {image}")

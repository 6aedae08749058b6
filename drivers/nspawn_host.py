"""Whether this host can run the nspawn driver, and if not, what to install or enable: each problem says how."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from drivers import nspawn_cgroups
from specs import PermanentError

# tool -> the Debian package that provides it
_TOOLS = {
    "btrfs": "btrfs-progs",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "busybox": "busybox-static",
    "nsenter": "util-linux",
}


def host_problems(*, pool_path: Path | None = None) -> list[str]:
    """What this host lacks for the nspawn driver, each with how to get it; empty when it can run."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not root: the nspawn driver creates cgroups, namespaces and mounts; run it as root")
    missing = sorted({package for tool, package in _TOOLS.items() if shutil.which(tool) is None})
    if missing:
        problems.append(f"missing tools: install them with `apt-get install -y {' '.join(missing)}`")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "btrfs" not in filesystems and not Path("/sys/module/btrfs").exists():
        problems.append("the kernel has no btrfs: `modprobe btrfs` (package linux-modules-extra on some distros)")
    if pool_path is None and not Path("/dev/loop-control").exists():
        problems.append("no loop device support (/dev/loop-control missing): `modprobe loop`, or pass pool_path")
    if not Path("/proc/self/ns/net").exists():
        problems.append("the kernel has no network namespaces (CONFIG_NET_NS)")
    try:
        nspawn_cgroups.detect()
    except PermanentError as error:
        problems.append(f"cgroups: {error}")
    return problems

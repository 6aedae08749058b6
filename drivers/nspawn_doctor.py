"""`fleet doctor` for the nspawn driver: what this host has and lacks, each finding with what to do.

Unlike `nspawn_host.host_problems` (which answers "can the driver start?"), this reports every check, the
good ones too, with versions and numbers, and warns about what works but costs (KSM off, a pool filling
up). It only looks: it never creates, mounts, enables or installs anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from drivers import nspawn_cgroups
from specs import CheckStatus, HostCheck, PermanentError, format_bytes

# tool -> (the Debian package that provides it, needed: False for tools only some commands use)
TOOLS: dict[str, tuple[str, bool]] = {
    "systemd-nspawn": ("systemd-container", True),
    "btrfs": ("btrfs-progs", True),
    "mkfs.btrfs": ("btrfs-progs", True),
    "nft": ("nftables", True),
    "busybox": ("busybox-static", True),
    "nsenter": ("util-linux", True),
    "losetup": ("mount", True),
    "mount": ("mount", True),
    "ip": ("iproute2", False),
    "debootstrap": ("debootstrap", False),
}
KSM = Path("/sys/kernel/mm/ksm")
POOL_FULL_WARNING = 0.85  # used fraction of the pool from which doctor warns


VERSION_ARGUMENTS = {"busybox": [], "debootstrap": ["--version"], "ip": ["-V"]}


def _version(tool: str) -> str:
    argv = [tool, *VERSION_ARGUMENTS.get(tool, ["--version"])]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "installed"
    lines = [line for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return lines[0].strip()[:72] if lines else "installed"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def tool_checks() -> list[HostCheck]:
    checks = []
    for tool, (package, needed) in TOOLS.items():
        if shutil.which(tool) is not None:
            checks.append(HostCheck(name=f"tool {tool}", status=CheckStatus.OK, detail=_version(tool)))
            continue
        why = "" if needed else " (only `fleet template build --debootstrap` and the tests need it)"
        checks.append(HostCheck(
            name=f"tool {tool}", status=CheckStatus.FAILED if needed else CheckStatus.WARNING,
            detail=f"{tool} is not on PATH{why}", fix=f"apt-get install -y {package}  (Debian package {package})",
        ))
    return checks


def kernel_checks() -> list[HostCheck]:
    release = os.uname().release
    checks = [HostCheck(name="kernel", status=CheckStatus.OK, detail=f"Linux {release}")]
    if os.geteuid() != 0:
        checks.append(HostCheck(name="root", status=CheckStatus.FAILED, detail="not running as root",
                                fix="run Fleet as root: it makes cgroups, namespaces and mounts"))
    else:
        checks.append(HostCheck(name="root", status=CheckStatus.OK, detail="running as root"))
    filesystems = _read(Path("/proc/filesystems")) or ""
    has_btrfs = "btrfs" in filesystems or Path("/sys/module/btrfs").exists()
    checks.append(HostCheck(name="kernel btrfs", status=CheckStatus.OK if has_btrfs else CheckStatus.FAILED,
                            detail="btrfs filesystem support" if has_btrfs else "no btrfs in /proc/filesystems",
                            fix="" if has_btrfs else "modprobe btrfs (package linux-modules-extra on some distros)"))
    loop = Path("/dev/loop-control").exists()
    checks.append(HostCheck(name="kernel loop devices", status=CheckStatus.OK if loop else CheckStatus.WARNING,
                            detail="/dev/loop-control" if loop else "no /dev/loop-control",
                            fix="" if loop else "modprobe loop, or give Fleet a btrfs filesystem with --pool PATH"))
    netns = Path("/proc/self/ns/net").exists()
    checks.append(HostCheck(name="kernel network namespaces", status=CheckStatus.OK if netns else CheckStatus.FAILED,
                            detail="CONFIG_NET_NS" if netns else "no /proc/self/ns/net",
                            fix="" if netns else "a kernel built with CONFIG_NET_NS"))
    userns = _read(Path("/proc/sys/user/max_user_namespaces"))
    userns_ok = userns is not None and userns.isdigit() and int(userns) > 0
    checks.append(HostCheck(
        name="kernel user namespaces", status=CheckStatus.OK if userns_ok else CheckStatus.FAILED,
        detail=f"max_user_namespaces={userns}", fix="" if userns_ok else "sysctl -w user.max_user_namespaces=65536",
    ))
    nf_tables = Path("/sys/module/nf_tables").exists() or "nf_tables" in (_read(Path("/proc/modules")) or "")
    checks.append(HostCheck(
        name="kernel nftables", status=CheckStatus.OK,
        detail="nf_tables loaded" if nf_tables else "nf_tables not loaded yet (nft loads it on first use)",
    ))
    return checks


def cgroup_checks() -> list[HostCheck]:
    try:
        cgroups = nspawn_cgroups.detect()
    except PermanentError as error:
        return [HostCheck(name="cgroups", status=CheckStatus.FAILED, detail=str(error),
                          fix="mount cgroup v2 with cpu, memory and pids, or the v1 cpu, cpuacct, memory, pids, "
                          "name=systemd and unified hierarchies")]
    detail = "v2 (unified: cpu, memory, pids)" if cgroups.version == 2 else (
        "v1 (cpu, cpuacct, memory, pids, blkio, name=systemd, unified)"
    )
    return [HostCheck(name="cgroups", status=CheckStatus.OK, detail=detail)]


def ksm_checks() -> list[HostCheck]:
    run = _read(KSM / "run")
    if run is None:
        return [HostCheck(name="KSM", status=CheckStatus.WARNING, detail="the kernel has no KSM (/sys/kernel/mm/ksm)",
                          fix="a kernel with CONFIG_KSM, for tenants to share identical memory pages")]
    if run != "1":
        return [HostCheck(name="KSM", status=CheckStatus.WARNING, detail=f"off (run={run}): tenants share no memory",
                          fix="echo 1 > /sys/kernel/mm/ksm/run  (tenants started afterwards opt in)")]
    sharing = int(_read(KSM / "pages_sharing") or 0)
    return [HostCheck(name="KSM", status=CheckStatus.OK,
                      detail=f"on; saves about {format_bytes(sharing * 4096)} ({sharing} pages sharing)")]


def _mount_of(path: Path) -> tuple[str, str] | None:
    """(filesystem type, source) of the mount at exactly `path`, or None when nothing is mounted there."""
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        if len(fields) > 9 and fields[4] == str(path):
            after = fields[fields.index("-") + 1:]
            return after[0], after[1]
    return None


def _quota_mode(source: str) -> str | None:
    device = Path(source).name
    for filesystem in Path("/sys/fs/btrfs").glob("*-*"):
        if (filesystem / "devices" / device).exists():
            return _read(filesystem / "qgroups" / "mode")
    return None


def pool_checks(data_dir: Path, pool_path: Path | None) -> list[HostCheck]:
    where = (pool_path or data_dir / "pool").resolve()
    mounted = _mount_of(where)
    if mounted is None:
        image = data_dir / "pool.img"
        if pool_path is None and image.exists():
            return [HostCheck(name="pool", status=CheckStatus.WARNING, detail=f"{image} is not attached at {where}",
                              fix="fleet up (or fleet node init) re-attaches it")]
        return [HostCheck(name="pool", status=CheckStatus.WARNING, detail=f"no pool at {where} yet",
                          fix="fleet node init creates it (a loop-backed image), or pass --pool PATH")]
    kind, source = mounted
    if kind != "btrfs":
        return [HostCheck(name="pool", status=CheckStatus.FAILED, detail=f"{where} is {kind}, not btrfs",
                          fix="give Fleet a btrfs filesystem (--pool), or let it make a loop-backed one")]
    stat = os.statvfs(where)
    total, available = stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
    used = 1 - available / total if total else 0.0
    detail = f"btrfs at {where} ({source}), {format_bytes(total - available)} of {format_bytes(total)} used"
    checks = [HostCheck(
        name="pool", status=CheckStatus.OK if used < POOL_FULL_WARNING else CheckStatus.WARNING,
        detail=f"{detail} ({used:.0%})",
        fix="" if used < POOL_FULL_WARNING else "the pool is filling up: see docs/operations.md, \"The pool "
        "filling up\"",
    )]
    mode = _quota_mode(source)
    quota_ok = mode in ("squota", "qgroup")
    checks.append(HostCheck(
        name="pool quotas", status=CheckStatus.OK if quota_ok else CheckStatus.WARNING,
        detail=f"{mode or 'off'}" + (" (simple quotas: fast clones)" if mode == "squota" else ""),
        fix="" if quota_ok else "fleet up turns simple quotas on when it opens the pool",
    ))
    return checks


def host_checks(*, data_dir: Path = Path("/var/lib/fleet"), pool_path: Path | None = None) -> list[HostCheck]:
    """Every check, in the order `fleet doctor` prints them."""
    return [*kernel_checks(), *tool_checks(), *cgroup_checks(), *ksm_checks(), *pool_checks(data_dir, pool_path)]

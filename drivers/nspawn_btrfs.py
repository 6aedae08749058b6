"""The thin layer between Fleet and the btrfs kernel interface: ioctls, sysfs, and the CLI where they fail.

It exists because forking `btrfs` costs 2-3 ms a call, more than the snapshot itself on this kind of host
(HOST.md): a clone is one ioctl here. Every call takes file descriptors or names that the pool has already
checked; this module never builds a path from a spec value, never runs a shell (the CLI fallbacks get
argument lists), and never decides what to delete: it does what the pool asks and maps OS errors to
`specs.errors` at this edge.

Struct layouts follow `linux/btrfs.h` (UAPI). ioctl arguments are passed as `bytearray`: the kernel copies
in and out of them, and `fcntl.ioctl` refuses `bytes` larger than 1,024.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from specs import NotFound, PermanentError, TransientError

_MAGIC = 0x94
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | number


_VOL_ARGS_SIZE = 4096  # struct btrfs_ioctl_vol_args and _v2 are both 4 KiB
_VOL_ARGS_V2_NAME_OFFSET = 56  # fd, transid, flags, then a 32-byte union before the name
_NAME_MAX = 255

IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, _VOL_ARGS_SIZE)
IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _VOL_ARGS_SIZE)
IOC_TREE_SEARCH = _ioc(_IOC_READ | _IOC_WRITE, 17, 4096)
IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, 4096)
IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, _VOL_ARGS_SIZE)
IOC_SUBVOL_CREATE_V2 = _ioc(_IOC_WRITE, 24, _VOL_ARGS_SIZE)
IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, 25, 8)
IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, 26, 8)
IOC_FS_INFO = _ioc(_IOC_READ, 31, 1024)
IOC_QUOTA_CTL = _ioc(_IOC_READ | _IOC_WRITE, 40, 16)
IOC_QGROUP_ASSIGN = _ioc(_IOC_WRITE, 41, 24)
IOC_QGROUP_CREATE = _ioc(_IOC_WRITE, 42, 16)
IOC_QGROUP_LIMIT = _ioc(_IOC_READ, 43, 48)
IOC_SNAP_DESTROY_V2 = _ioc(_IOC_WRITE, 63, _VOL_ARGS_SIZE)
IOC_SYNC = _ioc(0, 8, 0)

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long) on 64-bit
FS_IOC_SETFLAGS = 0x40086602  # _IOW('f', 2, long)
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20
SUBVOL_RDONLY = 1 << 1
QUOTA_CTL_ENABLE = 1
QUOTA_CTL_ENABLE_SIMPLE_QUOTA = 4
QGROUP_LIMIT_MAX_EXCL = 1 << 1
_CLEAR_LIMIT = (1 << 64) - 1  # the kernel's CLEAR_VALUE: drop the limit
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory
QGROUP_LEVEL_SHIFT = 48  # a qgroup id is (level << 48) | id; "1/257" is level 1, id 257


def qgroup_id(level: int, number: int) -> int:
    return (level << QGROUP_LEVEL_SHIFT) | number


def qgroup_name(qgroup: int) -> str:
    return f"{qgroup >> QGROUP_LEVEL_SHIFT}/{qgroup & ((1 << QGROUP_LEVEL_SHIFT) - 1)}"


@dataclass(frozen=True)
class QgroupInfo:
    """A qgroup as sysfs shows it: limit (None when unlimited), exclusive bytes used, and referenced bytes
    (under simple quotas the same as exclusive: what the subvolume's own writes allocated)."""

    qgroup_id: int
    max_exclusive: int | None
    exclusive: int
    referenced: int = 0


def map_os_error(error: OSError, doing: str) -> Exception:
    """The edge where host errors become Fleet's: retry what may pass, explain what will not."""
    code = error.errno
    message = f"{doing}: {os.strerror(code) if code else error}"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EINTR, errno.ETXTBSY):
        return TransientError(message, reason="HostBusy")
    if code == errno.ENOSPC:
        return PermanentError(f"{message}; the pool is full: grow it or delete tenants", reason="PoolFull")
    if code == errno.EDQUOT:
        return PermanentError(f"{message}; the tenant is over its disk limit: raise it", reason="DiskQuota")
    if code in (errno.EPERM, errno.EACCES):
        return PermanentError(f"{message}; run the agent as root with CAP_SYS_ADMIN", reason="NotPermitted")
    if code == errno.ENOENT:
        return NotFound(message)
    if code == errno.ENOTEMPTY:
        return PermanentError(f"{message}; it holds nested subvolumes", reason="NestedSubvolumes")
    if code in (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS):
        return PermanentError(f"{message}; the kernel or filesystem lacks this btrfs feature", reason="Unsupported")
    return PermanentError(message, reason="HostError")


@contextlib.contextmanager
def open_dir(path: Path) -> Iterator[int]:
    """A read-only directory fd that does not follow a final symlink (a tenant could plant one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise map_os_error(error, f"open {path}") from error
    try:
        yield fd
    finally:
        os.close(fd)


def _name_bytes(name: str | bytes) -> bytes:
    encoded = name if isinstance(name, bytes) else name.encode()
    if not encoded or len(encoded) > _NAME_MAX or b"/" in encoded or encoded in (b".", b".."):
        raise PermanentError(f"invalid subvolume name {name!r}", reason="InvalidName")
    return encoded


def _vol_args_v2(*, source_fd: int = 0, flags: int = 0, name: str | bytes) -> bytearray:
    args = bytearray(_VOL_ARGS_SIZE)
    struct.pack_into("=qQQ", args, 0, source_fd, 0, flags)
    encoded = _name_bytes(name)
    args[_VOL_ARGS_V2_NAME_OFFSET : _VOL_ARGS_V2_NAME_OFFSET + len(encoded)] = encoded
    return args


def _vol_args(name: str | bytes) -> bytearray:
    args = bytearray(_VOL_ARGS_SIZE)
    encoded = _name_bytes(name)
    args[8 : 8 + len(encoded)] = encoded
    return args


def _ioctl(fd: int, request: int, args: bytearray, doing: str) -> None:
    try:
        fcntl.ioctl(fd, request, args, True)
    except OSError as error:
        raise map_os_error(error, doing) from error


def create_subvolume(parent: Path, name: str) -> None:
    with open_dir(parent) as fd:
        _ioctl(fd, IOC_SUBVOL_CREATE, _vol_args(name), f"create subvolume {parent / name}")


def snapshot(source: Path, parent: Path, name: str, *, read_only: bool = False) -> None:
    """Snapshot the subvolume at `source` to `parent/name` (copy-on-write, ~5 ms)."""
    with open_dir(source) as source_fd, open_dir(parent) as parent_fd:
        args = _vol_args_v2(source_fd=source_fd, flags=SUBVOL_RDONLY if read_only else 0, name=name)
        _ioctl(parent_fd, IOC_SNAP_CREATE_V2, args, f"snapshot {source} to {parent / name}")


def destroy_subvolume(parent: Path, name: str) -> None:
    """Delete the subvolume `parent/name` (its blocks are reclaimed later by the cleaner thread)."""
    with open_dir(parent) as fd:
        destroy_subvolume_at(fd, name, f"delete subvolume {parent / name}")


def destroy_subvolume_at(directory_fd: int, name: str | bytes, doing: str) -> None:
    """Delete the subvolume `name` in the directory open as `directory_fd`."""
    try:
        fcntl.ioctl(directory_fd, IOC_SNAP_DESTROY_V2, _vol_args_v2(name=name), True)
    except OSError as error:
        if error.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
            raise map_os_error(error, doing) from error
        _ioctl(directory_fd, IOC_SNAP_DESTROY, _vol_args(name), doing)


def is_subvolume(path: Path) -> bool:
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    return status.st_ino == FIRST_FREE_OBJECTID and (status.st_mode & 0o170000) == 0o040000


def subvolume_id(path: Path) -> int:
    """The subvolume (tree) id of the subvolume containing `path`: its level-0 qgroup is 0/<id>."""
    with open_dir(path) as fd:
        args = bytearray(4096)
        struct.pack_into("=QQ", args, 0, 0, FIRST_FREE_OBJECTID)
        _ioctl(fd, IOC_INO_LOOKUP, args, f"look up subvolume id of {path}")
        tree_id: int = struct.unpack_from("=Q", args, 0)[0]
        return tree_id


def clear_immutable(path: Path) -> None:
    """Drop the immutable and append-only flags of a directory (a subvolume's root refuses deletion with
    EPERM while they are set); a no-op when neither is set."""
    with open_dir(path) as fd:
        args = bytearray(8)
        _ioctl(fd, FS_IOC_GETFLAGS, args, f"read inode flags of {path}")
        flags = struct.unpack("=q", args)[0]
        if flags & (FS_IMMUTABLE_FL | FS_APPEND_FL):
            cleared = bytearray(struct.pack("=q", flags & ~(FS_IMMUTABLE_FL | FS_APPEND_FL)))
            _ioctl(fd, FS_IOC_SETFLAGS, cleared, f"clear the immutable flag of {path}")


def is_read_only(path: Path) -> bool:
    with open_dir(path) as fd:
        args = bytearray(8)
        _ioctl(fd, IOC_SUBVOL_GETFLAGS, args, f"read flags of {path}")
        return bool(struct.unpack("=Q", args)[0] & SUBVOL_RDONLY)


def set_read_only(path: Path, read_only: bool = True) -> None:
    with open_dir(path) as fd:
        args = bytearray(8)
        _ioctl(fd, IOC_SUBVOL_GETFLAGS, args, f"read flags of {path}")
        flags = struct.unpack("=Q", args)[0]
        flags = flags | SUBVOL_RDONLY if read_only else flags & ~SUBVOL_RDONLY
        _ioctl(fd, IOC_SUBVOL_SETFLAGS, bytearray(struct.pack("=Q", flags)), f"set flags of {path}")


def filesystem_uuid(path: Path) -> str:
    """The fsid, which names the filesystem's directory under /sys/fs/btrfs. Raises if `path` is not btrfs."""
    with open_dir(path) as fd:
        args = bytearray(1024)
        try:
            fcntl.ioctl(fd, IOC_FS_INFO, args, True)
        except OSError as error:
            if error.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise PermanentError(f"{path} is not on a btrfs filesystem", reason="NotBtrfs") from error
            raise map_os_error(error, f"read filesystem info of {path}") from error
    return str(uuid.UUID(bytes=bytes(args[16:32])))


def sync(path: Path) -> None:
    """Commit the current transaction and wake the cleaner, so deleted subvolumes start to go."""
    with open_dir(path) as fd:
        try:
            fcntl.ioctl(fd, IOC_SYNC, 0)
        except OSError as error:
            raise map_os_error(error, f"sync filesystem at {path}") from error


# -- quotas -------------------------------------------------------------------------------------------


def quota_mode(fs_uuid: str) -> str | None:
    """'squota', 'qgroup' (classic), or None when quotas are off."""
    try:
        return Path(f"/sys/fs/btrfs/{fs_uuid}/qgroups/mode").read_text().strip() or None
    except FileNotFoundError:
        return None


def enable_simple_quota(path: Path) -> None:
    with open_dir(path) as fd:
        args = bytearray(struct.pack("=QQ", QUOTA_CTL_ENABLE_SIMPLE_QUOTA, 0))
        _ioctl(fd, IOC_QUOTA_CTL, args, f"enable simple quotas on {path}")


def enable_classic_quota(path: Path) -> None:
    """The fallback for kernels without squota: slower snapshots (HOST.md), but the same limits."""
    run_cli(["btrfs", "quota", "enable", str(path)], f"enable quotas on {path}")


def set_exclusive_limit(pool_root: Path, qgroup: int, limit_bytes: int | None) -> None:
    """Limit a qgroup's exclusive bytes (None clears the limit); `qgroup` is a subvolume id (level 0) or a
    full id from `qgroup_id` (a tenant's level-1 group, which carries its subvolumes nested inside too).

    Called on the pool root's fd, never the tenant's: the ioctl opens a transaction on the fd's subvolume,
    which fails with EDQUOT when that subvolume is already over its limit (HOST.md).
    """
    value = _CLEAR_LIMIT if limit_bytes is None else limit_bytes
    args = bytearray(struct.pack("=QQQQQQ", qgroup, QGROUP_LIMIT_MAX_EXCL, 0, value, 0, 0))
    with open_dir(pool_root) as fd:
        _ioctl(fd, IOC_QGROUP_LIMIT, args, f"set the disk limit of qgroup {qgroup_name(qgroup)}")


def create_qgroup(pool_root: Path, qgroup: int) -> None:
    """Create a qgroup (idempotent: an existing one is left as it is)."""
    with open_dir(pool_root) as fd:
        try:
            fcntl.ioctl(fd, IOC_QGROUP_CREATE, bytearray(struct.pack("=QQ", 1, qgroup)), True)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise map_os_error(error, f"create qgroup {qgroup_name(qgroup)}") from error


def assign_qgroup(pool_root: Path, member: int, group: int) -> None:
    """Make qgroup `member` a child of `group` (idempotent). Under simple quotas the kernel adds the
    member's usage to the group at once, and every subvolume later created inside the member's subvolume
    joins the same groups by itself (fs/btrfs/qgroup.c, qgroup_auto_inherit)."""
    with open_dir(pool_root) as fd:
        try:
            fcntl.ioctl(fd, IOC_QGROUP_ASSIGN, bytearray(struct.pack("=QQQ", 1, member, group)), True)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise map_os_error(error, f"assign {qgroup_name(member)} to {qgroup_name(group)}") from error


def destroy_qgroup(pool_root: Path, qgroup: int) -> None:
    with open_dir(pool_root) as fd:
        args = bytearray(struct.pack("=QQ", 0, qgroup))
        _ioctl(fd, IOC_QGROUP_CREATE, args, f"delete qgroup {qgroup_name(qgroup)}")


def qgroup_dir(fs_uuid: str, qgroup: int) -> Path:
    level, number = qgroup >> QGROUP_LEVEL_SHIFT, qgroup & ((1 << QGROUP_LEVEL_SHIFT) - 1)
    return Path(f"/sys/fs/btrfs/{fs_uuid}/qgroups/{level}_{number}")


def qgroup_exists(fs_uuid: str, qgroup: int) -> bool:
    return qgroup_dir(fs_uuid, qgroup).is_dir()


def read_qgroup(fs_uuid: str, qgroup: int) -> QgroupInfo:
    """Limit and usage straight from the kernel (sysfs): no fork, no cache, so drift is seen."""
    directory = qgroup_dir(fs_uuid, qgroup)
    try:
        flags = int((directory / "limit_flags").read_text())
        max_exclusive = int((directory / "max_exclusive").read_text())
        exclusive = int((directory / "exclusive").read_text())
        referenced = int((directory / "referenced").read_text())
    except FileNotFoundError as error:
        raise NotFound(f"qgroup {qgroup_name(qgroup)} does not exist") from error
    limited = bool(flags & QGROUP_LIMIT_MAX_EXCL)
    return QgroupInfo(qgroup, max_exclusive if limited else None, exclusive, referenced)


# -- the CLI, where an ioctl is impractical ------------------------------------------------------------


def require_tools(*tools: str) -> None:
    packages = {"btrfs": "btrfs-progs", "mkfs.btrfs": "btrfs-progs", "losetup": "mount", "mount": "mount"}
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        wanted = sorted({packages.get(tool, tool) for tool in missing})
        raise PermanentError(
            f"{', '.join(missing)} not installed: apt-get install {' '.join(wanted)}", reason="ToolMissing"
        )


def run_cli(argv: list[str], doing: str, *, timeout: float = 120.0) -> str:
    """Run a tool with an argument list (never a shell) and map its failure to a typed error."""
    require_tools(argv[0])
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise TransientError(f"{doing}: {argv[0]} did not finish in {timeout:.0f} s", reason="HostBusy") from error
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        text = detail[-1] if detail else f"exit code {result.returncode}"
        if "busy" in text.lower():
            raise TransientError(f"{doing}: {text}", reason="HostBusy")
        raise PermanentError(f"{doing}: {text}", reason="HostError")
    return result.stdout

"""Subvolumes a tenant made inside its own, found and deleted by id: never by walking paths.

A tenant decides the shape of its tree. Walking it by path fails once a path passes PATH_MAX (a tenant
can nest directories deeper than that in seconds) and costs as much as the tree is large; both would let a
tenant make its own delete fail forever. So the pool asks btrfs instead: the root tree holds one ROOT_REF
item per nested subvolume (parent id, the inode of the directory holding it, its name), found with
TREE_SEARCH; that directory is opened by file handle (`open_by_handle_at`, btrfs's export ops), and the
subvolume deleted from it by name. Nothing here builds a path or depends on depth.

Struct layouts follow `linux/btrfs.h`, `linux/btrfs_tree.h` and fs/btrfs/export.h (UAPI and the export
handle); kernel >= 6.1 accepts a handle with generation 0 (fs/btrfs/export.c).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from drivers import nspawn_btrfs as btrfs

ROOT_TREE_OBJECTID = 1
ROOT_REF_KEY = 156
_SEARCH_KEY = "=QQQQQQQIIIIQQQQ"  # struct btrfs_ioctl_search_key (104 bytes)
_SEARCH_HEADER = "=QQQII"  # struct btrfs_ioctl_search_header (32 bytes)
_ROOT_REF = "=QQH"  # struct btrfs_root_ref: dirid, sequence, name_len, then the name (18 bytes + name)
FILEID_BTRFS_WITHOUT_PARENT = 0x4D
_FID = "=QQI"  # struct btrfs_fid up to parent_objectid: objectid, root_objectid, gen (20 bytes)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.open_by_handle_at.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.open_by_handle_at.restype = ctypes.c_int


@dataclass(frozen=True)
class Nested:
    """A subvolume inside another: its id, its parent's id, the directory (inode in the parent) and name."""

    subvolume: int
    parent: int
    directory: int
    name: bytes


def children(pool_fd: int, parent: int) -> list[Nested]:
    """The subvolumes whose entry lies in subvolume `parent` (one level), from the root tree."""
    found: list[Nested] = []
    min_offset = 0
    while True:
        args = bytearray(4096)
        struct.pack_into(
            _SEARCH_KEY, args, 0, ROOT_TREE_OBJECTID, parent, parent, min_offset, 2**64 - 1, 0, 2**64 - 1,
            ROOT_REF_KEY, ROOT_REF_KEY, 4096, 0, 0, 0, 0, 0,
        )
        try:
            fcntl.ioctl(pool_fd, btrfs.IOC_TREE_SEARCH, args, True)
        except OSError as error:
            raise btrfs.map_os_error(error, f"list subvolumes inside {parent}") from error
        count = struct.unpack_from("=I", args, 64)[0]  # nr_items, written back by the kernel
        position = struct.calcsize(_SEARCH_KEY)
        for _ in range(count):
            _transid, objectid, offset, kind, length = struct.unpack_from(_SEARCH_HEADER, args, position)
            position += struct.calcsize(_SEARCH_HEADER)
            if kind == ROOT_REF_KEY and objectid == parent:
                directory, _sequence, name_length = struct.unpack_from(_ROOT_REF, args, position)
                start = position + struct.calcsize(_ROOT_REF)
                found.append(Nested(offset, parent, directory, bytes(args[start : start + name_length])))
            position += length
            min_offset = offset + 1
        if count == 0 or min_offset >= 2**64 - 1:
            return found


def descendants(pool_fd: int, top: int) -> list[Nested]:
    """Every subvolume below subvolume `top`, at any depth, children after their parents."""
    found: list[Nested] = []
    frontier = [top]
    while frontier:
        level = [child for parent in frontier for child in children(pool_fd, parent)]
        found += level
        frontier = [child.subvolume for child in level]
    return found


@contextlib.contextmanager
def _open_directory(pool_fd: int, subvolume: int, inode: int) -> Iterator[int]:
    """The directory `inode` of `subvolume`, opened by file handle: no path, so no depth limit."""
    fid = struct.pack(_FID, inode, subvolume, 0)
    handle = ctypes.create_string_buffer(struct.pack("=Ii", len(fid), FILEID_BTRFS_WITHOUT_PARENT) + fid)
    fd = _libc.open_by_handle_at(pool_fd, ctypes.addressof(handle), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise btrfs.map_os_error(OSError(code, os.strerror(code)), f"open directory {inode} of subvolume {subvolume}")
    try:
        yield fd
    finally:
        os.close(fd)


def destroy(pool_fd: int, nested: Nested) -> None:
    """Delete one nested subvolume (it must hold none itself: call deepest first)."""
    with _open_directory(pool_fd, nested.parent, nested.directory) as directory:
        btrfs.destroy_subvolume_at(directory, nested.name, f"delete nested subvolume {nested.subvolume}")

"""Named network namespaces (/run/netns/NAME, as iproute2 makes them), entered from a short-lived thread.

Why not pyroute2's helpers: `netns.create` and `IPRoute(netns=...)` fork a child process per call (about
15-30 ms each here), and the tenant's network setup made several. setns(CLONE_NEWNET) and
unshare(CLONE_NEWNET) change only the calling thread, so a thread can enter a namespace, open its netlink
socket or write its /proc/sys/net files, and end, leaving the rest of the process where it was.

This module touches only the namespace paths it is given; callers check names.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x4000_0000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_directory_lock = threading.Lock()


def _check(result: int, doing: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{doing}: {os.strerror(code)}")


def in_thread(function: Callable[[], T]) -> T:
    """Run `function` in a new thread and return its result (or raise its error) in the caller's."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(function())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="fleet-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def inside(path: Path, function: Callable[[], T]) -> T:
    """Run `function` inside the network namespace at `path` (FileNotFoundError when it is gone)."""

    def entered() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns into {path}")
        finally:
            os.close(fd)
        return function()

    return in_thread(entered)


def _shared_directory() -> None:
    """/run/netns as a shared mount, as iproute2 makes it, so namespaces bound there show in every mount
    namespace (an `ip netns exec` of an operator sees them too)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    with _directory_lock:
        if _libc.mount(b"", str(NETNS_DIR).encode(), b"none", MS_SHARED | MS_REC, None) == 0:
            return
        _check(_libc.mount(str(NETNS_DIR).encode(), str(NETNS_DIR).encode(), b"none", MS_BIND | MS_REC, None),
               f"bind {NETNS_DIR}")
        _check(_libc.mount(b"", str(NETNS_DIR).encode(), b"none", MS_SHARED | MS_REC, None), f"share {NETNS_DIR}")


def create(path: Path, prepare: Callable[[], None] | None = None) -> bool:
    """Make a new network namespace, run `prepare` inside it, then bind it at `path`: a namespace is never
    found at `path` before `prepare` ran in it. Idempotent: an existing binding is kept and `prepare` is
    not run (run it with `inside`). True when the namespace was made by this call."""
    if path.parent != NETNS_DIR:
        raise ValueError(f"{path} is not under {NETNS_DIR}")
    _shared_directory()
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        if is_bound(path):
            return False

    def unshared() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        if prepare is not None:
            prepare()
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(source, str(path).encode(), b"none", MS_BIND, None), f"bind the namespace at {path}")

    in_thread(unshared)
    return True


def is_bound(path: Path) -> bool:
    """True when a namespace is mounted at `path` (a bare file is what a crash between steps leaves)."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


def remove(path: Path) -> None:
    """Unbind and delete `path`; the namespace itself goes when nothing else holds it."""
    if path.parent != NETNS_DIR:
        raise ValueError(f"{path} is not under {NETNS_DIR}")
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        code = ctypes.get_errno()
        raise OSError(code, f"unmount {path}: {os.strerror(code)}")
    path.unlink(missing_ok=True)


def names() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []

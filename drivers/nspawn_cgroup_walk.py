"""Walking a cgroup tree that a tenant shapes: one descriptor at a time, at any depth.

nspawn delegates the container's `name=systemd` and `unified` subtrees to the tenant, which may `mkdir` in
them as deep as it likes. A path-based walk (os.walk) fails past PATH_MAX and os.fwalk holds a descriptor
per level (and recurses); this one goes down by name and back up by "..", so neither depth nor breadth can
make a kill or a delete fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _subdirectories(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]


def walk(top: Path, visit: Callable[[int], None], leave: Callable[[int, str], None] | None = None) -> None:
    """Depth first over `top` and every directory below it, holding one descriptor at a time.

    A tenant owns a delegated subtree and can nest it deeper than PATH_MAX, which os.walk (paths) and
    os.fwalk (one descriptor a level, recursion) cannot follow; this goes down by name and back up by
    "..", so neither depth nor breadth can make it fail. `visit(fd)` sees each directory; `leave(fd, name)`
    is called on the parent after a child's subtree is done (where rmdir goes)."""
    try:
        fd = os.open(top, _DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        names: list[str] = []  # the path from top, as names: no descriptor is held per level
        visit(fd)
        pending = [_subdirectories(fd)]
        while pending:
            if pending[-1]:
                name = pending[-1].pop()
                try:
                    child = os.open(name, _DIRECTORY, dir_fd=fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                os.close(fd)
                fd = child
                names.append(name)
                visit(fd)
                pending.append(_subdirectories(fd))
                continue
            pending.pop()
            if not names:
                break
            parent = os.open("..", _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            name = names.pop()
            if leave is not None:
                leave(fd, name)
    finally:
        os.close(fd)


def procs_under(top: Path) -> set[int]:
    pids: set[int] = set()

    def visit(fd: int) -> None:
        try:
            procs = os.open("cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return
        with open(procs) as handle, contextlib.suppress(OSError):  # removed while being read: nothing in it
            pids.update(int(line) for line in handle.read().split() if line.isdigit())

    walk(top, visit)
    return pids

"""Wake-ups for SQLite stores: inotify on the database's directory, since SQLite has no NOTIFY.

Any committed write, from this process or another (a billing system's `INSERT` through the sqlite3 shell),
changes the database file or its write-ahead log, and the kernel says so at once. Before this, waiting
was a fixed sleep: a signup sat up to one poll interval before the scheduler saw it, and as long again
before the agent saw the binding. The revision feed still says what changed; a wake-up is only a hint,
so a missed or spurious one costs nothing but a poll.

On a kernel without inotify (or out of watches) it falls back to sleeping, as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
import time
from pathlib import Path

IN_MODIFY = 0x0000_0002
IN_CLOSE_WRITE = 0x0000_0008
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
MIN_GAP_SECONDS = 0.002  # a writer's own commits wake it too: never spin faster than this


class InotifyListener:
    def __init__(self, database: Path) -> None:
        self._names = {database.name, f"{database.name}-wal", f"{database.name}-journal"}
        self._closed = threading.Event()
        self._lock = threading.Lock()  # the descriptor is closed by whoever is last to use it
        self._waiting = False
        self._last_wake = 0.0
        self._fd = -1
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if libc.inotify_add_watch(fd, str(database.parent).encode(), mask) < 0:
            os.close(fd)
            return
        self._fd = fd

    def wait(self, timeout: float) -> bool:
        """True as soon as the database changed (or changed since the last call), False after `timeout`."""
        with self._lock:
            if self._fd < 0 or self._closed.is_set():
                fallback = True
            else:
                fallback, self._waiting = False, True
        if fallback:
            self._closed.wait(timeout)
            return False
        try:
            return self._wait(timeout)
        finally:
            with self._lock:
                self._waiting = False
                if self._closed.is_set():
                    self._close_descriptor()

    def _wait(self, timeout: float) -> bool:
        gap = self._last_wake + MIN_GAP_SECONDS - time.monotonic()
        if gap > 0:
            time.sleep(gap)
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Bounded so that close() from another thread ends a wait within 50 ms.
            if poller.poll(min(remaining, 0.05) * 1000) and self._drain():
                self._last_wake = time.monotonic()
                return True
        return False

    def _drain(self) -> bool:
        """Read every queued event; True if one concerns the database's files."""
        relevant = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return relevant
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                return True  # cannot tell: a spurious wake-up is harmless
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
                relevant = relevant or name in self._names
                offset += _EVENT.size + length

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if not self._waiting:
                self._close_descriptor()

    def _close_descriptor(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

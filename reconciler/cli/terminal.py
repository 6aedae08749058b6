"""The user's terminal for `fleet exec -it`: raw mode while the session runs (restored whatever happens),
its size, and a callback on every resize (SIGWINCH). Loads nothing of the store or the specs."""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Callable, Iterator
from types import FrameType


def size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on `fd`; 24x80 when it says nothing."""
    try:
        cols, rows = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """The terminal on `fd` in raw mode (keys, Ctrl-C included, go to the remote command as bytes)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(fd: int, resized: Callable[[int, int], None]) -> Iterator[None]:
    """Call `resized(rows, cols)` with the terminal's new size on every SIGWINCH while inside."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        resized(*size(fd))

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


class Hangup(Exception):
    """SIGTERM or SIGHUP reached `fleet exec`: end the session (the command is killed) and exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def hangups_end_the_session() -> Iterator[None]:
    """SIGTERM/SIGHUP raise `Hangup`, so the session's cleanup runs instead of the process just dying
    (which would leave the command running in the tenant)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Hangup(signum)

    previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

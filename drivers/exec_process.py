"""A command running inside a tenant (`Driver.exec`): its streams as file descriptors, its size, its exit code.

One shape for every driver, so the CLI (`fleet exec` on the node) and the API's websocket pump the same
object: write `stdin`, read `stdout` (and `stderr` unless it has a terminal), `resize` the terminal, `wait`
for the exit code (128+N when a signal N ended it, as a shell says). With a terminal, `stdout` is the
master side of a pseudo-terminal allocated on the host and `stdin` is the same descriptor.

What it must never do: run anything itself. A driver starts the process; this only holds its ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import subprocess
import termios
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

EOF_BYTE = b"\x04"  # a terminal's end of input (VEOF), for `close_stdin` with a terminal


@dataclass(frozen=True)
class ExecRequest:
    """What to run: an argument list (never a shell line), with or without a terminal of `rows` x `cols`."""

    command: tuple[str, ...]
    tty: bool = False
    rows: int = 24
    cols: int = 80
    term: str = "xterm-256color"

    def __post_init__(self) -> None:
        if not self.command or not all(isinstance(part, str) for part in self.command):
            raise ValueError("command must be a non-empty list of strings")
        if any("\0" in part for part in self.command):
            raise ValueError("command arguments may not contain NUL bytes")
        if not (1 <= self.rows <= 1000 and 1 <= self.cols <= 1000):
            raise ValueError("rows and cols must be between 1 and 1000")


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on a terminal: the kernel sends SIGWINCH to its foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(1, rows), max(1, cols), 0, 0))


class ExecProcess(ABC):
    """The host's ends of a command's streams. `stdin` None once closed; `stderr` None with a terminal."""

    def __init__(self, *, stdin: int | None, stdout: int, stderr: int | None, tty: bool) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.tty = tty
        self._closed = False
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """All of `data` to the command's input; waits while its pipe or terminal is full, but only until the
        input or the session is closed (OSError EPIPE then): a command that never reads must not hold the
        writing thread for good. Written in pieces of at most PIPE_BUF, which never block once writable."""
        view = memoryview(data)
        while view:
            fd = self.stdin
            if fd is None or self._closed:
                raise OSError(errno.EPIPE, "the command's input is closed")
            waiting = select.poll()  # not select(): an API process may hold descriptors past FD_SETSIZE
            waiting.register(fd, select.POLLOUT)
            if waiting.poll(200):
                written = os.write(fd, view[:select.PIPE_BUF])
                view = view[written:]

    def close_stdin(self) -> None:
        """End of input: the pipe is closed; a terminal gets its end-of-file character (as Ctrl-D does)."""
        with self._lock:
            if self.stdin is None:
                return
            if self.tty:
                with contextlib.suppress(OSError):
                    os.write(self.stdin, EOF_BYTE)
                self.stdin = None  # the same descriptor as stdout: it stays open for reading
                return
            fd, self.stdin = self.stdin, None
        with contextlib.suppress(OSError):
            os.close(fd)

    def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            with contextlib.suppress(OSError):
                set_window_size(self.stdout, rows, cols)

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code once the command has ended, else None."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """The exit code; TimeoutError if it is still running after `timeout` seconds."""

    @abstractmethod
    def kill(self) -> None:
        """End the command now (what it started in the background belongs to the tenant and stays)."""

    def close(self) -> None:
        """Kill the command if it still runs, reap it, close the host's ends."""
        if self.poll() is None:
            self.kill()
            with contextlib.suppress(TimeoutError):
                self.wait(5)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fds = {fd for fd in (self.stdin, self.stdout, self.stderr) if fd is not None}
            self.stdin = None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def exit_code(status: int) -> int:
    """A shell's exit code from `Popen.returncode`: 128+N for a signal N."""
    return 128 - status if status < 0 else status


class PopenExec(ExecProcess):
    """A command started as a host subprocess (a driver's helper that enters the tenant and execs it)."""

    def __init__(self, process: subprocess.Popen[bytes], *, stdin: int | None, stdout: int, stderr: int | None,
                 tty: bool) -> None:
        super().__init__(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        self.process = process

    def poll(self) -> int | None:
        status = self.process.poll()
        return None if status is None else exit_code(status)

    def wait(self, timeout: float | None = None) -> int:
        try:
            return exit_code(self.process.wait(timeout))
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(f"still running after {timeout} s") from error

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

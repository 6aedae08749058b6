"""The fake driver's `exec`: a few commands answered in memory, so the CLI and API plumbing can be tested
without running anything on the host. Streams are real pipes (or a real pseudo-terminal with `tty`), the
"command" is a thread:

    echo ARGS...     ARGS joined by spaces, a newline; exit 0
    cat              stdin to stdout until end of input; exit 0
    stderr ARGS...   ARGS to stderr; exit 0
    exit N           exit N
    true, false      exit 0, exit 1
    size             with a terminal: "ROWSxCOLS" of the terminal, then again after each line of input
    sleep            waits until killed (exit 137) or end of input (exit 0)
    anything else    "fake: NAME: command not found" on stderr; exit 127

What it must never do: start a process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import struct
import termios
import threading

from drivers.exec_process import ExecProcess, ExecRequest, set_window_size


class FakeExec(ExecProcess):
    def __init__(self, request: ExecRequest) -> None:
        if request.tty:
            master, slave = pty.openpty()
            set_window_size(master, request.rows, request.cols)
            tty = termios.tcgetattr(slave)
            tty[3] &= ~termios.ECHO  # the fake's terminal does not echo: its output is exactly what it wrote
            termios.tcsetattr(slave, termios.TCSANOW, tty)
            super().__init__(stdin=master, stdout=master, stderr=None, tty=True)
            self._in, self._out, self._err, self._own = slave, slave, slave, [slave]
        else:
            in_read, in_write = os.pipe()
            out_read, out_write = os.pipe()
            err_read, err_write = os.pipe()
            super().__init__(stdin=in_write, stdout=out_read, stderr=err_read, tty=False)
            self._in, self._out, self._err, self._own = in_read, out_write, err_write, [in_read, out_write, err_write]
        self.request = request
        self._code: int | None = None
        self._done = threading.Event()
        self._killed = threading.Event()
        threading.Thread(target=self._run, name="fake-exec", daemon=True).start()

    def _lines(self) -> list[bytes]:
        """Input until its end (a closed pipe, or Ctrl-D at the start of a terminal line)."""
        data = b""
        while not self._killed.is_set():
            try:
                chunk = os.read(self._in, 4096)
            except OSError:
                break
            if not chunk or (self.tty and chunk.startswith(b"\x04")):
                break
            data += chunk
            yield_lines = data.split(b"\n")
            data = yield_lines.pop()
            for line in yield_lines:
                self._on_line(line)
        return [data] if data else []

    def _on_line(self, line: bytes) -> None:
        name = self.request.command[0]
        if name == "cat":
            self._write(self._out, line + b"\n")
        elif name == "size":
            self._write(self._out, self._size())

    def _size(self) -> bytes:
        rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(self._out, termios.TIOCGWINSZ, b"\0" * 8))
        return f"{rows}x{cols}\n".encode()

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, data)

    def _run(self) -> None:
        name, *args = self.request.command
        code = 0
        try:
            if name == "echo":
                self._write(self._out, " ".join(args).encode() + b"\n")
            elif name == "stderr":
                self._write(self._err, " ".join(args).encode() + b"\n")
            elif name == "exit":
                code = int(args[0]) if args and args[0].isdigit() else 1
            elif name in ("true", "false"):
                code = 0 if name == "true" else 1
            elif name in ("cat", "size", "sleep"):
                if name == "size":
                    self._write(self._out, self._size())
                rest = self._lines()
                if name == "cat":
                    for part in rest:
                        self._write(self._out, part)
                code = 137 if self._killed.is_set() else 0
            else:
                self._write(self._err, f"fake: {name}: command not found\n".encode())
                code = 127
        finally:
            self._code = code
            for fd in self._own:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._done.set()

    def poll(self) -> int | None:
        return self._code if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise TimeoutError(f"still running after {timeout} s")
        assert self._code is not None
        return self._code

    def kill(self) -> None:
        self._killed.set()
        if not self._done.is_set():
            # Wake a read blocked on input: the command's end of the input is closed under it.
            with contextlib.suppress(OSError):
                if self.tty:
                    os.write(self.stdout, b"\x04")
                elif self.stdin is not None:
                    os.close(self.stdin)
                    self.stdin = None

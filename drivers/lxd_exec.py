"""`fleet exec` for the LXD driver: LXD's exec API, its websockets bridged to host descriptors.

`POST /1.0/instances/NAME/exec` with `wait-for-websocket` makes a background operation whose metadata holds
one secret per stream: "0", "1", "2" and "control" without a terminal; "0" (both directions) and "control"
with one. LXD runs the command itself with `lxc-attach` into the container's namespaces, cgroups,
capabilities and seccomp profile, as uid 0 of the container (the tenant's own id map): exactly what the
tenant's init could do, never the host. With a terminal, LXD opens it in the container's devpts.

Here each websocket (over LXD's unix socket) is pumped to one end of a pipe (a socketpair with a terminal)
by a thread of its own; the other end is the `ExecProcess`'s descriptor. LXD's stream protocol
(lxd/instance_exec.go, shared/network.go in LXD 5.0): output ends with an empty text message (a
"barrier"); a barrier on "0" closes the command's stdin (without a terminal: with one it would close
LXD's pty master, so end of input there is Ctrl-D, as `ExecProcess.close_stdin` sends); the control
socket carries `window-resize` and `signal`, and closing it kills the command. The exit code is the
operation's `metadata.return` (already 128+N for a signal N), set once the output is all sent.

What it must never do: block a thread for good on a peer that stopped reading (every wait is bounded or
ended by closing a descriptor), or leave the command running once the session is closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.protocol import State
from websockets.sync.client import ClientConnection, unix_connect

from drivers.exec_process import ExecProcess, ExecRequest
from drivers.lxd_api import LxdClient
from specs import NotFound, PermanentError, TransientError
from specs.errors import FleetError

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONNECT_S = 5.0  # LXD gives up on an exec whose websockets are not all connected within 5 s
WAIT_POLL_S = 2  # one long-poll of the operation: the waiter sees a close within this
END_S = 5.0  # how long a close waits for the operation to end after the kill
EXITED_GRACE_S = 0.5  # ... and once the command has exited, for its output to end
LOST_S = 15.0  # a daemon that does not answer for this long has lost the session (126)
CHUNK = 4096  # one input frame: fits a unix socket that polls writable, so a send never blocks long
MAX_FRAME = 4 << 20  # LXD sends at most 128 KiB per output frame
NOT_RUNNING = ("not running", "frozen")  # LXD's 400s for an instance that stopped meanwhile
SIGKILL = 9


def environment(tenant: str, request: ExecRequest) -> dict[str, str]:
    """A clean environment, as nspawn's exec gives (LXD clears the rest; it adds only the instance's
    `environment.*` keys, which Fleet never sets)."""
    entries = {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
               "FLEET_TENANT": tenant, "container": "lxc"}
    if request.tty:
        entries["TERM"] = request.term
    return entries


def start(client: LxdClient, tenant: str, request: ExecRequest) -> LxdExec:
    """Start `request` in `tenant`'s running container (ownership checked by the caller)."""
    began = time.perf_counter()
    body = {"command": list(request.command), "environment": environment(tenant, request),
            "interactive": request.tty, "wait-for-websocket": True, "record-output": False,
            "width": request.cols, "height": request.rows, "user": 0, "group": 0, "cwd": "/"}
    try:
        operation = client.request("POST", f"/1.0/instances/{tenant}/exec", json=body, wait=False).metadata
    except PermanentError as error:
        if any(words in str(error).lower() for words in NOT_RUNNING):
            raise PermanentError(f"tenant {tenant} is not running: nothing to exec into", reason="NotRunning") from None
        raise
    operation_id = str(operation["id"])
    secrets: Mapping[str, str] = (operation.get("metadata") or {}).get("fds") or {}
    names = ("control", "0") if request.tty else ("control", "0", "1", "2")
    sockets: dict[str, ClientConnection] = {}
    connections = contextlib.ExitStack()  # each websocket is a context: the session's close exits them all
    try:
        # Control first: LXD starts the command once the data streams are connected, and a command that
        # ended before the control socket joined could not be signalled.
        for name in names:
            sockets[name] = connections.enter_context(unix_connect(
                str(client.socket), f"ws://lxd/1.0/operations/{operation_id}/websocket?secret={secrets[name]}",
                open_timeout=CONNECT_S, close_timeout=2, compression=None, max_size=MAX_FRAME,
                ping_interval=None,  # LXD pings; a pong it never reads would close the stream here
            ))
    except (OSError, KeyError, WebSocketException) as error:
        for connected in sockets.values():
            _shut(connected)
        connections.close()
        # Nothing ran: LXD gives up on the operation itself once its 5 s for connecting are over.
        raise TransientError(f"could not attach to LXD exec {operation_id} in tenant {tenant}: {error!r}") from error
    process = LxdExec(client, tenant, operation_id, sockets, connections, tty=request.tty,
                      program=request.command[0])
    logger.bind(tenant=tenant, operation=operation_id, tty=request.tty,
                ms=round((time.perf_counter() - began) * 1000, 1)).debug("Attached LXD exec")
    return process


def _shut(connection: ClientConnection) -> None:
    """End a websocket now, whatever it is doing: a send blocked on a peer that stopped reading fails at once
    (closing politely would wait for that send first), and its own receiving thread ends."""
    with contextlib.suppress(OSError):
        connection.socket.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        connection.close()


def _writable(fd: int, stop: threading.Event) -> bool:
    """Wait until `fd` takes data, or until stopped (False)."""
    waiting = select.poll()  # not select(): an API process may hold descriptors past FD_SETSIZE
    waiting.register(fd, select.POLLOUT)
    while not stop.is_set():
        for _fd, events in waiting.poll(200):
            return not events & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
    return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class LxdExec(ExecProcess):
    """A command LXD runs in a container; its streams pumped between websockets and host descriptors."""

    def __init__(self, client: LxdClient, tenant: str, operation: str, sockets: dict[str, ClientConnection],
                 connections: contextlib.ExitStack, *, tty: bool, program: str) -> None:
        self._client, self._tenant, self._operation, self._sockets = client, tenant, operation, sockets
        self._connections = connections
        self._program = program
        self._written = 0  # output bytes delivered: LXD's own "not found" gets a line only when there is none
        self._stop = threading.Event()  # the session is closing: pumps and the waiter end
        self._ended = threading.Event()  # the operation has ended and its output is all on the descriptors
        self._code: int | None = None
        self._closing = False
        self._control_lock = threading.Lock()
        self._started = time.monotonic()
        self._ours: socket.socket | None = None
        self._outputs_closed = False
        data = sockets["0"]
        if tty:
            host, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._ours = ours
            fd = host.detach()
            super().__init__(stdin=fd, stdout=fd, stderr=None, tty=True)
            self._outputs: list[int] = []  # the terminal's output ends with a shutdown of `ours`
            self._errors = ours.fileno()
            pumps: list[tuple[str, Callable[..., None], tuple[object, ...]]] = [
                ("in", self._pump_in, (ours.fileno(), data, False)),
                ("out", self._pump_out, (data, ours.fileno(), True))]
        else:
            in_read, in_write = os.pipe()
            out_read, out_write = os.pipe()
            err_read, err_write = os.pipe()
            super().__init__(stdin=in_write, stdout=out_read, stderr=err_read, tty=False)
            self._outputs, self._errors = [out_write, err_write], err_write
            pumps = [("in", self._pump_in, (in_read, data, True)),
                     ("out", self._pump_out, (sockets["1"], out_write, False)),
                     ("err", self._pump_out, (sockets["2"], err_write, False))]
        self._threads = {name: threading.Thread(target=target, args=args, name=f"lxd-exec-{name}", daemon=True)
                         for name, target, args in pumps}
        self._threads["wait"] = threading.Thread(target=self._wait_operation, name="lxd-exec-wait", daemon=True)
        for thread in self._threads.values():
            thread.start()

    # -- pumps ------------------------------------------------------------------------------------------
    def _pump_in(self, source: int, connection: ClientConnection, owned: bool) -> None:
        """Host input to websocket "0" until the host end closes; a barrier then ends the command's stdin."""
        try:
            while True:
                data = os.read(source, CHUNK)  # ends: the host end is closed (close_stdin, close)
                if not data:
                    if owned:  # without a terminal (with one, this is the session closing)
                        self._send(connection, "")
                    return
                self._send(connection, data)
        except (OSError, ValueError, ConnectionClosed):
            return  # the operation has ended (LXD closed the socket) or the session is closing
        finally:
            if owned:
                os.close(source)

    def _send(self, connection: ClientConnection, data: bytes | str) -> None:
        """One frame, once the socket takes it: `send` holds the connection's lock while it writes, and a
        write blocked on a command that never reads must not hold it (nor this thread) for good."""
        if not _writable(connection.socket.fileno(), self._stop):
            raise ConnectionClosed(None, None)
        connection.send(data)

    def _pump_out(self, connection: ClientConnection, target: int, terminal: bool) -> None:
        """A websocket's output to a host descriptor until LXD's barrier (or the socket closes). The
        descriptor is closed by the waiter, once the exit code is known (`_close_outputs`)."""
        try:
            while not self._stop.is_set():
                message = connection.recv()  # ends: a frame, LXD closing, or `_shut` at close
                if isinstance(message, str):  # the barrier: this stream is at its end
                    break
                _write_all(target, message)  # blocks while the reader is slow: it slows the command
                self._written += len(message)
        except ConnectionClosed:
            pass
        except OSError:  # the reader is gone (the session closed): never leave LXD's sender blocked on us
            _shut(connection)
        finally:
            if terminal:  # LXD waits for the client to close the terminal's stream before it ends the operation
                with contextlib.suppress(Exception):
                    connection.close()

    def _close_outputs(self, last_words: bytes = b"") -> None:
        """End of output on the host ends (once: by the waiter, else by `close`), after `last_words` on the
        command's stderr if they fit at once (under the lock: never written to a descriptor closed meanwhile)."""
        with self._lock:
            if self._outputs_closed:
                return
            self._outputs_closed = True
            waiting = select.poll()
            waiting.register(self._errors, select.POLLOUT)
            if last_words and waiting.poll(0):
                with contextlib.suppress(OSError):
                    os.write(self._errors, last_words)  # a line: within what a writable pipe or socket takes
        for fd in self._outputs:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._ours is not None:
            with contextlib.suppress(OSError):
                self._ours.shutdown(socket.SHUT_WR)

    def _wait_operation(self) -> None:
        """The operation's exit code, once it has ended and the output pumps have delivered everything."""
        code: int | None = None
        failure = ""
        unanswered: float | None = None  # since when the daemon has not answered
        while not self._stop.is_set():
            try:
                operation = self._client.request("GET", f"/1.0/operations/{self._operation}/wait",
                                                 params={"timeout": WAIT_POLL_S}, wait=False).metadata or {}
            except NotFound:  # the daemon restarted: the command went with it
                code = 126
                break
            except FleetError as error:
                unanswered = unanswered or time.monotonic()
                if time.monotonic() - unanswered > LOST_S:  # the daemon is gone, and the command with it
                    logger.bind(tenant=self._tenant, operation=self._operation, error=str(error)).warning(
                        "Lost LXD exec: the daemon does not answer")
                    code, failure = 126, str(error)
                    break
                self._stop.wait(0.5)
                continue
            except RuntimeError:  # the driver closed its client: the process is ending, nobody waits
                break
            if operation.get("status") in ("Pending", "Running"):
                continue
            returned = (operation.get("metadata") or {}).get("return")
            # -1 (or none): LXD could not start the command (or never got its websockets): it did not run.
            code = returned if isinstance(returned, int) and returned >= 0 else 126
            failure = str(operation.get("err") or "")
            break
        for name in ("out", "err"):
            if name in self._threads:
                self._threads[name].join()
        self._close_outputs(self._explain(code, failure) if code is not None and failure and not self._written
                            else b"")
        if code is not None:
            self._code = code
            self._ended.set()

    def _explain(self, code: int, error: str) -> bytes:
        """LXD says why a command could not run only in the operation (lxc-attach prints nothing): one line on
        the command's stderr, as nspawn's exec prints it."""
        logger.bind(tenant=self._tenant, operation=self._operation, exit_code=code, error=error).debug(
            "LXD exec ended with an error")
        what = "command not found in the tenant" if code == 127 else f"could not be run in the tenant ({error})"
        return f"fleet exec: {self._program}: {what}{chr(13) if self.tty else ''}\n".encode()

    # -- ExecProcess -------------------------------------------------------------------------------------
    def _control(self, message: Mapping[str, Any], *, wait: float = -1) -> bool:
        # `resize` runs in a SIGWINCH handler: if it interrupted this thread's own send, waiting for the lock
        # would never end, so it waits a moment and drops the size (the session is closing then).
        if not self._control_lock.acquire(timeout=wait):
            return False
        try:
            self._send(self._sockets["control"], json.dumps(message))
        except (ConnectionClosed, OSError, ValueError):
            return False
        finally:
            self._control_lock.release()
        return True

    def resize(self, rows: int, cols: int) -> None:
        if self.tty:  # LXD sets the size on its pty master: the command gets SIGWINCH
            self._control({"command": "window-resize", "args": {"width": str(cols), "height": str(rows)}}, wait=0.5)

    def poll(self) -> int | None:
        return self._code if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise TimeoutError(f"still running after {timeout} s")
        assert self._code is not None
        return self._code

    def kill(self) -> None:
        if not self._control({"command": "signal", "signal": SIGKILL}):
            _shut(self._sockets["control"])  # LXD kills the command when its control socket goes

    def _wait_end(self) -> bool:
        """Whether the operation ended (within END_S). LXD closes the control socket as soon as the command
        has exited, and ends the operation once the output has ended too: after that close, only a background
        process still holding the output (the tenant's, it stays) keeps it open, so waiting stops soon."""
        deadline = time.monotonic() + END_S
        exited: float | None = None
        while not self._ended.wait(0.05):
            now = time.monotonic()
            if exited is None and self._sockets["control"].state is not State.OPEN:
                exited = now
            if now > deadline or (exited is not None and now - exited > EXITED_GRACE_S):
                return False
        return True

    def close(self) -> None:
        """Kill the command if it runs, close the host ends (a pump writing to a reader that is gone stops),
        wait for the operation to end, then end every websocket and thread."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self.poll() is None:
            self.kill()
        with self._lock:
            self._closed = True
            fds = {fd for fd in (self.stdin, self.stdout, self.stderr) if fd is not None}
            self.stdin = None
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        ended = self._wait_end()
        self._stop.set()
        for connection in self._sockets.values():
            _shut(connection)
        with contextlib.suppress(Exception):
            self._connections.close()
        for name, thread in self._threads.items():
            # The waiter is not waited for: it ends with its current long-poll (WAIT_POLL_S), holding nothing.
            thread.join(0 if name == "wait" else END_S)
        self._close_outputs()
        if self._ours is not None:
            self._ours.close()
        lingering = [name for name, thread in self._threads.items() if thread.is_alive() and name != "wait"]
        log = logger.bind(tenant=self._tenant, operation=self._operation, exit_code=self._code,
                          ms=round((time.monotonic() - self._started) * 1000, 1), threads=lingering)
        if not ended:
            # Most often a background process still holds the command's output: LXD ends the operation
            # when that closes it. Nothing of it stays here.
            log.warning("LXD exec operation still running after the session closed")
        else:
            log.debug("Closed LXD exec")

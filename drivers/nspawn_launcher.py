"""Starts a tenant's systemd-nspawn with what must be in place before its first instruction runs.

A small single-threaded Python process (a fork server, as multiprocessing's forkserver) is started once
and kept: for each container it forks a child that forks again (the container must not be anyone's child)
and, in the grandchild: `setsid`; writes its pid to every tenant `cgroup.procs` (all nspawn starts is
charged to the tenant); installs the tenant seccomp filter; joins the tenant's network namespace (nspawn's
`--network-namespace-path` fails inside a user namespace, and joining first keeps the namespace the
host's); opts into KSM; sends stdout/stderr to the console log; writes the pid file; execs nspawn.

Why a fork server: these steps cannot be done by nspawn, cannot run in the operator (forking a threaded
process and running Python in the child can deadlock), and a fresh interpreter per container cost 15-30 ms
of every signup (more under load). The server is forked from the operator with nothing but three pipes and
exits when its stdin closes (the operator stopped or closed the driver); containers it started keep
running. If it dies, the next launch starts another.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time

from specs import TransientError

# -I -S: no site, no project; nothing imported that it does not need (json alone would cost 15 ms).
# A request is one line: hex of the NUL-joined arguments pid_file, log, netns ("" for none), seccomp program
# in hex ("" for none), ksm ("1"/"0"), the number of cgroup.procs files, those files, then the nspawn
# command line. The answer is one line: the exit code of the first child (0: the grandchild is on its way).
SOURCE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)

def launch(args):
    pid_file, log_path, netns, seccomp, ksm, count = args[:6]
    procs_files = args[6:6 + int(count)]
    argv = args[6 + int(count):]
    if os.fork():
        os._exit(0)
    os.setsid()
    try:
        for procs in procs_files:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        if seccomp:
            code = bytes.fromhex(seccomp)
            program = ctypes.create_string_buffer(code, len(code))
            class Prog(ctypes.Structure):
                _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
            prog = Prog(len(code) // 8, ctypes.cast(program, ctypes.c_void_p))
            if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
        if netns:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            if libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")
            os.close(fd)
        if ksm == "1" and libc.prctl(67, 1, 0, 0, 0) != 0:  # PR_SET_MEMORY_MERGE
            sys.stderr.write("fleet-launcher: prctl(PR_SET_MEMORY_MERGE) failed: errno %d\n" % ctypes.get_errno())
        # In the tenant's own tree: never follow a link or open a FIFO the tenant left there.
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        if (os.fstat(log).st_mode & 0o170000) != 0o100000:
            raise OSError("console log %s is not a regular file" % log_path)
        os.set_blocking(log, True)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
        os.close(null); os.close(log)
        temporary = pid_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(temporary, pid_file)
        os.execv(argv[0], argv)
    except BaseException as error:
        sys.stderr.write("fleet-launcher: %r\n" % (error,))
    os._exit(127)

requests, answers = sys.stdin.buffer, sys.stdout.buffer
while True:
    line = requests.readline()
    if not line:
        os._exit(0)
    args = [part.decode("utf-8", "surrogateescape") for part in bytes.fromhex(line.strip().decode()).split(b"\0")]
    child = os.fork()
    if child == 0:
        try:
            launch(args)
        finally:
            os._exit(127)
    _, status = os.waitpid(child, 0)
    answers.write(b"%d\n" % os.waitstatus_to_exitcode(status))
    answers.flush()
"""


class Launcher:
    """The client side: one request at a time (a launch takes ~1 ms of the server's time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: subprocess.Popen[bytes] | None = None

    def launch(self, arguments: list[str], *, timeout: float) -> None:
        request = b"\0".join(a.encode("utf-8", "surrogateescape") for a in arguments).hex().encode() + b"\n"
        with self._lock:
            server = self._running_server()
            assert server.stdin is not None and server.stdout is not None
            try:
                server.stdin.write(request)
                server.stdin.flush()
                answer = _read_line(server.stdout.fileno(), timeout)
            except OSError as error:
                self._stop()
                raise TransientError(f"the container launcher failed: {error}; it is restarted") from error
            if not answer.strip().lstrip(b"-").isdigit():
                self._stop()
                raise TransientError("the container launcher did not answer; it is restarted")
            if int(answer) != 0:
                raise TransientError(f"the container launcher's child exited with {int(answer)}")

    def server_pid(self) -> int | None:
        """The fork server's pid while it runs (None before the first launch, or once it has died)."""
        server = self._server
        return server.pid if server is not None and server.poll() is None else None

    def _running_server(self) -> subprocess.Popen[bytes]:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        return self._server

    def _stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if server.stdin is not None:
            server.stdin.close()
        if server.stdout is not None:
            server.stdout.close()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)

    def close(self) -> None:
        with self._lock:
            self._stop()


def _read_line(fd: int, timeout: float) -> bytes:
    """One line from a pipe within `timeout` seconds (b"" on EOF or when the time is up)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return b""
        chunk = os.read(fd, 64)
        if not chunk:
            return b""
        data += chunk
    return data

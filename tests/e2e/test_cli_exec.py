"""`fleet exec --server URL` from an operator's laptop (a token, no store): the API's exec websocket on a
`fleet up --driver fake` (whose exec answers a few commands in memory), the same exit codes and streams as
on the node, errors on one line, and none of the store's or the models' imports. The real driver, locally
and over the API, is in tests/integration/test_fleet_exec.py."""

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import FLEET, HEAVY, Fleet, Laptop, laptop_of, tenants
from tests.helpers import wait_for


def _exec(laptop: Laptop, *args: str, stdin: bytes | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([FLEET, "exec", *args], input=stdin, capture_output=True, env=env or laptop.env, timeout=60,
                          **({} if stdin is not None else {"stdin": subprocess.DEVNULL}))


def test_over_the_api_exec_streams_and_exits_with_the_commands_code(laptop: Laptop) -> None:
    laptop.run("apply", "-f", "-", stdin=tenants("acme"))
    wait_for(lambda: laptop.phase("acme") == "Running", what="acme Running")
    echo = _exec(laptop, "acme", "--", "echo", "hello", "$HOME")
    assert (echo.returncode, echo.stdout, echo.stderr) == (0, b"hello $HOME\n", b"")
    assert _exec(laptop, "acme", "--", "exit", "3").returncode == 3
    missing = _exec(laptop, "acme", "--", "nope")
    assert (missing.returncode, missing.stderr) == (127, b"fake: nope: command not found\n")
    cat = _exec(laptop, "-i", "acme", "--", "cat", stdin=b"from stdin\n" * 1000)
    assert cat.returncode == 0 and cat.stdout == b"from stdin\n" * 1000
    assert _exec(laptop, "acme", "--", "cat", stdin=b"not without -i").stdout == b""
    events = laptop.fleet.run("events", "acme").stdout
    assert "token:ops ran echo hello '$HOME'" in events and "ExecFinished" in events, events


def test_over_the_api_a_refused_exec_is_one_line_and_exit_1(laptop: Laptop) -> None:
    laptop.run("apply", "-f", "-", stdin=tenants("acme"))
    wait_for(lambda: laptop.phase("acme") == "Running", what="acme Running")
    ghost = _exec(laptop, "ghost", "--", "true")
    assert ghost.returncode == 1 and ghost.stderr.decode().startswith("error: tenant ghost not found"), ghost
    viewer = laptop.fleet.run("token", "create", "--name", "eyes", "--role", "viewer").stdout.strip()
    refused = _exec(laptop, "acme", "--", "true", env={**laptop.env, "FLEET_TOKEN": viewer})
    assert refused.returncode == 1 and b"role viewer may not exec" in refused.stderr, refused
    assert refused.stderr.count(b"\n") == 1


def test_over_the_api_an_exec_over_the_sessions_cap_is_one_line_and_exit_1(fleet: Fleet, tmp_path: Path) -> None:
    with laptop_of(fleet, tmp_path, "--exec-sessions-per-tenant", "1") as laptop:
        laptop.run("apply", "-f", "-", stdin=tenants("acme"))
        wait_for(lambda: laptop.phase("acme") == "Running", what="acme Running")
        held = subprocess.Popen([FLEET, "exec", "-i", "acme", "--", "sleep"], env=laptop.env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: "ExecStarted" in laptop.fleet.run("events", "acme").stdout, what="the first session")
            refused = _exec(laptop, "acme", "--", "true")
            assert refused.returncode == 1 and refused.stderr.count(b"\n") == 1, refused
            assert refused.stderr.startswith(b"error: tenant acme already has 1 exec session open, the most allowed "
                                             b"per tenant (fleet up --exec-sessions-per-tenant)"), refused
        finally:
            held.terminate()  # the session ends: its slot is free again
            held.wait(timeout=30)
        events = laptop.fleet.run("events", "acme").stdout
        assert "ExecRefused" in events and "token:ops may not exec now" in events, events
        wait_for(lambda: "ExecFinished" in laptop.fleet.run("events", "acme").stdout, what="the first session's end")
        again = _exec(laptop, "acme", "--", "echo", "again")
        assert (again.returncode, again.stdout) == (0, b"again\n"), again


def test_over_the_api_exec_loads_neither_the_store_nor_the_models(laptop: Laptop) -> None:
    laptop.run("apply", "-f", "-", stdin=tenants("acme"))
    wait_for(lambda: laptop.phase("acme") == "Running", what="acme Running")
    probe = ("import sys\nfrom reconciler.cli.main import main\nsys.argv = ['fleet', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe, "exec", "acme", "--", "echo", "light"], capture_output=True,
                            text=True, env=laptop.env, timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout == "light\n" and "LOADED []" in result.stderr, result.stderr


def test_over_the_api_a_terminal_follows_resizes_and_ends_with_the_commands_code(laptop: Laptop) -> None:
    import errno
    import fcntl
    import os
    import select
    import struct
    import termios
    import time

    laptop.run("apply", "-f", "-", stdin=tenants("acme"))
    wait_for(lambda: laptop.phase("acme") == "Running", what="acme Running")
    pid, master = os.forkpty()
    if pid == 0:  # the child: a terminal of 30x100, then fleet exec -it in it
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.execve(FLEET, [FLEET, "exec", "-it", "acme", "--", "size"], laptop.env)
        finally:
            os._exit(127)
    seen = bytearray()

    def read_until(pattern: bytes) -> None:
        deadline = time.monotonic() + 10
        while pattern not in seen:
            assert time.monotonic() < deadline, f"no {pattern!r} within 10 s: {bytes(seen)!r}"
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError as error:
                    assert error.errno == errno.EIO, error
                    raise AssertionError(f"the terminal closed before {pattern!r}: {bytes(seen)!r}") from error

    try:
        read_until(b"30x100")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # SIGWINCH to fleet exec

        def resized() -> bool:
            seen.clear()
            os.write(master, b"\r")  # raw mode here: the remote terminal makes it a line, and the size is printed
            read_until(b"\n")
            return b"40x120" in seen

        wait_for(resized, timeout=10, interval=0.05, what="the resize to reach the command")
        os.write(master, b"\x04")  # Ctrl-D: end of input for the command, which then exits 0
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(master)

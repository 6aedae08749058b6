"""`fleet exec` on LXD: a command runs through LXD's exec API as the tenant's own root, in its namespaces and
limits; output, input, a terminal, resizes and the exit code pass through; closing the session kills the
command and leaves no thread, descriptor or operation behind; and the `fleet exec` CLI works against
`fleet up --driver lxd`."""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.exec_process import ExecProcess, ExecRequest
from drivers.lxd import LxdDriver
from drivers.lxd_api import LxdClient
from specs import NotFound, Observed, PermanentError, Resources

pytest.register_assert_rewrite("tests.lxd.runtime")
from tests.e2e.conftest import FLEET, Fleet, start_operator, stop_operator  # noqa: E402
from tests.lxd.runtime import BASE, TEST_PREFIX, tenant_maker, wait_for  # noqa: E402
from tests.lxd.test_fleet_lxd import ARGS, TENANT  # noqa: E402

pytest_plugins = ["tests.lxd.runtime"]
pytestmark = [pytest.mark.root, pytest.mark.slow]
MakeTenant = Callable[..., Observed]


@pytest.fixture
def driver(lxd_driver: object) -> LxdDriver:
    assert isinstance(lxd_driver, LxdDriver)
    return lxd_driver


@pytest.fixture(scope="module")
def tenant(lxd_driver: object) -> Iterator[Observed]:
    """One running tenant for the tests that only run commands in it."""
    assert isinstance(lxd_driver, LxdDriver)
    with tenant_maker(lxd_driver, TEST_PREFIX, BASE) as make:
        yield make("exec")


def run(driver: LxdDriver, name: str, *command: str, stdin: bytes | None = None, timeout: float = 30,
        ) -> tuple[bytes, bytes, int]:
    """Run a command to its end: (stdout, stderr, exit code)."""
    process = driver.exec(name, ExecRequest(tuple(command)))
    try:
        if stdin is not None:
            process.write(stdin)
        process.close_stdin()
        out, err = read_until_eof(process, timeout)
        return out, err, process.wait(timeout)
    finally:
        process.close()


def read_until_eof(process: ExecProcess, timeout: float) -> tuple[bytes, bytes]:
    streams = {process.stdout: bytearray()}
    if process.stderr is not None:
        streams[process.stderr] = bytearray()
    open_fds = set(streams)
    deadline = time.monotonic() + timeout
    while open_fds:
        assert time.monotonic() < deadline, f"output still open after {timeout} s: {dict(streams)}"
        ready, _, _ = select.select(list(open_fds), [], [], 0.2)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if chunk:
                streams[fd] += chunk
            else:
                open_fds.discard(fd)
    return bytes(streams[process.stdout]), bytes(streams.get(process.stderr or -1, b""))


def read_until(process: ExecProcess, pattern: str, timeout: float = 15, *, poke: Callable[[], None] | None = None,
               seen: bytearray | None = None) -> str:
    """Terminal output until `pattern` appears in it (calling `poke` every half second meanwhile)."""
    seen = bytearray() if seen is None else seen
    deadline = time.monotonic() + timeout
    next_poke = time.monotonic()
    while not re.search(pattern, seen.decode(errors="replace")):
        assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s in {seen.decode(errors='replace')!r}"
        if poke is not None and time.monotonic() >= next_poke:
            poke()
            next_poke = time.monotonic() + 0.5
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(process.stdout, 65536)
            assert chunk, f"output ended before {pattern!r}: {seen.decode(errors='replace')!r}"
            seen += chunk
    return seen.decode(errors="replace")


def lxd_exec_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("lxd-exec-")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_output_and_the_exit_code_pass_through(driver: LxdDriver, tenant: Observed) -> None:
    out, err, code = run(driver, tenant.name, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (out, err, code) == (b"out\n", b"err\n", 3)
    assert run(driver, tenant.name, "echo", "$HOME")[0] == b"$HOME\n"  # an argument list, never a shell line
    _out, err, code = run(driver, tenant.name, "no-such-command")
    assert code == 127 and err == b"fleet exec: no-such-command: command not found in the tenant\n"
    assert run(driver, tenant.name, "sh", "-c", "echo mine >&2; exit 127")[1:] == (b"mine\n", 127)
    assert run(driver, tenant.name, "sh", "-c", "kill -9 $$")[2] == 137  # 128+N for a signal N
    big = run(driver, tenant.name, "sh", "-c", "head -c 3000000 /dev/zero")[0]
    assert big == b"\0" * 3_000_000
    times = []
    for _ in range(10):
        started = time.perf_counter()
        assert run(driver, tenant.name, "true")[2] == 0
        times.append((time.perf_counter() - started) * 1000)
    print(f"exec of `true`, start to exit code and close: median {sorted(times)[5]:.0f} ms")


def test_stdin_is_delivered_and_its_end_ends_the_command(driver: LxdDriver, tenant: Observed) -> None:
    process = driver.exec(tenant.name, ExecRequest(("cat",)))
    try:
        process.write(b"hello\n")
        assert read_until(process, "hello\n") == "hello\n"  # echoed while the input is still open
        assert process.poll() is None
        process.close_stdin()
        assert process.wait(15) == 0
    finally:
        process.close()
    payload = os.urandom(1 << 20)
    started = time.perf_counter()
    out, _err, code = run(driver, tenant.name, "md5sum", stdin=payload)
    ms = (time.perf_counter() - started) * 1000
    assert code == 0 and out.split()[0].decode() == hashlib.md5(payload).hexdigest()
    print(f"1 MiB of input through LXD exec in {ms:.0f} ms")


def test_a_terminal_is_the_tenants_and_follows_resizes(driver: LxdDriver, tenant: Observed) -> None:
    script = "tty; stty size; while read line; do stty size; done; echo bye"
    process = driver.exec(tenant.name, ExecRequest(("sh", "-c", script), tty=True, rows=30, cols=100,
                                                   term="xterm-test"))
    try:
        assert process.stderr is None and process.stdin == process.stdout
        seen = bytearray()
        shown = read_until(process, r"30 100", seen=seen)
        assert re.search(r"^/dev/pts/\d+\r?$", shown, re.MULTILINE), shown
        process.resize(50, 120)
        # The size goes over the control socket, the lines over the data one: poke until the new size shows.
        read_until(process, r"50 120", poke=lambda: process.write(b"\n"), seen=seen)
        process.close_stdin()  # Ctrl-D: `read` sees the end of input
        read_until(process, "bye", seen=seen)
        assert process.wait(15) == 0
    finally:
        process.close()
    out, _err, _code = run(driver, tenant.name, "sh", "-c", "[ -t 0 ] && echo tty || echo pipe; echo ${TERM:-none}")
    assert out == b"pipe\nnone\n"


def test_the_command_is_the_tenants_root_and_sees_nothing_of_the_host(driver: LxdDriver, tenant: Observed) -> None:
    script = ("id -u; cat /proc/self/uid_map; hostname; ls /proc | grep -c '^[0-9]'; env | sort; "
              "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern && echo host-knob-written")
    out, _err, code = run(driver, tenant.name, "sh", "-c", script)
    lines = out.decode().splitlines()
    assert lines[0] == "0"
    inside, host_base, count = lines[1].split()
    assert (inside, count) == ("0", "65536") and int(host_base) > 0  # not the host's identity map
    assert lines[2] == tenant.name
    assert int(lines[3]) < 10  # only the container's processes (the host has hundreds)
    environment = dict(line.split("=", 1) for line in lines[4:] if "=" in line)
    assert environment["FLEET_TENANT"] == tenant.name and environment["HOME"] == "/root"
    assert not set(environment) & {"FLEET_DATA_DIR", "SUDO_USER", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST"}
    assert "host-knob-written" not in out.decode() and code != 0
    # Confined as the container's init (its payload's parent) is: capabilities, seccomp, rlimits, OOM score.
    same = "for p in 1 self; do grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/$p/status; cat /proc/$p/limits " \
           "/proc/$p/oom_score_adj; echo ---; done"
    init, mine, _rest = run(driver, tenant.name, "sh", "-c", same)[0].decode().split("---\n")
    assert init == mine and "Seccomp:\t2" in mine, (init, mine)


def test_the_command_is_held_to_the_tenants_limits(driver: LxdDriver, make_lxd_tenant: MakeTenant) -> None:
    limited = make_lxd_tenant("exec-limits", Resources(cpu="1", memory="96Mi", pids=24, disk="64Mi"))
    pids = Path(f"/sys/fs/cgroup/pids/lxc.payload.{limited.name}")
    memory = Path(f"/sys/fs/cgroup/memory/lxc.payload.{limited.name}")
    refused_before = int((pids / "pids.events").read_text().split()[1])
    # A fork loop in a child shell (busybox sh exits when a fork fails), then wait for the test's look.
    script = ("sh -c 'for i in $(seq 1 60); do sleep 1234 </dev/null >/dev/null 2>&1 & done' 2>/dev/null; "
              "echo spawned; read x; killall sleep; echo done")
    process = driver.exec(limited.name, ExecRequest(("sh", "-c", script)))
    try:
        seen = read_until(process, "spawned")
        current = int((pids / "pids.current").read_text())
        assert current <= 24, current  # the exec'd shell and its children count against the tenant's pids.max
        assert int((pids / "pids.events").read_text().split()[1]) > refused_before  # forks refused at the limit
        sleepers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid) == b"sleep\0" b"1234\0"]
        assert len(sleepers) >= 10, sleepers
        # Every one of them is in the tenant's memory cgroup, under its 96 MiB limit.
        assert set(sleepers) <= set((memory / "cgroup.procs").read_text().split())
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(96 << 20)
        process.write(b"\n")
        process.close_stdin()
        read_until(process, "done", seen=bytearray(seen.encode()))
        assert process.wait(15) == 0
    finally:
        process.close()


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "terminal"])
def test_closing_the_session_kills_the_command_and_leaves_nothing(driver: LxdDriver, tenant: Observed,
                                                                  lxd_daemon: LxdClient, tty: bool) -> None:
    run(driver, tenant.name, "true")  # warm: the first exec opens the client's connections
    fds, threads = open_fds(), lxd_exec_threads()
    process = driver.exec(tenant.name, ExecRequest(("sh", "-c", "echo started; exec sleep 1000"), tty=tty))
    assert isinstance(process, ExecProcess)
    operation = process._operation  # type: ignore[attr-defined]
    read_until(process, "started")
    writer_done = threading.Event()
    errors: list[BaseException] = []

    def flood() -> None:  # the command never reads: the writer must not hang once the session closes
        try:
            process.write(b"x" * (8 << 20))
        except OSError as error:
            errors.append(error)
        finally:
            writer_done.set()

    threading.Thread(target=flood, daemon=True).start()
    if not tty:  # (a terminal's line discipline may drop what nobody reads instead)
        assert not writer_done.wait(1.0)  # blocked: nothing reads (a deadline, not a synchronisation)
    started = time.perf_counter()
    process.close()
    ms = (time.perf_counter() - started) * 1000
    assert writer_done.wait(5), "the writer is still blocked after close"
    assert errors or tty
    print(f"close of a running LXD exec: {ms:.0f} ms")
    assert ms < 5000
    status = lxd_daemon.get(f"/1.0/operations/{operation}").metadata
    assert status["status"] != "Running" and status["metadata"]["return"] == 137, status
    sleepers, _err, _code = run(driver, tenant.name, "sh", "-c", "ps | grep -c '[s]leep 1000'")
    assert sleepers.strip() == b"0"
    wait_for(lambda: lxd_exec_threads() == threads, timeout=5, what="the exec's threads to end")
    wait_for(lambda: open_fds() <= fds, timeout=5, what=f"descriptors back to {fds} (now {open_fds()})")


def test_a_background_process_holding_the_output_keeps_the_exit_back_but_not_the_close(
    driver: LxdDriver, tenant: Observed
) -> None:
    """LXD reports the exit once the output has ended (as `lxc exec`): a background child holding stdout keeps
    the session open; closing it returns within a moment and leaves the child to the tenant."""
    fds, threads = open_fds(), lxd_exec_threads()
    process = driver.exec(tenant.name, ExecRequest(("sh", "-c", "sleep 60 & echo background")))
    try:
        read_until(process, "background")
        with pytest.raises(TimeoutError):
            process.wait(1.5)
    finally:
        started = time.perf_counter()
        process.close()
        ms = (time.perf_counter() - started) * 1000
    print(f"close with a background process holding the output: {ms:.0f} ms")
    assert ms < 2000
    assert b"sleep 60" in run(driver, tenant.name, "ps")[0]  # the tenant's now
    assert run(driver, tenant.name, "killall", "sleep")[2] == 0
    wait_for(lambda: lxd_exec_threads() == threads, timeout=5, what="the exec's threads to end")
    wait_for(lambda: open_fds() <= fds, timeout=5, what=f"descriptors back to {fds} (now {open_fds()})")


def test_exec_refuses_tenants_that_do_not_run_are_absent_or_are_not_fleets(
    driver: LxdDriver, make_lxd_tenant: MakeTenant
) -> None:
    stopped = make_lxd_tenant("exec-stopped", start=False)
    with pytest.raises(PermanentError) as refused:
        driver.exec(stopped.name, ExecRequest(("true",)))
    assert refused.value.reason == "NotRunning"
    with pytest.raises(NotFound):
        driver.exec(f"{TEST_PREFIX}exec-absent", ExecRequest(("true",)))
    name = f"{TEST_PREFIX}exec-stranger"
    driver.client.request("POST", "/1.0/instances", json={
        "name": name, "type": "container", "profiles": [], "source": {"type": "none"},
        "devices": {"root": {"type": "disk", "path": "/", "pool": driver.storage_pool}}})
    try:
        with pytest.raises(PermanentError) as not_ours:
            driver.exec(name, ExecRequest(("true",)))
        assert not_ours.value.reason == "NotOwned"
    finally:
        driver.client.request("DELETE", f"/1.0/instances/{name}")


def test_fleet_exec_runs_against_fleet_up_on_lxd_locally_and_over_the_api(fresh_lxd: LxdClient, tmp_path: Path) -> None:
    """`fleet exec` as an operator runs it, on the node (`--driver lxd`) and over the API's websocket, with
    the audit events on the tenant."""
    fleet = Fleet(data_dir=tmp_path / "data")
    fleet.data_dir.mkdir(parents=True)
    token = fleet.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    process = start_operator(fleet, *ARGS)
    name = "fl-exec"
    try:
        fleet.run("apply", "-f", "-", stdin=TENANT.replace("NAME", name).replace("TEMPLATE", "base"))
        fleet.wait_phase(name, "Running", timeout=60)

        def fleet_exec(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None,
                       ) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([FLEET, "exec", *args], input=stdin, capture_output=True, env=env or fleet.env,
                                  timeout=60)

        done = fleet_exec(name, "--driver", "lxd", "--", "sh", "-c", "hostname; id -u; echo oops >&2; exit 3")
        assert (done.returncode, done.stdout, done.stderr) == (3, f"{name}\n0\n".encode(), b"oops\n"), done
        piped = fleet_exec("-i", name, "--driver", "lxd", "--", "wc", "-c", stdin=b"x" * 100_000)
        assert (piped.returncode, piped.stdout.strip()) == (0, b"100000"), piped
        line = next(line for line in fleet.logs if "Fleet is up" in line)
        api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
        remote = fleet_exec("-i", name, "--", "sh", "-c", "cat; echo err >&2; exit 4", stdin=b"from afar\n",
                            env={**fleet.env, "FLEET_SERVER": api, "FLEET_TOKEN": token})
        assert (remote.returncode, remote.stdout, remote.stderr) == (4, b"from afar\n", b"err\n"), remote
        events = fleet.run("events", name).stdout
        for expected in ("ExecStarted", "ExecFinished", "exit code 3", "exit code 4", "token:ops ran sh -c"):
            assert expected in events, events
    finally:
        fleet.run("delete", "tenant", name, "--wait", "--timeout", "60", check=False)
        stop_operator(fleet, process)
        shutil.rmtree(Path("/var/log/lxd") / name, ignore_errors=True)  # LXD keeps an instance's log

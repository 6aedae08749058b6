"""`fleet exec` on the real driver, as an operator runs it: `fleet up` on a loop-backed btrfs pool, a real
nspawn tenant, and `fleet exec` as a subprocess (locally, and over the API's websocket). The command must
run as the tenant's payload runs (its user namespace, capabilities, seccomp filters and cgroups, so its
limits), see nothing of the host, and stop when the session does. Root only; skipped with the reason
elsewhere."""

import errno
import fcntl
import json
import os
import re
import resource
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import nspawn_cgroups, nspawn_userns
from tests.e2e.conftest import FLEET, Fleet, start_operator, stop_operator
from tests.helpers import wait_for
from tests.integration.sweep import sweep_node

DATA_DIR = Path("/var/tmp/fleet-test-exec")  # fixed, so a killed run's leftovers are found and removed
PREFIX = "fx-"
RANGE = "10.216.0.0/16"
ARGS = ("--driver", "nspawn", "--pool-size", "2Gi", "--address-range", RANGE)
NAME = "fx-shell"
TENANT = f"kind: Tenant\nmetadata: {{name: {NAME}}}\nspec: {{template: base, resources: " \
         "{memory: 64Mi, cpu: 500m, pids: 40}}\n"
CAP_SYS_ADMIN = 21


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the nspawn driver makes loop devices, cgroups, namespaces and nft rules"
    from drivers.nspawn import host_problems

    problems = host_problems()
    return "; ".join(problems) if problems else None


pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Fleet, subprocess.Popen[str], str]]:
    """`fleet up` with one Running tenant (64Mi, 40 pids) and an operator token; all removed afterwards."""
    sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE)
    fleet = Fleet(data_dir=DATA_DIR)
    fleet.data_dir.mkdir(parents=True, exist_ok=True)
    token = fleet.run("token", "create", "--name", "ops", "--role", "operator").stdout.strip()
    process = start_operator(fleet, *ARGS)
    try:
        fleet.run("apply", "-f", "-", stdin=TENANT)
        fleet.wait_phase(NAME, "Running", timeout=30)
        yield fleet, process, token
    finally:
        fleet.run("delete", "tenant", NAME, "--wait", "--timeout", "60", check=False)
        stop_operator(fleet, process)
        sweep_node(DATA_DIR, prefix=PREFIX, address_range=RANGE)


def fleet_exec(fleet: Fleet, *args: str, stdin: bytes | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    if stdin is None:
        return subprocess.run([FLEET, "exec", *args], stdin=subprocess.DEVNULL, capture_output=True,
                              env=env or fleet.env, timeout=60)
    return subprocess.run([FLEET, "exec", *args], input=stdin, capture_output=True, env=env or fleet.env, timeout=60)


def sh(fleet: Fleet, script: str) -> subprocess.CompletedProcess[bytes]:
    """A script run by the tenant's own shell (sh -c SCRIPT: the argument list reaches the tenant as is)."""
    return fleet_exec(fleet, NAME, "--", "sh", "-c", script)


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _payload_pid() -> int:
    """The tenant's httpd, the payload nspawn started (what exec must be confined like)."""
    for pid in nspawn_cgroups.detect().pids(NAME):
        try:
            if b"httpd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("the tenant's httpd is not running")


def _unlike_the_tenant() -> None:
    """In `fleet exec` before it starts: soft limits and an OOM score of its own, which its command must not
    inherit (hard limits stay: a host without CAP_SYS_RESOURCE could not raise them back)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (321, hard))
    _, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (12 << 20, hard))
    Path("/proc/self/oom_score_adj").write_text("345")


def _find_in_tenant(marker: bytes) -> int | None:
    for pid in nspawn_cgroups.detect().pids(NAME):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", marker]:
                return pid
        except OSError:
            continue
    return None


def test_output_stderr_and_the_exit_code_come_back(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, _, _ = node
    started = time.monotonic()
    done = sh(fleet, "echo out; echo err >&2; exit 3")
    took = time.monotonic() - started
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n"), done
    assert took < 5, f"fleet exec took {took:.2f} s"
    # Arguments reach the tenant as a list: nothing of them is interpreted on the way.
    odd = fleet_exec(fleet, NAME, "--", "echo", "$HOME", "a;b", "'q'", "`x`")
    assert odd.stdout == b"$HOME a;b 'q' `x`\n" and odd.returncode == 0
    missing = fleet_exec(fleet, NAME, "--", "no-such-command")
    assert missing.returncode == 127 and b"not found" in missing.stderr
    absent = fleet_exec(fleet, "fx-nobody", "--", "true")
    assert absent.returncode == 1 and absent.stderr.startswith(b"error: tenant fx-nobody not found")
    events = fleet.run("events", NAME).stdout
    assert "ExecStarted" in events and "ExecFinished" in events and "local:root ran sh -c" in events, events
    assert "exit code 3" in events


def test_stdin_is_streamed_with_dash_i(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, _, _ = node
    data = b"".join(b"line %d\n" % i for i in range(20_000))  # ~200 KB: more than a pipe holds
    script = "cat > /tmp/in; wc -l < /tmp/in; md5sum < /tmp/in; rm /tmp/in"
    done = fleet_exec(fleet, "-i", NAME, "--", "sh", "-c", script, stdin=data)
    assert done.returncode == 0, done
    import hashlib

    assert done.stdout.split() == [b"20000", hashlib.md5(data).hexdigest().encode(), b"-"], done
    without = fleet_exec(fleet, NAME, "--", "cat", stdin=b"not passed without -i")
    assert without.returncode == 0 and without.stdout == b""


def _read_until(master: int, pattern: bytes, seen: bytearray, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {pattern!r} on the terminal within {timeout} s: {bytes(seen)!r}")
        import select

        if select.select([master], [], [], remaining)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError as error:
                if error.errno != errno.EIO:
                    raise
                raise AssertionError(f"the terminal closed before {pattern!r}: {bytes(seen)!r}") from error
    end = seen.index(pattern) + len(pattern)
    found = bytes(seen[:end])
    del seen[:end]  # what came after the pattern in the same read stays for the next call
    return found


def test_a_terminal_with_dash_it_resizes_and_exits_with_the_shells_code(
    node: tuple[Fleet, subprocess.Popen[str], str],
) -> None:
    fleet, _, _ = node
    pid, master = os.forkpty()
    if pid == 0:  # the child: a terminal of 30x100, then fleet exec -it in it
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            os.execve(FLEET, [FLEET, "exec", "-it", NAME, "--", "sh"], fleet.env)
        finally:
            os._exit(127)
    seen = bytearray()
    try:
        # busybox's shell prints its prompt, then asks the terminal where the cursor is (ESC [6n): type only
        # once it asks (what is typed before is taken for the answer). Markers the shell computes, so the
        # echo of the typed line never matches them.
        def run(line: bytes, marker: bytes) -> bytes:
            os.write(master, line)
            out = _read_until(master, marker, seen)
            _read_until(master, b"\x1b[6n", seen)
            return out

        assert b"/ # " in _read_until(master, b"\x1b[6n", seen)
        screen = run(b"stty size; tty; echo $((40+2))MARK\n", b"42MARK")
        assert b"30 100" in screen and re.search(rb"^/dev/pts/\d+\r$", screen, re.M), screen  # its own devpts
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # SIGWINCH to fleet exec
        wait_for(lambda: b"40 120" in run(b"stty size; echo $((50+2))MARK\n", b"52MARK"), timeout=10,
                 interval=0.05, what="the resize to reach the tenant's shell")
        os.write(master, b"exit 7\n")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 7
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)


def test_exec_sees_and_signals_nothing_of_the_host(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, operator, _ = node
    done = sh(fleet, f"ps -o pid,args; echo count=$(ls /proc | grep -c '^[0-9]'); kill -9 {operator.pid} "
                     f"&& echo KILLED; kill -0 {os.getpid()} && echo SEEN; cat /proc/self/cgroup")
    out = done.stdout.decode()
    assert not re.search(r"^(KILLED|SEEN)$", out, re.M), out
    assert operator.poll() is None, "fleet up died"
    assert "systemd-nspawn" not in out and "fleet" not in out.replace("FLEET", ""), out
    count = int(re.search(r"count=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert count < 10, f"the exec sees {count} processes:\n{out}"
    assert re.search(r"^\s*1 \(sd-stubinit\)|^\s*1 .*stubinit", out, re.M), out  # pid 1 is the tenant's init
    cgroup_lines = [line for line in out.splitlines() if re.match(r"^\d+:", line)]
    assert cgroup_lines and all(line.endswith(":/") for line in cgroup_lines), out  # its own cgroup namespace


def test_exec_runs_as_the_payload_does_and_stops_with_its_session(
    node: tuple[Fleet, subprocess.Popen[str], str],
) -> None:
    """From the host: the exec's process is in the tenant's cgroups, runs as the tenant's uid range, with
    the payload's capabilities, no_new_privs, seccomp filters, resource limits and OOM score (the container
    init's, not those of the `fleet exec` that started it); killing `fleet exec` kills it."""
    fleet, _, _ = node
    session = subprocess.Popen([FLEET, "exec", NAME, "--", "sleep", "4321"], env=fleet.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=_unlike_the_tenant)
    try:
        pid = wait_for(lambda: _find_in_tenant(b"4321"), timeout=10, what="the exec'd sleep in the tenant")
        mine, payload = _status(pid), _status(_payload_pid())
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters",
                      "Uid", "Gid"):
            assert mine[field] == payload[field], f"{field}: exec {mine[field]!r}, payload {payload[field]!r}"
        assert not int(mine["CapEff"], 16) & (1 << CAP_SYS_ADMIN)
        assert int(mine["Uid"].split()[0]) >= nspawn_userns.FIRST_BASE
        init = int(_status(_payload_pid())["PPid"])  # the container's init, the payload's parent
        for name in ("limits", "oom_score_adj"):
            exec_value, init_value = (Path(f"/proc/{p}/{name}").read_text() for p in (pid, init))
            assert exec_value == init_value, f"{name}: exec\n{exec_value}init\n{init_value}"
            assert exec_value != Path(f"/proc/{session.pid}/{name}").read_text(), f"{name}: fleet exec's own"
        host_view = Path(f"/proc/{pid}/cgroup").read_text()
        for controller in ("memory", "pids", "cpu"):
            assert re.search(rf"^\d+:[^:]*\b{controller}\b[^:]*:/fleet/tenant-{NAME}(/|$)", host_view, re.M), host_view
        assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{_payload_pid()}/cgroup").read_text()
        for namespace in ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup"):
            assert os.readlink(f"/proc/{pid}/ns/{namespace}") == os.readlink(f"/proc/{_payload_pid()}/ns/{namespace}")
        session.send_signal(signal.SIGTERM)
        assert session.wait(timeout=10) == 128 + signal.SIGTERM
        wait_for(lambda: _find_in_tenant(b"4321") is None, timeout=10, what="the sleep to end with its session")
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    finished = fleet.run("events", NAME).stdout
    assert "killed (session closed)" in finished, finished


def test_capabilities_are_the_tenant_roots_in_its_own_user_namespace(
    node: tuple[Fleet, subprocess.Popen[str], str],
) -> None:
    fleet, _, _ = node
    host_core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    done = sh(fleet, 'echo "uidmap: $(cat /proc/self/uid_map)"; id -u; grep CapEff /proc/self/status; '
                     'v=$(cat /proc/sys/kernel/core_pattern); echo "$v" > /proc/sys/kernel/core_pattern && echo WROTE; '
                     'echo 1 > /proc/sys/vm/drop_caches && echo WROTE_DROP; '
                     'mount -o remount,rw /proc/sys && echo REMOUNTED; '
                     'mknod /tmp/sda b 8 0 && echo MKNOD; echo done')
    out = done.stdout.decode()
    assert out.rstrip().endswith("done") and "WROTE" not in out and "REMOUNTED" not in out and "MKNOD" not in out, out
    inside, outside, count = (int(v) for v in re.search(r"uidmap:\s*(\d+)\s+(\d+)\s+(\d+)", out).groups())  # type: ignore[union-attr]
    assert (inside, count) == (0, nspawn_userns.RANGE_SIZE) and outside >= nspawn_userns.FIRST_BASE, out
    assert re.search(r"^0$", out, re.M), out
    assert not int(re.search(r"CapEff:\s*([0-9a-f]+)", out).group(1), 16) & (1 << CAP_SYS_ADMIN)  # type: ignore[union-attr]
    assert Path("/proc/sys/kernel/core_pattern").read_text() == host_core_pattern


def _cgroup_file(controller: str, name: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/fleet/tenant-{NAME}/{name}")


def test_a_fork_bomb_stops_at_the_tenants_pids_limit(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, _, _ = node
    limit = int(_cgroup_file("pids", "pids.max").read_text())
    assert limit == 40
    done = sh(fleet, "for i in $(seq 1 100); do sleep 300 & done; echo spawned")
    try:
        assert b"can't fork" in done.stderr or b"Resource temporarily unavailable" in done.stderr, done
        assert int(_cgroup_file("pids", "pids.current").read_text()) <= limit
        events = _cgroup_file("pids", "pids.events").read_text()
        assert int(re.search(r"max (\d+)", events).group(1)) > 0, events  # type: ignore[union-attr]
    finally:
        # The exec'd killall needs no fork: it is moved into the full tenant and runs there itself.
        cleaned = fleet_exec(fleet, NAME, "--", "killall", "sleep")
        assert cleaned.returncode == 0, cleaned
    wait_for(lambda: int(_cgroup_file("pids", "pids.current").read_text()) < 10, what="the sleeps to end")


def test_an_allocation_stops_at_the_tenants_memory_limit(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, _, _ = node
    limit = int(_cgroup_file("memory", "memory.limit_in_bytes").read_text())
    assert limit == 64 << 20

    def oom_kills() -> int:
        text = _cgroup_file("memory", "memory.oom_control").read_text()
        return int(re.search(r"oom_kill (\d+)", text).group(1))  # type: ignore[union-attr]

    before = oom_kills()
    done = fleet_exec(fleet, NAME, "--", "awk", 'BEGIN { s = "0123456789abcdef"; while (1) s = s s }')
    assert done.returncode == 128 + signal.SIGKILL, done  # killed by the kernel at the tenant's limit
    assert oom_kills() > before
    assert int(_cgroup_file("memory", "memory.max_usage_in_bytes").read_text()) <= limit
    assert json.loads(fleet.run("get", "tenant", NAME, "-o", "json").stdout)["status"]["phase"] == "Running"


def test_over_the_api_the_websocket_gives_the_same_exec(node: tuple[Fleet, subprocess.Popen[str], str]) -> None:
    fleet, _, token = node
    line = next(line for line in fleet.logs if "Fleet is up" in line)
    api = re.search(r"API: (http://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]
    env = {**fleet.env, "FLEET_SERVER": api, "FLEET_TOKEN": token}
    done = fleet_exec(fleet, "-i", NAME, "--", "sh", "-c", "cat; echo err >&2; id -u; exit 4",
                      stdin=b"from the laptop\n", env=env)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"from the laptop\n0\n", b"err\n"), done
    events = fleet.run("events", NAME).stdout
    assert "token:ops ran sh -c" in events, events

"""`fleet exec`'s plumbing without a host: who may exec where (`exec_session`), the audit events, the CLI's
stream pump against the fake driver's exec, and the nspawn helper's host-side choices (which cgroups, which
process, which environment). The real driver's exec is proven in tests/integration/test_fleet_exec.py."""

import os
import threading
from pathlib import Path

import pytest

from drivers.exec_process import ExecRequest
from drivers.fake import FakeDriver, _Container
from drivers.lxd import LxdDriver
from drivers.nspawn_exec import cgroup_procs_files, environment
from reconciler import exec_session
from reconciler.cli.exec import pump
from reconciler.clock import ManualClock
from reconciler.controller import Controller
from specs import NotFound, PermanentError, Phase, TransientError
from state import Store
from tests.helpers import drain, tenant


def _running(store: Store, controller: Controller, clock: ManualClock, name: str = "acme") -> None:
    store.apply_tenant(tenant(name))
    controller.poll_changes()
    drain(controller, clock=clock)
    record = store.get_tenant(name)
    assert record is not None and record.status is not None and record.status.phase == Phase.RUNNING


def _run(process: object, *, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """`pump` between pipes: what a `fleet exec` with those as its stdin, stdout and stderr would print."""
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    if stdin is not None:
        os.write(in_write, stdin)
    os.close(in_write)
    code = pump(process, forward_stdin=stdin is not None, stdin_fd=in_read, out_fd=out_write,  # type: ignore[arg-type]
                err_fd=err_write)
    for fd in (in_read, out_write, err_write):
        os.close(fd)
    with os.fdopen(out_read, "rb") as out, os.fdopen(err_read, "rb") as err:
        return code, out.read(), err.read()


def test_an_exec_streams_through_the_driver_and_is_recorded_with_who_and_exit_code(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    session = exec_session.start(store, fake, "n1", "acme", ExecRequest(("cat",)), "local:alice")
    try:
        assert _run(session.process, stdin=b"hello\nworld") == (0, b"hello\nworld", b"")
    finally:
        session.process.close()
    session.finish(0)
    events = [e for e in store.events(tenant="acme") if e.action == "exec"]
    assert [(e.reason, e.message) for e in events] == [
        ("ExecStarted", "local:alice ran cat"), ("ExecFinished", "local:alice ran cat: exit code 0"),
    ]
    assert events[-1].details == {"who": ["local:alice"], "command": ["cat"], "tty": ["false"], "exit_code": ["0"]}
    assert fake.execs == [("acme", ExecRequest(("cat",)))]


def test_the_cli_pump_returns_the_commands_exit_code_and_keeps_stdout_and_stderr_apart(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    for command, expected in (
        (("echo", "a", "b"), (0, b"a b\n", b"")),
        (("stderr", "oops"), (0, b"", b"oops\n")),
        (("exit", "42"), (42, b"", b"")),
        (("nope",), (127, b"", b"fake: nope: command not found\n")),
        (("cat",), (0, b"", b"")),  # without -i the command's input is empty
    ):
        process = fake.exec("acme", ExecRequest(command))
        try:
            assert _run(process) == expected, command
        finally:
            process.close()


def test_a_long_command_is_shortened_in_its_event_but_never_joined_for_a_shell(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    command = ("echo", "x" * 1000, *("arg" for _ in range(100)))
    session = exec_session.start(store, fake, "n1", "acme", ExecRequest(command), "token:ops")
    session.process.close()
    session.finish(None)
    finished = store.events(tenant="acme")[-1]
    assert finished.reason == "ExecFinished" and "killed (session closed)" in finished.message
    assert len(finished.details["command"]) == exec_session.MAX_ARGUMENTS + 1
    assert finished.details["command"][1] == "x" * exec_session.MAX_ARGUMENT_CHARS + "..."
    assert len(finished.message) <= exec_session.MAX_MESSAGE_CHARS + 3


def test_exec_is_refused_with_a_reason_for_a_missing_foreign_or_not_running_tenant(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    with pytest.raises(NotFound, match="tenant ghost not found"):
        exec_session.start(store, fake, "n1", "ghost", ExecRequest(("true",)), "local:root")
    _running(store, controller, clock)
    with pytest.raises(PermanentError, match="on node n1, not this node \\(n2\\)") as elsewhere:
        exec_session.start(store, fake, "n2", "acme", ExecRequest(("true",)), "local:root")
    assert elsewhere.value.reason == "OtherNode"
    fake.stop("acme")  # behind the reconciler's back: the record still says Running
    with pytest.raises(PermanentError, match="no running container") as stopped:
        exec_session.start(store, fake, "n1", "acme", ExecRequest(("true",)), "local:root")
    assert stopped.value.reason == "NotRunning"
    failed = store.events(tenant="acme")[-1]
    assert (failed.reason, failed.type) == ("ExecFailed", "Warning")
    assert "local:root could not run true" in failed.message
    assert fake.execs == []


def test_a_session_over_a_cap_is_refused_naming_the_limit_and_recorded_until_one_ends(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    _running(store, controller, clock, "beta")
    slots = exec_session.ExecSlots(exec_session.ExecLimits(per_tenant=2, total=3))

    def start(name: str) -> exec_session.ExecSession:
        return exec_session.start(store, fake, "n1", name, ExecRequest(("sleep",)), "token:ops", slots=slots)

    sessions = [start("acme"), start("acme")]
    with pytest.raises(TransientError, match=r"^tenant acme already has 2 exec sessions open, the most allowed per "
                                             r"tenant \(fleet up --exec-sessions-per-tenant\): end one") as refused:
        start("acme")
    assert refused.value.reason == exec_session.TOO_MANY_SESSIONS
    recorded = store.events(tenant="acme")[-1]
    assert (recorded.reason, recorded.type, recorded.action) == ("ExecRefused", "Warning", "exec")
    assert recorded.message.startswith("token:ops may not exec now: tenant acme already has 2 exec sessions open")
    assert recorded.details["who"] == ["token:ops"] and len(fake.execs) == 2
    sessions.append(start("beta"))  # another tenant still may, up to the total
    with pytest.raises(TransientError, match=r"already has 3 exec sessions open, the most it allows \(fleet up "
                                             r"--exec-sessions\)"):
        start("beta")
    assert store.events(tenant="beta")[-1].reason == "ExecRefused"
    first = sessions.pop(0)
    first.process.close()
    first.finish(None)
    first.finish(None)  # once only: the slot is given back once
    assert (slots.open_sessions("acme"), slots.open_sessions()) == (1, 2)
    sessions.append(start("acme"))  # the slot is free again
    for session in sessions:
        session.process.close()
        session.finish(None)
    assert slots.open_sessions() == 0


def test_a_session_that_could_not_start_gives_its_slot_back(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    slots = exec_session.ExecSlots(exec_session.ExecLimits(per_tenant=1, total=1))
    fake.stop("acme")  # behind the reconciler's back: the driver cannot exec
    for _ in range(3):
        with pytest.raises(PermanentError, match="no running container"):
            exec_session.start(store, fake, "n1", "acme", ExecRequest(("true",)), "local:root", slots=slots)
    assert slots.open_sessions() == 0
    assert [e.reason for e in store.events(tenant="acme") if e.action == "exec"] == ["ExecFailed"] * 3


def test_an_exec_into_a_sleeping_tenant_wakes_it_first(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    store.set_asleep("acme", True)
    controller.poll_changes()
    drain(controller, clock=clock)
    record = store.desired("acme")
    assert record is not None and record.status is not None and record.status.phase == Phase.SLEEPING
    # Its reconciler runs meanwhile (as `fleet up` does), started once the wake is written.
    stop = threading.Event()

    def reconcile() -> None:
        while not stop.is_set():
            controller.poll_changes()
            drain(controller, clock=clock)
            stop.wait(0.01)

    worker = threading.Thread(target=reconcile)
    worker.start()
    try:
        session = exec_session.start(store, fake, "n1", "acme", ExecRequest(("true",)), "local:root")
        session.process.close()
    finally:
        stop.set()
        worker.join()
    assert fake.containers["acme"].pid is not None
    reasons = [e.reason for e in store.events(tenant="acme")]
    since_sleep = reasons[len(reasons) - 1 - reasons[::-1].index("Sleeping"):]
    assert [r for r in since_sleep if r in ("WakeRequested", "Started", "Woke", "ExecStarted")] == [
        "WakeRequested", "Started", "Woke", "ExecStarted"], reasons
    woke = next(e for e in store.events(tenant="acme") if e.reason == "WakeRequested")
    assert woke.message == "woken by local:root (fleet exec)"


def test_an_exec_into_a_tenant_that_does_not_wake_says_where_it_is_stuck(
    store: Store, controller: Controller, fake: FakeDriver, clock: ManualClock
) -> None:
    _running(store, controller, clock)
    store.set_asleep("acme", True)
    controller.poll_changes()
    drain(controller, clock=clock)
    record = store.desired("acme")
    assert record is not None
    with pytest.raises(TransientError, match=r"acme is Sleeping, not Running, after 0\.2s"):
        exec_session.ensure_awake(store, record, "local:root", timeout=0.2)  # no reconciler runs here


def test_a_terminal_of_the_fake_driver_has_the_asked_size() -> None:
    fake = FakeDriver(node="n1")
    fake.containers["acme"] = _Container(template="base@1", pid=1001)
    process = fake.exec("acme", ExecRequest(("size",), tty=True, rows=33, cols=101))
    try:
        assert os.read(process.stdout, 100) == b"33x101\r\n"
        process.resize(50, 150)
        process.write(b"\n")
        assert os.read(process.stdout, 100) == b"50x150\r\n"
        process.close_stdin()
        assert process.wait(5) == 0
    finally:
        process.close()


def test_the_lxd_driver_execs_only_into_its_own_running_containers() -> None:
    from types import SimpleNamespace

    from drivers.lxd_api import Instance
    from specs import NotFound

    def instance(name: str, status: str, **config: str) -> Instance:
        return Instance(name=name, status=status, config={"user.fleet.managed": "true", "user.fleet.role": "tenant",
                                                          **config}, devices={})

    known = {"stopped": instance("stopped", "Stopped"), "frozen": instance("frozen", "Frozen"),
             "stranger": Instance(name="stranger", status="Running", config={}, devices={})}
    driver = LxdDriver.__new__(LxdDriver)  # no daemon needed: it refuses before starting anything
    driver.node = "n1"
    driver.client = SimpleNamespace(instance=lambda name, state=True: known.get(name))  # type: ignore[assignment]
    with pytest.raises(NotFound):
        driver.exec("absent", ExecRequest(("true",)))
    for name, reason in (("stopped", "NotRunning"), ("frozen", "NotRunning"), ("stranger", "NotOwned")):
        with pytest.raises(PermanentError) as refused:
            driver.exec(name, ExecRequest(("true",)))
        assert refused.value.reason == reason, name


def test_a_request_is_an_argument_list_with_a_sane_terminal() -> None:
    for bad in ((), ("a\0b",)):
        with pytest.raises(ValueError):
            ExecRequest(bad)
    with pytest.raises(ValueError):
        ExecRequest(("sh",), tty=True, rows=0)


MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
32 25 0:28 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
33 25 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 25 0:30 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
35 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid - cgroup cgroup rw,freezer
"""
ROOT = Path("/sys/fs/cgroup")
TENANT_DIRS = [ROOT / h / "fleet" / "tenant-acme" for h in ("cpu", "memory", "pids", "systemd", "unified")]


def test_the_exec_joins_every_cgroup_of_the_containers_init_and_none_outside_the_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc" / "7"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("5:freezer:/\n4:pids:/fleet/tenant-acme\n3:memory:/fleet/tenant-acme\n"
                                 "2:cpu:/fleet/tenant-acme\n1:name=systemd:/fleet/tenant-acme/payload\n"
                                 "0::/fleet/tenant-acme/payload\n")
    real_path = Path

    def fake_path(text: str) -> Path:
        return real_path(str(text).replace("/proc/", f"{tmp_path}/proc/", 1)) if str(text).startswith("/proc/") \
            else real_path(text)

    monkeypatch.setattr("drivers.nspawn_exec.Path", fake_path)
    assert cgroup_procs_files(7, TENANT_DIRS, MOUNTINFO) == [
        "/sys/fs/cgroup/freezer/cgroup.procs",
        "/sys/fs/cgroup/pids/fleet/tenant-acme/cgroup.procs",
        "/sys/fs/cgroup/memory/fleet/tenant-acme/cgroup.procs",
        "/sys/fs/cgroup/cpu/fleet/tenant-acme/cgroup.procs",
        "/sys/fs/cgroup/systemd/fleet/tenant-acme/payload/cgroup.procs",
        "/sys/fs/cgroup/unified/fleet/tenant-acme/payload/cgroup.procs",
    ]
    (proc / "cgroup").write_text("3:memory:/fleet/tenant-other\n")
    with pytest.raises(PermanentError, match="outside the tenant's"):
        cgroup_procs_files(7, TENANT_DIRS, MOUNTINFO)


def test_the_command_gets_a_clean_environment_of_its_own() -> None:
    os.environ["FLEET_TOKEN"] = "secret-of-the-operator"
    try:
        entries = environment("acme", ExecRequest(("sh",), tty=True, term="vt100"))
    finally:
        del os.environ["FLEET_TOKEN"]
    assert not any("secret" in entry for entry in entries)
    assert "TERM=vt100" in entries and "FLEET_TENANT=acme" in entries and "HOME=/root" in entries
    assert not any(e.startswith("TERM=") for e in environment("acme", ExecRequest(("sh",))))

"""The exec websocket (`/api/v1/tenants/NAME/exec`) as a web terminal or `fleet exec --server` uses it: real
HTTP and websockets on loopback, the controller converging tenants on the fake driver, whose exec answers a
few commands in memory (`drivers/fake_exec.py`). The real driver's exec is proven in tests/integration."""

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from reconciler.exec_session import ExecLimits, ExecSlots
from reconciler.web.context import LocalExec
from state.access import Role
from tests.helpers import wait_for
from tests.web.conftest import Web


@pytest.fixture
def node_web(web: Web) -> Iterator[Web]:
    """The API of a `fleet up`: it runs this node's driver, so it can exec; with one Running tenant, acme."""
    web.context.local_exec = LocalExec("n1", web.driver)
    with web.client() as client:
        created = client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                       "spec": {"template": "base"}})
        assert created.status_code == 201, created.text
    web.wait_running("acme")
    yield web


def _socket(web: Web, name: str = "acme", role: Role | None = Role.OPERATOR) -> ClientConnection:
    headers = {"Authorization": f"Bearer {web.tokens[role]}"} if role else {}
    url = web.api.replace("http://", "ws://") + f"/api/v1/tenants/{name}/exec"
    return connect(url, additional_headers=headers, proxy=None, open_timeout=10)


def _session(socket: ClientConnection, first: dict[str, Any], *sent: bytes | dict[str, Any]) -> dict[str, Any]:
    """Send the first frame and `sent`, then read to the end: stdout, stderr, the last text frame, the close."""
    socket.send(json.dumps(first))
    for frame in sent:
        socket.send(frame if isinstance(frame, bytes) else json.dumps(frame))
    out, err, last = b"", b"", {}
    try:
        while True:
            message = socket.recv(timeout=10)
            if isinstance(message, bytes):
                if message[0] == 1:
                    out += message[1:]
                else:
                    assert message[0] == 2, message
                    err += message[1:]
            else:
                last = json.loads(message)
    except ConnectionClosed:
        pass
    close = socket.close_code
    return {"stdout": out, "stderr": err, "last": last, "close": close}


def test_an_operator_runs_a_command_and_gets_its_output_and_exit_code(node_web: Web) -> None:
    with _socket(node_web) as socket:
        seen = _session(socket, {"command": ["echo", "hello", "tenant"]})
    assert seen == {"stdout": b"hello tenant\n", "stderr": b"", "last": {"exit_code": 0}, "close": 1000}
    with _socket(node_web) as socket:
        failed = _session(socket, {"command": ["exit", "3"]})
    assert failed["last"] == {"exit_code": 3}
    with _socket(node_web) as socket:
        missing = _session(socket, {"command": ["nope"]})
    assert missing["stderr"] == b"fake: nope: command not found\n" and missing["last"] == {"exit_code": 127}
    assert [tenant for tenant, _ in node_web.driver.execs] == ["acme"] * 3


def test_stdin_frames_reach_the_command_and_stderr_comes_on_its_own_channel(node_web: Web) -> None:
    with _socket(node_web) as socket:
        seen = _session(socket, {"command": ["cat"]}, b"line one\n", b"line two", {"stdin_eof": True})
    assert seen["stdout"] == b"line one\nline two" and seen["last"] == {"exit_code": 0}
    with _socket(node_web) as socket:
        seen = _session(socket, {"command": ["stderr", "to", "err"]})
    assert seen["stdout"] == b"" and seen["stderr"] == b"to err\n"


def test_a_terminal_has_the_size_asked_for_and_follows_resizes(node_web: Web) -> None:
    with _socket(node_web) as socket:
        seen = _session(socket, {"command": ["size"], "tty": True, "rows": 30, "cols": 100},
                        {"resize": [40, 120]}, b"\n", {"stdin_eof": True})
    assert seen["stderr"] == b"" and seen["last"] == {"exit_code": 0}
    assert seen["stdout"].replace(b"\r", b"").split(b"\n")[:2] == [b"30x100", b"40x120"], seen
    _tenant, request = node_web.driver.execs[-1]
    assert request.tty and (request.rows, request.cols) == (30, 100)


def test_every_exec_is_recorded_on_the_tenant_with_who_the_command_and_the_exit_code(node_web: Web) -> None:
    with _socket(node_web) as socket:
        _session(socket, {"command": ["exit", "5"]})
    events = [e for e in node_web.store.events(tenant="acme") if e.action == "exec"]
    assert [e.reason for e in events] == ["ExecStarted", "ExecFinished"]
    finished = events[-1]
    assert finished.details["who"] == ["token:t-operator"] and finished.details["command"] == ["exit", "5"]
    assert finished.details["exit_code"] == ["5"] and finished.duration_ms is not None
    assert finished.message == "token:t-operator ran exit 5: exit code 5"


def test_a_client_that_goes_away_ends_the_command(node_web: Web) -> None:
    with _socket(node_web) as socket:
        socket.send(json.dumps({"command": ["sleep"]}))
        wait_for(lambda: any(e.reason == "ExecStarted" for e in node_web.store.events(tenant="acme")),
                 what="the exec to start")
    finished = wait_for(lambda: [e for e in node_web.store.events(tenant="acme") if e.reason == "ExecFinished"],
                        what="the exec to be recorded as finished")
    assert "killed (session closed)" in finished[0].message and finished[0].details["exit_code"] == []


@pytest.mark.parametrize(
    ("role", "status"), [(None, 401), (Role.VIEWER, 403), (Role.BILLING, 403)],
)
def test_only_operators_may_exec_by_default(node_web: Web, role: Role | None, status: int) -> None:
    with _socket(node_web, role=role) as socket:
        seen = _session(socket, {"command": ["echo", "x"]})
    assert seen["last"]["status"] == status and seen["close"] == 4000 + status and seen["stdout"] == b""
    recorded = [e for e in node_web.store.events(tenant="acme") if e.action == "exec"]
    assert node_web.driver.execs == []
    if status == 403:  # a known token refused for its role: the attempt is on the tenant's record
        assert [(e.reason, e.type) for e in recorded] == [("ExecRefused", "Warning")]
        assert recorded[0].details["who"][0].startswith("token:") and "may not exec" in recorded[0].message
    else:  # an unknown token is not (anyone could fill the table with them); the log has it
        assert recorded == []


def test_billing_tokens_may_exec_when_the_setting_allows_it(node_web: Web) -> None:
    node_web.context.config = replace(node_web.context.config, exec_billing=True)
    with _socket(node_web, role=Role.BILLING) as socket:
        assert _session(socket, {"command": ["echo", "ok"]})["stdout"] == b"ok\n"
    with _socket(node_web, role=Role.VIEWER) as socket:
        assert _session(socket, {"command": ["echo", "ok"]})["last"]["status"] == 403


def test_a_token_in_the_first_frame_is_accepted_for_browsers(node_web: Web) -> None:
    with _socket(node_web, role=None) as socket:
        seen = _session(socket, {"command": ["echo", "ok"], "token": node_web.tokens[Role.OPERATOR]})
    assert seen["stdout"] == b"ok\n"


def test_refusals_say_why_with_a_status(node_web: Web) -> None:
    with _socket(node_web, name="nobody") as socket:
        assert _session(socket, {"command": ["echo"]})["last"]["status"] == 404
    with _socket(node_web) as socket:
        bad = _session(socket, {"command": "echo hi"})
    assert bad["last"]["status"] == 422 and "never run by a shell" in bad["last"]["error"]
    node_web.driver.stop("acme")  # the container is gone though the record still says Running
    with _socket(node_web) as socket:
        stopped = _session(socket, {"command": ["echo"]})
    assert stopped["last"]["status"] == 409 and "no running container" in stopped["last"]["error"]
    failed = [e for e in node_web.store.events(tenant="acme") if e.reason == "ExecFailed"]
    assert failed and failed[0].type == "Warning"
    node_web.context.local_exec = LocalExec("another-node", node_web.driver)
    with _socket(node_web) as socket:
        elsewhere = _session(socket, {"command": ["echo"]})
    assert elsewhere["last"]["status"] == 409 and "on node n1, not this node" in elsewhere["last"]["error"]
    node_web.context.local_exec = None
    with _socket(node_web) as socket:
        apart = _session(socket, {"command": ["echo"]})
    assert apart["last"]["status"] == 409 and "runs no node's driver" in apart["last"]["error"]


def test_many_sessions_at_once_each_get_their_own_stream(node_web: Web) -> None:
    """Sessions stay open together (a reader per stream each): none waits for another to end."""
    node_web.context.exec_slots = ExecSlots(ExecLimits(per_tenant=12))
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(_socket(node_web)) for _ in range(12)]
        for index, socket in enumerate(sockets):
            socket.send(json.dumps({"command": ["cat"]}))
            socket.send(b"session %d\n" % index)
        for index, socket in enumerate(sockets):  # every one answers while all are still open
            assert socket.recv(timeout=10) == b"\x01session %d\n" % index
        for index, socket in enumerate(sockets):
            socket.send(json.dumps({"stdin_eof": True}))
            assert json.loads(socket.recv(timeout=10)) == {"exit_code": 0}, index


def test_a_session_over_the_cap_is_refused_with_429_saying_which_limit_and_what_to_do(node_web: Web) -> None:
    node_web.context.exec_slots = ExecSlots(ExecLimits(per_tenant=2, total=64))
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(_socket(node_web)) for _ in range(2)]
        for socket in sockets:
            socket.send(json.dumps({"command": ["cat"]}))
            socket.send(b"open\n")
            assert socket.recv(timeout=10) == b"\x01open\n"  # both sessions run
        with _socket(node_web) as socket:
            refused = _session(socket, {"command": ["echo", "one more"]})
        assert refused["close"] == 4429 and refused["stdout"] == b"", refused
        assert refused["last"] == {"status": 429, "error": (
            "tenant acme already has 2 exec sessions open, the most allowed per tenant (fleet up "
            "--exec-sessions-per-tenant): end one of them, or retry once one has ended")}
        recorded = [e for e in node_web.store.events(tenant="acme") if e.reason == "ExecRefused"]
        assert [(e.type, e.details["who"]) for e in recorded] == [("Warning", ["token:t-operator"])]
        assert "--exec-sessions-per-tenant" in recorded[0].message and len(node_web.driver.execs) == 2
        sockets[0].send(json.dumps({"stdin_eof": True}))
        assert json.loads(sockets[0].recv(timeout=10)) == {"exit_code": 0}
    # Sessions that ended (the command exited, or the client went away) free their slots.
    wait_for(lambda: node_web.context.exec_slots.open_sessions() == 0, what="the closed sessions' slots")
    with _socket(node_web) as socket:
        assert _session(socket, {"command": ["echo", "again"]})["stdout"] == b"again\n"


def test_the_total_cap_counts_the_sessions_into_every_tenant(node_web: Web) -> None:
    with node_web.client() as client:
        created = client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "beta"},
                                                       "spec": {"template": "base"}})
        assert created.status_code == 201, created.text
    node_web.wait_running("beta")
    node_web.context.exec_slots = ExecSlots(ExecLimits(per_tenant=8, total=1))
    with _socket(node_web) as open_one:
        open_one.send(json.dumps({"command": ["sleep"]}))
        wait_for(lambda: node_web.context.exec_slots.open_sessions() == 1, what="the first session")
        with _socket(node_web, name="beta") as socket:
            refused = _session(socket, {"command": ["echo"]})
    assert refused["last"]["status"] == 429 and "(fleet up --exec-sessions)" in refused["last"]["error"], refused
    assert [e.reason for e in node_web.store.events(tenant="beta") if e.action == "exec"] == ["ExecRefused"]

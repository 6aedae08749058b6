"""`fleet exec` with `--server`: the API's exec websocket (`reconciler/web/exec_routes.py`), from the CLI.

Loads neither pydantic nor the store (as `remote.py`). A thread receives the server's frames (stdout,
stderr, the exit code) while this one sends stdin and, with a terminal, resizes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
from typing import Any
from urllib.parse import quote, urlsplit

from reconciler.cli import terminal
from reconciler.cli.remote import Remote, RemoteError
from reconciler.documents import BadInput

CHUNK = 65536


def socket_url(server: str, name: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--server: {server!r} must be http://HOST:PORT or https://HOST:PORT")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/api/v1/tenants/{quote(name, safe='')}/exec"


def run_remote(remote: Remote, name: str, command: list[str], *, tty: bool, forward_stdin: bool, rows: int,
               cols: int, term: str, stdin_fd: int = 0, out_fd: int = 1, err_fd: int = 2) -> int:
    """The command's exit code; RemoteError (exit 1) when the server refuses or cannot be reached."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {remote.token}"} if remote.token else {}
    try:
        connection = connect(socket_url(remote.server, name), additional_headers=headers, proxy=None,
                             max_size=None, compression=None, open_timeout=30)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
        raise RemoteError(f"cannot open the exec websocket of {remote.server}: {error}") from error
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def receive() -> None:
        try:
            for message in connection:
                if isinstance(message, bytes):
                    if message[:1] == b"\x02":
                        terminal.write_all(err_fd, message[1:])
                    else:
                        terminal.write_all(out_fd, message[1:])
                    continue
                outcome.update(json.loads(message))
        except (ConnectionClosed, OSError, ValueError) as error:
            outcome.setdefault("lost", str(error))
        finally:
            done.set()

    with connection:
        connection.send(json.dumps({"command": command, "tty": tty, "rows": rows, "cols": cols, "term": term}))
        receiver = threading.Thread(target=receive, name="exec-receive", daemon=True)
        receiver.start()
        with terminal.hangups_end_the_session():
            if tty and os.isatty(stdin_fd):
                # The handler only notes the size: the input loop sends it (a send may be under way).
                resized: list[tuple[int, int]] = []
                with terminal.raw(stdin_fd), terminal.on_resize(stdin_fd, lambda r, c: resized.append((r, c))):
                    _send_input(connection, forward_stdin, stdin_fd, done, resized)
            else:
                _send_input(connection, forward_stdin, stdin_fd, done, [])
        done.wait()
    if "exit_code" in outcome:
        return int(outcome["exit_code"])
    if "error" in outcome:
        raise RemoteError(f"{outcome['error']} (HTTP {outcome.get('status', '?')} over the exec websocket)")
    raise RemoteError(f"the exec websocket closed before the command ended: {outcome.get('lost', 'no exit code')}")


def _send_input(connection: Any, forward_stdin: bool, stdin_fd: int, done: threading.Event,
                resized: list[tuple[int, int]]) -> None:
    """Stdin as binary frames until its end (then {"stdin_eof": true}) or the session's; resizes as they come."""
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        if not forward_stdin:
            connection.send(json.dumps({"stdin_eof": True}))
            return
        while not done.is_set():
            while resized:
                rows, cols = resized.pop(0)
                connection.send(json.dumps({"resize": [rows, cols]}))
            ready, _, _ = select.select([stdin_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(stdin_fd, CHUNK)
            if not data:
                connection.send(json.dumps({"stdin_eof": True}))
                return
            connection.send(data)

"""The exec websocket, `/api/v1/tenants/NAME/exec`: `fleet exec` over the API, and what a web terminal is
built on. The protocol (docs/api-reference.md, "The exec websocket"):

    client, first text frame   {"command": ["sh"], "tty": true, "rows": 24, "cols": 80, "term": "xterm",
                                "token": "..."}   (token: only when no Authorization header was sent)
    client, then               binary frames: stdin;  text {"resize": [rows, cols]};  text {"stdin_eof": true}
    server                     binary frames: one channel byte (1 stdout, 2 stderr) then the bytes;
                               last, text {"exit_code": N}, then close 1000
    server, on refusal         text {"error": "...", "status": 401|403|404|409|422|429|501|503}, then close 4000+status

Operators may exec; billing tokens only when the setting allows it (FLEET_EXEC_BILLING=1); viewers never.
Only the API of a process that runs the tenant's node's driver (`fleet up`) can exec; `fleet api` says so.
Sessions open at once are capped per tenant and in all (`WebConfig.exec_limits`); one over a cap gets 429.
A client that goes away ends the session: the command is killed.

What it must never do: start a command before the token is checked, or for a tenant bound to another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import threading
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from loguru import logger
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from drivers import ExecProcess, ExecRequest
from reconciler import exec_session
from reconciler.web.context import WebContext
from specs import Event, NotFound, PermanentError, TransientError, validate_name
from specs.errors import FleetError
from state.access import ApiToken, Role

router = APIRouter()
STDOUT, STDERR = 1, 2
FIRST_FRAME_SECONDS = 10.0
CHUNK = 65536


class Refused(Exception):
    def __init__(self, status: int, message: str, *, who: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.who = who  # a known token refused for its role: the attempt is recorded on the tenant


async def _refuse(websocket: WebSocket, status: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"error": message, "status": status}))
        await websocket.close(code=4000 + status, reason=message[:120])


async def _authenticate(context: WebContext, websocket: WebSocket, first: dict[str, Any]) -> ApiToken:
    header = websocket.headers.get("authorization", "")
    secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
    secret = secret or str(first.get("token") or "")
    if not secret:
        raise Refused(401, "a Bearer token is required (Authorization header, or \"token\" in the first frame)")
    token = context.access.cached_token(secret) or await run_in_threadpool(context.access.authenticate, secret)
    if token is None:
        raise Refused(401, "the token is unknown or revoked")
    allowed = {Role.OPERATOR} | ({Role.BILLING} if context.config.exec_billing else set())
    if token.role not in allowed:
        names = ", ".join(sorted(role.value for role in allowed))
        raise Refused(403, f"role {token.role.value} may not exec into tenants; needs {names}",
                      who=f"token:{token.name}")
    return token


def _request(first: dict[str, Any]) -> ExecRequest:
    command = first.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
        raise Refused(422, "command: must be a non-empty list of strings (it is never run by a shell)")
    tty = first.get("tty", False)
    rows, cols, term = first.get("rows", 24), first.get("cols", 80), first.get("term", "xterm-256color")
    if not isinstance(tty, bool) or not isinstance(rows, int) or not isinstance(cols, int) or not isinstance(term, str):
        raise Refused(422, "tty must be a boolean, rows and cols numbers, term a string")
    if not term.isprintable() or len(term) > 64:
        raise Refused(422, "term: must be a short printable name")
    try:
        return ExecRequest(tuple(command), tty=tty, rows=rows, cols=cols, term=term)
    except ValueError as error:
        raise Refused(422, str(error)) from error


async def _first_frame(websocket: WebSocket) -> dict[str, Any]:
    try:
        text = await asyncio.wait_for(websocket.receive_text(), FIRST_FRAME_SECONDS)
        first = json.loads(text)
    except TimeoutError as error:
        raise Refused(422, f"no first frame within {FIRST_FRAME_SECONDS:.0f} s") from error
    except (ValueError, KeyError, TypeError) as error:
        raise Refused(422, "the first frame must be a JSON object {\"command\": [...], ...}") from error
    if not isinstance(first, dict):
        raise Refused(422, "the first frame must be a JSON object {\"command\": [...], ...}")
    return first


def _record_refusal(context: WebContext, name: str, refused: Refused) -> None:
    """A token holder's exec refused for its role: a Warning on the tenant (when there is one of that name), so
    the audit trail shows attempts too. Unknown tokens are not recorded there (anyone could fill the table);
    the log has them."""
    try:
        validate_name(name)
        if context.store.desired(name) is None:
            return
        context.store.append_events([Event(tenant=name, type="Warning", reason="ExecRefused", action="exec",
                                           message=f"{refused.who} may not exec: {refused}"[:500],
                                           details={"who": [str(refused.who)]})])
    except (ValueError, FleetError) as error:
        logger.bind(tenant=name, error=str(error)).warning("Could not record a refused exec")


@router.websocket("/api/v1/tenants/{name}/exec")
async def exec_socket(websocket: WebSocket, name: str) -> None:
    context: WebContext = websocket.app.state.context
    await websocket.accept()
    try:
        first = await _first_frame(websocket)
        token = await _authenticate(context, websocket, first)
        try:
            validate_name(name)
        except ValueError as error:
            raise Refused(422, str(error)) from error
        request = _request(first)
        local = context.local_exec
        if local is None:
            raise Refused(409, "this API runs no node's driver (fleet api): exec through the API of the fleet up that "
                               "runs the tenant's node, or run fleet exec on that node")
        try:
            session = await run_in_threadpool(exec_session.start, context.store, local.driver, local.node, name,
                                              request, f"token:{token.name}", slots=context.exec_slots)
        except NotFound as error:
            raise Refused(404, str(error)) from error
        except PermanentError as error:
            raise Refused(501 if error.reason == "Unsupported" else 409, str(error)) from error
        except TransientError as error:
            raise Refused(429 if error.reason == exec_session.TOO_MANY_SESSIONS else 503, str(error)) from error
        except FleetError as error:
            raise Refused(503, str(error)) from error
    except Refused as refused:
        if refused.who is not None:
            await run_in_threadpool(_record_refusal, context, name, refused)
        await _refuse(websocket, refused.status, str(refused))
        return
    except WebSocketDisconnect:
        return
    code: int | None = None
    try:
        code = await _pump(websocket, session.process)
    finally:
        await run_in_threadpool(session.process.close)
        await run_in_threadpool(session.finish, code)
    if code is not None and websocket.client_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"exit_code": code}))
            await websocket.close(code=1000)


def _reader(process: ExecProcess, fd: int, channel: int, send: Any, stop: threading.Event) -> None:
    """Output of one stream, as frames, until its end; once the command has ended, until nothing more is
    there (a background process holding the stream is not waited for). `send` blocks until the frame is
    sent: a slow client slows the command, it never fills the server's memory."""
    prefix = bytes([channel])
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            if process.poll() is not None:
                return
            continue
        try:
            chunk = os.read(fd, CHUNK)
        except OSError as error:
            if error.errno == errno.EIO:  # a terminal whose command side is closed
                return
            raise
        if not chunk:
            return
        if not send(prefix + chunk):
            return


def _in_thread(loop: asyncio.AbstractEventLoop, function: Any, *args: Any) -> asyncio.Future[None]:
    """`function(*args)` in a thread of its own, as a future of the loop. Not the loop's shared executor: a
    reader lives as long as its session, and a few sessions would fill that pool and stall the next ones."""
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    def run() -> None:
        try:
            function(*args)
        except BaseException as error:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, error)
        else:
            loop.call_soon_threadsafe(settle, None)

    threading.Thread(target=run, name="exec-output", daemon=True).start()
    return future


async def _pump(websocket: WebSocket, process: ExecProcess) -> int | None:
    """Stream until the command ends (its exit code) or the client goes away (None: the command is killed)."""
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    stop = threading.Event()

    async def send_frame(data: bytes) -> None:
        async with lock:
            await websocket.send_bytes(data)

    def send(data: bytes) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(send_frame(data), loop).result()
        except Exception:  # the client is gone
            stop.set()
            return False
        return True

    streams = [(process.stdout, STDOUT)] + ([(process.stderr, STDERR)] if process.stderr is not None else [])
    readers = [_in_thread(loop, _reader, process, fd, channel, send, stop) for fd, channel in streams]
    inputs = asyncio.ensure_future(_inputs(websocket, process))
    try:
        outputs: asyncio.Future[list[None]] = asyncio.gather(*readers)
        waited: set[asyncio.Future[Any]] = {outputs, inputs}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if inputs in done and inputs.result() is False:  # the client left
            stop.set()
            await run_in_threadpool(process.kill)
            await outputs
            return None
        await outputs
        return await run_in_threadpool(process.wait)
    finally:
        stop.set()
        inputs.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await inputs


async def _inputs(websocket: WebSocket, process: ExecProcess) -> bool:
    """The client's frames to the command, until it closes (False). Never returns True: it is cancelled when
    the command has ended."""
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return False
        if message["type"] == "websocket.disconnect":
            return False
        data = message.get("bytes")
        if data is not None:
            try:
                await run_in_threadpool(process.write, data)
            except OSError:  # the command closed its input
                continue
            continue
        try:
            control = json.loads(message.get("text") or "")
        except ValueError:
            continue
        if not isinstance(control, dict):
            continue
        resize = control.get("resize")
        if isinstance(resize, list) and len(resize) == 2 and all(isinstance(v, int) and 0 < v <= 1000 for v in resize):
            process.resize(resize[0], resize[1])
        if control.get("stdin_eof") is True:
            process.close_stdin()

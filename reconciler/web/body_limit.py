"""A ceiling on request bodies, for every route of the API: 413 before a body over the limit is read whole.

A declared `Content-Length` over the limit is answered at once, before the application runs, so nothing
reads a byte of that body; a body without one (chunked) is counted as it streams in and refused as soon as
it passes the limit. Either way the connection is closed after the 413 (the rest of the body is not read).

Must never buffer a body itself, nor hand the application more than the limit.
"""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.web.errors import error_response
from specs import format_bytes

DEFAULT_MAX_BODY_BYTES = 1 << 20


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit; answered with 413 by the app's error
    mapping (`too_large_response`, installed by `create_app`) or here, should it escape it. An
    HTTPException, so FastAPI's own body parsing lets it through unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"is larger than the limit of {limit} bytes ({format_bytes(limit)})",
                         headers={"connection": "close"})


def too_large_response(error: BodyTooLarge) -> JSONResponse:
    return error_response(413, "body", str(error.detail), dict(error.headers or {}))


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with 413."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:  # the application answered already and read on: nothing more to say
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large_response(BodyTooLarge(self.max_bytes))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when there is none (chunked) or it is not a plain number (the server
    refuses those itself; the body is then counted)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.strip()
            return int(text) if text.isdigit() and len(text) < 20 else None
    return None


__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "BodyTooLarge", "too_large_response"]

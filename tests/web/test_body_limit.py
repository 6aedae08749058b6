"""Request bodies over the limit get 413 on every API route, before they are read whole: no client can make
the server hold an unbounded body."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reconciler.web.app import create_app
from reconciler.web.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from reconciler.web.context import MAX_BODY_ENV, WebConfig, WebContext
from state import Store
from state.access import Role
from tests.web.conftest import Web
from tests.web.raw_http import raw_request

OVER = DEFAULT_MAX_BODY_BYTES + 1


def _head(method: str, path: str, extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n{extra}\r\n"


def test_every_route_refuses_a_declared_body_over_the_limit_before_a_byte_of_it_is_sent(web: Web) -> None:
    with web.client() as client:
        document = client.get("/api/v1/openapi.json").json()
    routes = [(method.upper(), path) for path, operations in document["paths"].items() for method in operations]
    routes += [("GET", "/api/v1/openapi.json"), ("POST", "/no/such/route")]
    assert len(routes) > 10
    authorized = f"Content-Length: {OVER}\r\nAuthorization: Bearer {web.tokens[Role.OPERATOR]}\r\n"
    for method, path in routes:
        concrete = path.replace("{name}", "acme").replace("{plan_id}", "price_basic").replace("{kid}", "k1")
        status, headers, body = raw_request(web.api, _head(method, concrete, authorized))
        assert status == 413, (method, path, status, body)
        assert headers.get("connection") == "close"
        error = json.loads(body)["error"]
        assert error["field"] == "body" and f"limit of {DEFAULT_MAX_BODY_BYTES} bytes" in error["rule"], error


def test_a_chunked_body_is_counted_as_it_streams_and_refused_once_past_the_limit(web: Web) -> None:
    piece = b"x" * 65536
    count = DEFAULT_MAX_BODY_BYTES // len(piece) + 1  # the last piece crosses the limit; nothing is sent after it
    chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(count)]
    for path, extra in (("/api/v1/webhooks/billing", "Stripe-Signature: t=1,v1=00\r\n"),
                        ("/api/v1/tenants", f"Authorization: Bearer {web.tokens[Role.OPERATOR]}\r\n")):
        status, _headers, body = raw_request(web.api, _head("POST", path, "Transfer-Encoding: chunked\r\n" + extra),
                                             chunks)
        assert status == 413, (path, body)
        assert json.loads(body)["error"]["field"] == "body"
    assert web.store.list_tenants().items == [] and web.access.webhook_events() == []


def test_a_body_within_the_limit_is_served_as_before(web: Web) -> None:
    with web.client() as client:
        response = client.post("/api/v1/tenants", json={"kind": "Tenant", "metadata": {"name": "acme"},
                                                        "spec": {"template": "base"},
                                                        "padding": "x" * (DEFAULT_MAX_BODY_BYTES // 2)})
    assert response.status_code == 422 and response.json()["error"]["field"] == "padding", response.text


def test_the_limit_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_BODY_ENV, "256Ki")
    assert WebConfig.max_body_from_env() == 256 << 10
    monkeypatch.setenv(MAX_BODY_ENV, "a lot")
    with pytest.raises(ValueError, match=MAX_BODY_ENV):
        WebConfig.max_body_from_env()
    monkeypatch.delenv(MAX_BODY_ENV)
    assert WebConfig.max_body_from_env() == DEFAULT_MAX_BODY_BYTES == WebConfig().max_body_bytes == 1 << 20
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        with TestClient(create_app(WebContext(store, WebConfig(max_body_bytes=1024)))) as client:
            assert client.post("/api/v1/webhooks/billing", content=b"{" * 1025).status_code == 413
            assert client.post("/api/v1/webhooks/billing", content=iter([b"{" * 1000, b"{" * 25])).status_code == 413
            assert client.post("/api/v1/webhooks/billing", content=b"{" * 1024).status_code == 503  # no secret set
    finally:
        store.close()


class _Recorder:
    """An ASGI receive/send pair that records what the middleware asked for and answered."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        body = self.pieces.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.pieces)}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/api/v1/webhooks/billing", "headers": headers,
            "query_string": b""}


def test_a_declared_length_over_the_limit_is_answered_without_reading_or_running_the_route() -> None:
    ran: list[bool] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        ran.append(True)

    recorder = _Recorder([b"x" * 2048])
    asyncio.run(BodyLimit(route, max_bytes=1024)(_scope([(b"content-length", b"2048")]), recorder.receive,
                                                  recorder.send))
    assert ran == [] and recorder.received == 0
    assert recorder.sent[0]["status"] == 413


def test_a_streamed_body_is_cut_off_at_the_piece_that_crosses_the_limit() -> None:
    seen: list[int] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message["body"]))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    recorder = _Recorder([b"x" * 600] * 5)
    asyncio.run(BodyLimit(route, max_bytes=1024)(_scope([]), recorder.receive, recorder.send))
    assert seen == [600] and recorder.received == 2, "the route got the piece that crossed the limit"
    assert recorder.sent[0]["status"] == 413

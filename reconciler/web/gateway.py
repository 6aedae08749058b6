"""The gateway: routes `<tenant>.<base-domain>` to that tenant's container, for holders of its claim.

    claim in ?fleet_claim= (first visit)  -> verified, set as an HttpOnly cookie for this host only, and
                                             redirected to the same URL without it
    claim in the fleet_claim cookie       -> verified, then the request is proxied (bodies streamed both
                                             ways, websockets relayed)
    no claim / invalid / expired claim    -> 401        another tenant's claim -> 403
    tenant not Running                    -> 503 page that says so, with Retry-After

A plain ASGI app (no framework routing: every path belongs to the tenant). It never forwards the claim to
the container, never routes one tenant's claim to another tenant, and never writes to the store. Routes
are cached for ROUTE_CACHE_SECONDS, so a phase change is seen within that time. TLS is a front proxy's job
(see docs/billing-integration.md).
"""

import asyncio
import contextlib
import html
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from loguru import logger
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from reconciler.web.claims import ClaimRefused, ClaimSigner
from reconciler.web.context import WebContext
from reconciler.web.tenants import CLAIM_PARAMETER
from specs import Phase
from state import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE_CACHE_SECONDS = 0.5
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host"})


@dataclass(frozen=True)
class Route:
    tenant: str
    phase: Phase
    address: str | None
    port: int


class Routes:
    """Tenant name -> where its container listens, read from the store and cached briefly."""

    def __init__(self, store: Store, ttl: float = ROUTE_CACHE_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Route | None]] = {}

    def lookup(self, tenant: str) -> Route | None:
        now = time.monotonic()
        cached = self._cache.get(tenant)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        record = self.store.desired(tenant)
        route = None
        if record is not None and record.spec is not None:
            status = record.status
            phase = Phase.DELETING if record.spec.deleting else (status.phase if status else Phase.PENDING)
            ports = record.spec.network.ingress or (80,)
            route = Route(tenant, phase, status.address if status else None, ports[0])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[tenant] = (now, route)
        return route


def _page(title: str, text: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>\n").encode()


async def _respond(send: Send, status: int, title: str, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = _page(title, text)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Gateway:
    def __init__(self, context: WebContext) -> None:
        self.config = context.config
        self.signer: ClaimSigner = context.signer
        self.routes = Routes(context.store)
        self.suffix = "." + context.config.base_domain.lower()
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=5.0), follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            )
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- who is asking, for which tenant -----------------------------------------------------------
    def tenant_of(self, connection: HTTPConnection) -> str | None:
        host = (connection.headers.get("host") or "").lower().rsplit(":", 1)[0]
        if not host.endswith(self.suffix):
            return None
        name = host[: -len(self.suffix)]
        return name if name and "." not in name else None

    def _check(self, token: str, tenant: str) -> tuple[int, str] | None:
        """None when the claim lets its bearer into `tenant`, else (status, reason)."""
        try:
            self.signer.verify(token, tenant)
        except ClaimRefused as refused:
            return (403 if refused.wrong_tenant else 401), refused.rule
        return None

    def _cookie_header(self, token: str, expires: int) -> tuple[bytes, bytes]:
        # No Domain attribute: the browser sends it back to this exact host only.
        cookie = f"{CLAIM_PARAMETER}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={expires}"
        if self.config.secure_cookies:
            cookie += "; Secure"
        return b"set-cookie", cookie.encode()

    async def _admit(self, connection: HTTPConnection, send: Send | None) -> tuple[str, Route] | None:
        """The tenant and its route when the request may pass; otherwise answers it (HTTP) and returns None."""
        async def refuse(status: int, title: str, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
            if send is not None:
                await _respond(send, status, title, text, headers)

        tenant = self.tenant_of(connection)
        if tenant is None:
            await refuse(404, "Unknown host", f"This gateway serves NAME{self.suffix} only.")
            return None
        from_query = connection.query_params.get(CLAIM_PARAMETER)
        token = from_query or connection.cookies.get(CLAIM_PARAMETER)
        if not token:
            await refuse(401, "Sign in required", f"Open the link your provider gave you to reach {tenant}.")
            return None
        refused = self._check(token, tenant)
        if refused is not None:
            await refuse(refused[0], "Access refused" if refused[0] == 403 else "Sign in required", refused[1])
            return None
        if from_query and send is not None:
            # Move the claim out of the URL into a host-only cookie, then come back without it.
            rest = [(k, v) for k, v in parse_qsl(connection.url.query, keep_blank_values=True) if k != CLAIM_PARAMETER]
            location = connection.url.path + (f"?{urlencode(rest)}" if rest else "")
            claim = self.signer.verify(token, tenant)
            max_age = max(1, int(claim.expires_at - time.time()))
            await _respond(send, 303, "Signed in", "Continuing to your sandbox.",
                           [(b"location", location.encode()), self._cookie_header(token, max_age)])
            return None
        route = self.routes.lookup(tenant)
        if route is None:
            await refuse(404, "No such sandbox", f"There is no tenant {tenant}.")
            return None
        if route.phase != Phase.RUNNING or route.address is None:
            await refuse(503, "Not running yet", f"Tenant {tenant} is {route.phase.value}, not Running; "
                         "this page will work once it is.", [(b"retry-after", b"2")])
            return None
        return tenant, route

    @staticmethod
    def _forward_headers(connection: HTTPConnection, scope: Scope) -> list[tuple[str, str]]:
        headers = []
        for key, value in connection.headers.items():
            if key in HOP_BY_HOP or key.startswith("sec-websocket"):
                continue
            if key == "cookie":
                kept = SimpleCookie()
                kept.load(value)
                value = "; ".join(f"{k}={m.value}" for k, m in kept.items() if k != CLAIM_PARAMETER)
                if not value:
                    continue
            headers.append((key, value))
        client = scope.get("client")
        # The container sees the host name the customer used (its own NAME.BASE-DOMAIN).
        host = connection.headers.get("host", "")
        headers += [("host", host), ("x-forwarded-host", host), ("x-forwarded-proto", scope.get("scheme", "http"))]
        if client:
            headers.append(("x-forwarded-for", str(client[0])))
        return headers

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = HTTPConnection(scope)
        admitted = await self._admit(connection, send)
        if admitted is None:
            return
        tenant, route = admitted
        url = httpx.URL(scheme="http", host=route.address, port=route.port, path=scope["path"],
                        query=scope.get("query_string", b""))

        async def body() -> Any:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        has_body = connection.headers.get("content-length") not in (None, "0") or "transfer-encoding" in (
            connection.headers)
        request = self.client.build_request(scope["method"], url, headers=self._forward_headers(connection, scope),
                                            content=body() if has_body else None)
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError as error:
            logger.bind(tenant=tenant, error=str(error)).warning("Proxied request failed")
            await _respond(send, 502, "Sandbox did not answer", f"Tenant {tenant}'s container did not answer.")
            return
        try:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.multi_items()
                       if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as error:
            logger.bind(tenant=tenant, error=str(error)).warning("Proxied response broke off")
        finally:
            await upstream.aclose()

    # -- websockets ----------------------------------------------------------------------------------
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        admitted = await self._admit(websocket, None)
        if admitted is None:
            await websocket.close(code=4401, reason="a valid claim for this tenant is required")
            return
        tenant, route = admitted
        query = scope.get("query_string", b"").decode("latin-1")
        target = f"ws://{route.address}:{route.port}{scope['path']}" + (f"?{query}" if query else "")
        protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        try:
            upstream = await websocket_connect(target, subprotocols=protocols or None,  # type: ignore[arg-type]
                                               open_timeout=5, max_size=16 << 20)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as error:
            logger.bind(tenant=tenant, error=str(error)).warning("Proxied websocket failed")
            await websocket.close(code=1011, reason="the sandbox did not accept the websocket")
            return
        await websocket.accept(subprotocol=upstream.subprotocol)

        async def client_to_upstream() -> None:
            with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("text") is not None:
                        await upstream.send(message["text"])
                    elif message.get("bytes") is not None:
                        await upstream.send(message["bytes"])

        async def upstream_to_client() -> None:
            with contextlib.suppress(WebSocketDisconnect, ConnectionClosed, RuntimeError):
                async for data in upstream:
                    if isinstance(data, str):
                        await websocket.send_text(data)
                    else:
                        await websocket.send_bytes(data)

        tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await upstream.close()
        with contextlib.suppress(RuntimeError):
            await websocket.close()


def create_gateway(context: WebContext) -> Gateway:
    return Gateway(context)

"""The gateway: routes `<tenant>.<base-domain>` to that tenant's container, for holders of its claim.

    claim in ?fleet_claim= (first visit)  -> verified, set as an HttpOnly cookie for this host only, and
                                             redirected to the same path on this host without it
    claim in the fleet_claim cookie       -> verified, then the request is proxied (bodies streamed both
                                             ways, websockets relayed)
    no claim / invalid / expired claim    -> 401        another tenant's claim -> 403
    a claim for an earlier tenant of the name (deleted, created again) -> 401
    tenant not Running                    -> 503 page that says so, with Retry-After

One tenant's visitors cannot starve another's: at most `upstream_connections_per_tenant` requests and
websockets are proxied to one tenant at once (more wait `upstream_wait_seconds`, then 503), and a request
body must keep arriving (408 after `request_body_idle_seconds` of silence, or when not whole after
`request_body_seconds`), so a slow upload frees its tenant's connection. The store is read in worker
threads behind short caches (routes for ROUTE_CACHE_SECONDS, keys in the claim signer): the event loop
never waits on it, and a phase change is seen within that time.

Tenants share a registrable domain, so the seams between them are guarded: a websocket needs an `Origin`
equal to the tenant's own origin; a container's `Set-Cookie` loses any `Domain` attribute (so its cookies
stay on its own host); the claim is taken out of the query string and out of the Cookie header (split as
browsers send it, so a quoted value cannot carry one through) before anything is forwarded; the redirect
after sign-in is a path on the same host, never `//elsewhere`.

A plain ASGI app (no framework routing: every path belongs to the tenant). It never forwards the claim to
the container, never routes one tenant's claim to another tenant, and never writes to the store. TLS is a
front proxy's job (see docs/billing-integration.md).
"""

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import replace
from typing import Any

import httpx
from loguru import logger
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from reconciler.web.claims import ClaimRefused, ClaimSigner
from reconciler.web.context import WebConfig, WebContext
from reconciler.web.gateway_routes import Admitted, Routes, TenantBusy, TenantSlots
from reconciler.web.gateway_seams import host_only, same_host_location, split_claim, without_claim_cookie
from reconciler.web.gateway_sleep import Sleeper, Visit, WakeFailed
from reconciler.web.tenants import CLAIM_PARAMETER
from specs import Phase

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host"})
SET_BY_GATEWAY = frozenset({"x-forwarded-host", "x-forwarded-proto"})


class BodyTimedOut(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


class FellAsleep(Exception):
    """The tenant's container refused the connection because it was put to sleep after its route was read."""


class VisitorLeft(Exception):
    """The visitor disconnected while sending the request body."""


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
        self.context = context
        self.signer: ClaimSigner = context.signer
        self.routes = Routes(context.store)
        self.slots = TenantSlots(context.config.gateway.upstream_connections_per_tenant)
        # The nudge is looked up at each wake: `fleet up` sets it once its controller exists.
        self.sleeper = Sleeper(context.store, self.routes, context.config.gateway,
                               nudge=lambda name: context.nudge(name) if context.nudge else None)
        self._client: httpx.AsyncClient | None = None

    @property
    def config(self) -> WebConfig:
        return self.context.config

    @property
    def suffix(self) -> str:
        return "." + self.config.base_domain.lower()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No pool-wide cap to queue on: each tenant's share is capped by `slots` instead, so one tenant
            # holding its connections never makes another's wait.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=5.0), follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
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
                self.sleeper.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sleeper.stop()
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

    def _cookie_header(self, token: str, expires: int) -> tuple[bytes, bytes]:
        # No Domain attribute: the browser sends it back to this exact host only.
        cookie = f"{CLAIM_PARAMETER}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={expires}"
        if self.config.secure_cookies:
            cookie += "; Secure"
        return b"set-cookie", cookie.encode()

    async def _admit(self, connection: HTTPConnection, send: Send | None) -> Admitted | None:
        """The tenant, its route and the query to forward when the request may pass; otherwise answers it
        (HTTP) and returns None."""
        async def refuse(status: int, title: str, text: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
            if send is not None:
                await _respond(send, status, title, text, headers)

        tenant = self.tenant_of(connection)
        if tenant is None:
            await refuse(404, "Unknown host", f"This gateway serves NAME{self.suffix} only.")
            return None
        from_query, query = split_claim(connection.scope.get("query_string", b"").decode("latin-1"))
        token = from_query or connection.cookies.get(CLAIM_PARAMETER)
        if not token:
            await refuse(401, "Sign in required", f"Open the link your provider gave you to reach {tenant}.")
            return None
        try:
            claim = await self.signer.verify_async(token, tenant)  # before the store is asked about the host
            route = await self.routes.lookup(tenant)
            if route is not None:
                claim.check_identity(route.created_revision)
        except ClaimRefused as refused:
            status = 403 if refused.wrong_tenant else 401
            await refuse(status, "Access refused" if status == 403 else "Sign in required", refused.rule)
            return None
        if route is None:
            await refuse(404, "No such sandbox", f"There is no tenant {tenant}.")
            return None
        if from_query and send is not None:
            # Move the claim out of the URL into a host-only cookie, then come back to this host without it.
            raw_path = connection.scope.get("raw_path") or connection.scope["path"].encode()
            max_age = max(1, int(claim.expires_at - time.time()))
            await _respond(send, 303, "Signed in", "Continuing to your sandbox.",
                           [(b"location", same_host_location(raw_path, query).encode("latin-1")),
                            self._cookie_header(token, max_age)])
            return None
        if self.sleeper.needs_wake(route):
            return Admitted(tenant, route, query, wake=True)
        if route.phase != Phase.RUNNING or route.address is None:
            await refuse(503, "Not running yet", f"Tenant {tenant} is {route.phase.value}, not Running; "
                         "this page will work once it is.", [(b"retry-after", b"2")])
            return None
        return Admitted(tenant, route, query)

    def _forward_headers(self, connection: HTTPConnection, scope: Scope) -> list[tuple[str, str]]:
        headers = []
        for key, value in connection.headers.items():
            if key in HOP_BY_HOP or key in SET_BY_GATEWAY or key.startswith("sec-websocket"):
                continue
            if key == "cookie":
                value = without_claim_cookie(value)
                if not value:
                    continue
            headers.append((key, value))
        client = scope.get("client")
        # The container sees the host name and scheme the customer used (its own NAME.BASE-DOMAIN).
        host = connection.headers.get("host", "")
        headers += [("host", host), ("x-forwarded-host", host), ("x-forwarded-proto", self.config.public_scheme)]
        if client:
            headers.append(("x-forwarded-for", str(client[0])))
        return headers

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = HTTPConnection(scope)
        tenant = self.tenant_of(connection)
        with self.sleeper.visiting(tenant) if tenant else contextlib.nullcontext(Visit()) as visit:
            await self._http_for(connection, scope, receive, send, visit)

    async def _awake(self, admitted: Admitted) -> Admitted | str:
        """`admitted` with its woken route, or why the tenant could not be woken (for a 503)."""
        if not admitted.wake:
            return admitted
        try:
            return replace(admitted, route=await self.sleeper.wake(admitted.tenant), wake=False)
        except TenantBusy:
            return f"Tenant {admitted.tenant} is waking up and as many requests as it may hold already wait."
        except WakeFailed as failed:
            logger.bind(tenant=admitted.tenant, error=str(failed)).warning("Could not wake a tenant")
            return str(failed)

    async def _http_for(self, connection: HTTPConnection, scope: Scope, receive: Receive, send: Send,
                        visit: Visit) -> None:
        admitted = await self._admit(connection, send)
        if admitted is None:
            return
        visit.admit()
        awake = await self._awake(admitted)
        if isinstance(awake, str):
            await _respond(send, 503, "Waking up", awake + " Try again shortly.", [(b"retry-after", b"2")])
            return
        admitted = awake
        limits = self.config.gateway
        try:
            async with self.slots.hold(admitted.tenant, limits.upstream_wait_seconds):
                try:
                    await self._proxy(connection, scope, receive, send, admitted, asleep_since_read=True)
                except FellAsleep:
                    # Put to sleep since its route was read (by `fleet sleep`, another gateway): nothing was
                    # sent yet, so the request is held for the wake like any other.
                    awake = await self._awake(replace(admitted, wake=True))
                    if isinstance(awake, str):
                        await _respond(send, 503, "Waking up", awake + " Try again shortly.",
                                       [(b"retry-after", b"2")])
                        return
                    await self._proxy(connection, scope, receive, send, awake)
        except TenantBusy:
            logger.bind(tenant=admitted.tenant, limit=self.slots.limit).warning("Refused a request: tenant busy")
            await _respond(send, 503, "Too busy", f"Tenant {admitted.tenant} is answering as many requests as it "
                           "may at once; try again shortly.", [(b"retry-after", b"1")])

    def _request_body(self, receive: Receive) -> AsyncIterator[bytes]:
        """The visitor's body, chunk by chunk, under the idle and whole-body deadlines."""
        limits = self.config.gateway

        async def body() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limits.request_body_seconds
            while True:
                remaining = deadline - loop.time()
                idle = min(limits.request_body_idle_seconds, remaining)
                try:
                    if idle <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(idle):
                        message = await receive()
                except TimeoutError as error:
                    if idle < limits.request_body_idle_seconds:
                        raise BodyTimedOut(f"the request body was not whole after {limits.request_body_seconds:g}s"
                                           ) from error
                    raise BodyTimedOut(f"the request body sent nothing for {limits.request_body_idle_seconds:g}s"
                                       ) from error
                if message["type"] == "http.disconnect":
                    raise VisitorLeft
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        return body()

    async def _proxy(self, connection: HTTPConnection, scope: Scope, receive: Receive, send: Send,
                     admitted: Admitted, *, asleep_since_read: bool = False) -> None:
        """`asleep_since_read`: when the container refuses the connection, read the route again and raise
        FellAsleep if the tenant was put to sleep meanwhile (the cached route is up to 0.5 s old)."""
        tenant, route = admitted.tenant, admitted.route
        url = httpx.URL(scheme="http", host=route.address, port=route.port, path=scope["path"])
        if admitted.query:  # an empty one would be forwarded as a bare "?"
            url = url.copy_with(query=admitted.query.encode("latin-1"))
        has_body = connection.headers.get("content-length") not in (None, "0") or "transfer-encoding" in (
            connection.headers)
        request = self.client.build_request(scope["method"], url, headers=self._forward_headers(connection, scope),
                                            content=self._request_body(receive) if has_body else None)
        try:
            upstream = await self.client.send(request, stream=True)
        except BodyTimedOut as timed_out:
            logger.bind(tenant=tenant, rule=timed_out.rule).warning("Cut off a slow request body")
            await _respond(send, 408, "Request body too slow", timed_out.rule.capitalize() + ".",
                           [(b"connection", b"close")])
            return
        except VisitorLeft:
            return
        except httpx.ConnectError as error:
            if asleep_since_read:
                fresh = await asyncio.to_thread(self.routes.read, tenant)
                if fresh is not None and self.sleeper.needs_wake(fresh):
                    raise FellAsleep(tenant) from error
            logger.bind(tenant=tenant, error=str(error)).warning("Proxied request failed")
            await _respond(send, 502, "Sandbox did not answer", f"Tenant {tenant}'s container did not answer.")
            return
        except httpx.HTTPError as error:
            logger.bind(tenant=tenant, error=str(error)).warning("Proxied request failed")
            await _respond(send, 502, "Sandbox did not answer", f"Tenant {tenant}'s container did not answer.")
            return
        try:
            headers = [(k.encode("latin-1"), (host_only(v) if k.lower() == "set-cookie" else v).encode("latin-1"))
                       for k, v in upstream.headers.multi_items() if k.lower() not in HOP_BY_HOP]
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
        tenant = self.tenant_of(websocket)
        with self.sleeper.visiting(tenant) if tenant else contextlib.nullcontext(Visit()) as visit:
            await self._websocket_for(websocket, tenant, visit)

    async def _websocket_for(self, websocket: WebSocket, tenant: str | None, visit: Visit) -> None:
        origin = websocket.headers.get("origin", "")
        if tenant is not None and origin.lower() != self.config.public.origin(tenant).lower():
            # A page of a sibling tenant (same registrable domain) must not open a socket with our cookie.
            logger.bind(tenant=tenant, origin=origin).warning("Refused a websocket from another origin")
            await websocket.close(code=4403, reason="the websocket must come from the tenant's own origin")
            return
        admitted = await self._admit(websocket, None)
        if admitted is None:
            await websocket.close(code=4401, reason="a valid claim for this tenant is required")
            return
        visit.admit()
        awake = await self._awake(admitted)
        if isinstance(awake, str):
            await websocket.close(code=1013, reason="the sandbox is waking up; try again shortly")
            return
        admitted = awake
        try:
            async with self.slots.hold(admitted.tenant, self.config.gateway.upstream_wait_seconds):
                await self._relay(websocket, admitted)
        except TenantBusy:
            logger.bind(tenant=admitted.tenant, limit=self.slots.limit).warning("Refused a websocket: tenant busy")
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=1013, reason="the sandbox is busy; try again shortly")

    async def _relay(self, websocket: WebSocket, admitted: Admitted) -> None:
        tenant, route = admitted.tenant, admitted.route
        path = websocket.scope["path"]
        target = f"ws://{route.address}:{route.port}{path}" + (f"?{admitted.query}" if admitted.query else "")
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

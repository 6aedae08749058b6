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
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes, unquote_plus

import httpx
from loguru import logger
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from reconciler.web.claims import ClaimRefused, ClaimSigner
from reconciler.web.context import WebConfig, WebContext
from reconciler.web.tenants import CLAIM_PARAMETER
from specs import Phase
from state import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE_CACHE_SECONDS = 0.5
ROUTE_CACHE_SIZE = 10_000
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host"})
SET_BY_GATEWAY = frozenset({"x-forwarded-host", "x-forwarded-proto"})
# Characters a redirect's path keeps as they are; anything else (a backslash, a control character) is
# percent-encoded, so no browser reads the Location as another host.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class Route:
    tenant: str
    phase: Phase
    address: str | None
    port: int
    created_revision: int | None  # which tenant of this name (claims are bound to it)


@dataclass(frozen=True)
class Admitted:
    tenant: str
    route: Route
    query: str  # the query string to forward: the claim taken out


class TenantBusy(Exception):
    """All of a tenant's upstream connections stayed in use while this request waited."""


class BodyTimedOut(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


class VisitorLeft(Exception):
    """The visitor disconnected while sending the request body."""


# -- what crosses the gateway: pure functions over header and query text ------------------------------
def _names_claim(pair: str) -> bool:
    return unquote_plus(pair.split("=", 1)[0]).strip().casefold() == CLAIM_PARAMETER


def split_claim(query: str) -> tuple[str | None, str]:
    """(the claim in a raw query string, the query string without it). Every `fleet_claim` parameter goes,
    however a server might split or decode it (`&` or `;`, `%5F`, `+`); the others are kept as sent."""
    claim, kept = None, []
    for piece in query.split("&"):
        pairs = piece.split(";")
        if not any(_names_claim(pair) for pair in pairs):
            if piece:
                kept.append(piece)
            continue
        for pair in pairs:
            name, _, value = pair.partition("=")
            if _names_claim(name) and value:
                claim = unquote_plus(value)
    return claim, "&".join(kept)


def without_claim_cookie(header: str) -> str:
    """A Cookie header without any `fleet_claim`, split as browsers send it: `;`-separated `name=value`
    pairs and no quoting, so `a="x; fleet_claim=..."` loses its second half rather than smuggling it."""
    return ";".join(pair for pair in header.split(";") if not _names_claim(pair)).strip()


def host_only(set_cookie: str) -> str:
    """A container's Set-Cookie without a `Domain` attribute: the cookie stays on the tenant's own host
    (split as browsers parse it: the name=value pair, then `;`-separated attributes)."""
    pair, *attributes = set_cookie.split(";")
    return ";".join([pair, *(a for a in attributes if a.split("=", 1)[0].strip().casefold() != "domain")])


def same_host_location(raw_path: bytes, query: str) -> str:
    """A path on this host to redirect to: percent-encoded as sent, one leading slash (`//evil.example/x`
    becomes `/evil.example/x`, which no browser reads as another host)."""
    path = "/" + quote_from_bytes(raw_path, safe=_PATH_SAFE).lstrip("/")
    return path + (f"?{query}" if query else "")


# -- where a tenant's container listens -------------------------------------------------------------
class Routes:
    """Tenant name -> where its container listens, read from the store in a worker thread (one read per
    tenant at a time, however many requests wait for it) and cached briefly."""

    def __init__(self, store: Store, ttl: float = ROUTE_CACHE_SECONDS, size: int = ROUTE_CACHE_SIZE) -> None:
        self.store = store
        self.ttl = ttl
        self.size = size
        self._cache: OrderedDict[str, tuple[float, Route | None]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[Route | None]] = {}

    def read(self, tenant: str) -> Route | None:
        """From the store (blocking)."""
        record = self.store.desired(tenant)
        if record is None or record.spec is None:
            return None
        status = record.status
        phase = Phase.DELETING if record.spec.deleting else (status.phase if status else Phase.PENDING)
        ports = record.spec.network.ingress or (80,)
        return Route(tenant, phase, status.address if status else None, ports[0], record.created_revision)

    async def lookup(self, tenant: str) -> Route | None:
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        reading = self._reading.get(tenant)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(self.read, tenant))
            self._reading[tenant] = reading
            reading.add_done_callback(lambda done: self._remember(tenant, done))
        return await asyncio.shield(reading)

    def _remember(self, tenant: str, done: "asyncio.Future[Route | None]") -> None:
        self._reading.pop(tenant, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._cache[tenant] = (time.monotonic(), done.result())
        self._cache.move_to_end(tenant)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)


@dataclass
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting
    held: int = 0


class TenantSlots:
    """At most `limit` upstream connections per tenant at once; a request beyond waits for a free one.
    Only tenants with requests under way or waiting have an entry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, _Gate] = {}

    def in_use(self, tenant: str) -> int:
        gate = self._gates.get(tenant)
        return 0 if gate is None else gate.held

    def visitors(self, tenant: str) -> int:
        """Requests holding one of the tenant's connections or waiting for one."""
        gate = self._gates.get(tenant)
        return 0 if gate is None else gate.users

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, wait_seconds: float) -> AsyncIterator[None]:
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = _Gate(asyncio.Semaphore(self.limit))
        gate.users += 1
        try:
            try:
                async with asyncio.timeout(wait_seconds):
                    await gate.semaphore.acquire()
            except TimeoutError as error:
                raise TenantBusy(tenant) from error
            gate.held += 1
            try:
                yield
            finally:
                gate.held -= 1
                gate.semaphore.release()
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[tenant]


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
        admitted = await self._admit(connection, send)
        if admitted is None:
            return
        limits = self.config.gateway
        try:
            async with self.slots.hold(admitted.tenant, limits.upstream_wait_seconds):
                await self._proxy(connection, scope, receive, send, admitted)
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
                     admitted: Admitted) -> None:
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

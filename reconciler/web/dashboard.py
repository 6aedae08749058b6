"""The operators' dashboard: server-rendered pages under `/dashboard/` (`/` leads there), live through
the watch stream, for anyone holding a token that may read (a `viewer` token is enough).

Signing in posts the token in a form; it comes back as an HttpOnly, SameSite=Strict cookie scoped to
`/dashboard` (never in a URL, never readable by the page's script), which only these read-only routes
accept: the API itself still wants `Authorization: Bearer`, so the cookie can never write anything.
The page's numbers are aggregated by the database (`state.dashboard`) and its lists are limited, so the
first paint costs the same with ten thousand tenants as with ten. What it must never do: write to the
store, or show a value unescaped (all markup is made in `dashboard_html`).
"""

from functools import partial
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from loguru import logger

from reconciler.web import dashboard_html as html
from reconciler.web.auth import READ
from reconciler.web.context import WebContext
from reconciler.web.dashboard_assets import SCRIPT, STYLESHEET
from reconciler.web.dashboard_ledger import PlanLedger, plan_ledger
from reconciler.web.fleet_routes import Node, NodeResources, nodes_of
from reconciler.web.watch import event_stream
from specs import FleetError, Phase
from specs.names import NAME_PATTERN
from state.access import ApiToken
from state.aggregates import Aggregates
from state.dashboard import DashboardReads, FleetCounts, TenantLines
from state.ledger import NodeSettings
from state.nodes import Usage

COOKIE = "fleet_dashboard"
COOKIE_SECONDS = 8 * 3600
NOT_READY_SHOWN = 20
EVENTS_SHOWN = 15
TENANT_EVENTS_SHOWN = 100
SEARCH_PAGE = 50
SECURITY_HEADERS = {
    # Scripts and styles from this origin only (no inline code at all), nothing framed, nothing sent away.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # nothing to other sites (a tenant's URL), the Origin header to this one
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _html(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})


async def _signed_in(request: Request) -> ApiToken | None:
    """The live token of the dashboard cookie, if its role may read; None otherwise."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    access = _context(request).access
    token = access.cached_token(secret) or await run_in_threadpool(access.authenticate, secret)
    return token if token is not None and token.role in READ else None


def _same_origin(request: Request) -> bool:
    """A form post from a page of this server, by what the browser says (Sec-Fetch-Site, else Origin), or
    from a client that says nothing (curl): a page elsewhere cannot sign a browser in with its token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def _every_node(context: WebContext, counts: FleetCounts) -> list[Node]:
    """The nodes the API lists, and any other node that tenants are bound to (an agent that never
    registered, or a node removed from the table): its tenants are counted somewhere, so it shows."""
    usage = {name: Usage(t.cpu_millicores, t.memory_bytes, t.disk_bytes, t.tenants)
             for name, t in counts.nodes.items()}
    nodes = nodes_of(context, usage)
    listed = {node.name for node in nodes}
    unlisted = [
        Node(name=name, driver="", registered=False, ready=False, cordoned=False,
             not_ready_reason="no agent has registered this node", tenants=used.tenants,
             used=NodeResources(cpu_millicores=used.cpu_millicores, memory_bytes=used.memory_bytes,
                                disk_bytes=used.disk_bytes, tenants=used.tenants))
        for name, used in usage.items() if name not in listed
    ]
    return sorted([*nodes, *unlisted], key=lambda node: node.name)


def _plans(context: WebContext, reads: DashboardReads, counts: FleetCounts, prices: dict[str, int]) -> PlanLedger:
    """The ledger per plan, with the usage of the node whose driver runs in this process (`fleet up`) if
    one does: read from the host (at most `ledger_usage`'s age ago), never stored. Other nodes' usage is
    their agents' to serve."""
    tallies = reads.plan_tallies()
    node_tenants = {name: tally.tenants for name, tally in counts.nodes.items()}
    local = context.usage
    if local is None:
        return PlanLedger(plan_ledger(tallies, node_tenants, prices, None, {}))
    try:
        usage = context.ledger_usage.read(lambda: local.read(None))
    except FleetError as error:
        logger.bind(node=local.node).warning("Could not read tenants' usage for the ledger: {}", error)
        return PlanLedger(plan_ledger(tallies, node_tenants, prices, None, {}), usage_error=str(error))
    plans = Aggregates(context.store).plans_by_tenant()
    return PlanLedger(plan_ledger(tallies, node_tenants, prices, usage, plans), usage_nodes=(local.node,))


def read_view(context: WebContext) -> html.DashboardView:
    """What the live panels show. The revision is taken first, so a change made while the rest is read
    arrives on the stream afterwards (at worst one refresh too many, never one too few)."""
    store = context.store
    revision = store.current_revision()
    reads = DashboardReads(store.session)
    counts = reads.counts()
    nodes = _every_node(context, counts)
    # Not Ready: every phase but Running, and the Running tenants of registered nodes that stopped heartbeating.
    lost = sum(counts.nodes[n.name].running for n in nodes if n.registered and not n.ready and n.name in counts.nodes)
    prices = NodeSettings(store.session).monthly_prices()
    return html.DashboardView(
        revision=revision,
        nodes=nodes,
        counts=counts,
        not_ready=reads.not_ready(limit=NOT_READY_SHOWN, total=counts.tenants - counts.phases.get("Running", 0)
                                  - counts.phases.get("Sleeping", 0) + lost),
        events=store.events(limit=EVENTS_SHOWN),
        monthly_prices=prices,
        plans=_plans(context, reads, counts, prices),
    )


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(f"{html.PREFIX}/", status_code=303)


@router.get(html.PREFIX)
def dashboard_without_slash() -> RedirectResponse:
    return RedirectResponse(f"{html.PREFIX}/", status_code=303)


@router.get(f"{html.PREFIX}/")
async def dashboard(request: Request) -> Response:
    if await _signed_in(request) is None:
        return _html(html.login_page())
    view = await run_in_threadpool(read_view, _context(request))
    return _html(html.dashboard_page(view))


@router.post(f"{html.PREFIX}/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _html(html.login_page("Sign in from this dashboard's own page."), 403)
    try:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than a sign-in has
        return _html(html.login_page("Sign in with the form."), 400)
    secret = (fields.get("token") or [""])[0].strip()
    access = _context(request).access
    token = await run_in_threadpool(access.authenticate, secret) if secret else None
    if token is None or token.role not in READ:
        return _html(html.login_page("That token is unknown or revoked."), 401)
    logger.bind(token=token.name, role=token.role.value).info("Signed in to the dashboard")
    response = RedirectResponse(f"{html.PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, secret, max_age=COOKIE_SECONDS, path=html.PREFIX, httponly=True,
                        samesite="strict", secure=_context(request).config.secure_cookies)
    return response


@router.post(f"{html.PREFIX}/logout")
def logout() -> Response:
    response = RedirectResponse(f"{html.PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path=html.PREFIX, httponly=True, samesite="strict")
    return response


@router.get(f"{html.PREFIX}/panels")
async def live_panels(request: Request) -> Response:
    if await _signed_in(request) is None:
        return _html(html.login_page(), 401)
    view = await run_in_threadpool(read_view, _context(request))
    return _html(html.panels(view), headers={"X-Fleet-Revision": str(view.revision)})


@router.get(f"{html.PREFIX}/watch")
async def watch(
    request: Request,
    revision: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^[0-9]{0,18}$")] = None,
) -> Response:
    if await _signed_in(request) is None:
        return Response(status_code=401, headers=SECURITY_HEADERS)
    # A reconnecting EventSource sends the last id it saw, which is newer than the page's revision.
    start = int(last_event_id) if last_event_id else revision or 0
    stream: StreamingResponse = await event_stream(_context(request), request, start)
    return stream


@router.get(f"{html.PREFIX}/search")
async def search(
    request: Request,
    q: Annotated[str, Query(max_length=63)] = "",
    phase: Phase | None = None,
    after: Annotated[str, Query(max_length=63)] = "",
) -> Response:
    if await _signed_in(request) is None:
        return _html(html.login_page(), 401)
    query = q.strip()
    reads = DashboardReads(_context(request).store.session)
    phase_name = phase.value if phase else None
    found = TenantLines([], 0)
    if query or phase_name:
        found = await run_in_threadpool(
            partial(reads.search, query, phase=phase_name, after=after, limit=SEARCH_PAGE))
    return _html(html.search_page(query, phase_name, after, found, SEARCH_PAGE))


@router.get(f"{html.PREFIX}/tenants/{{name}}")
async def tenant(
    request: Request, name: Annotated[str, Path(pattern=NAME_PATTERN, max_length=63)],
    part: Annotated[Literal["page", "body"], Query(description="body: only what the page redraws")] = "page",
) -> Response:
    if await _signed_in(request) is None:
        return _html(html.login_page(), 401)
    store = _context(request).store

    def read() -> Response:
        revision = store.current_revision()  # first: a change made meanwhile comes on the stream after it
        current = store.get_tenant(name)
        events = store.events(tenant=name, limit=TENANT_EVENTS_SHOWN)
        if current is None and not events:
            return _html(html.not_found_page(f"No tenant {name}, and no events of one."), 404)
        if part == "body":
            return _html(html.tenant_body(current, events), headers={"X-Fleet-Revision": str(revision)})
        return _html(html.tenant_page(name, current, events, revision))

    return await run_in_threadpool(read)


_ASSETS = {"dashboard.css": (STYLESHEET, "text/css"), "dashboard.js": (SCRIPT, "text/javascript")}


@router.get(f"{html.ASSETS}/{{file}}")
def asset(file: str) -> Response:
    found = _ASSETS.get(file)
    if found is None:
        return Response(status_code=404)
    content, media_type = found
    return Response(content, media_type=f"{media_type}; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


__all__ = ["COOKIE", "read_view", "router"]

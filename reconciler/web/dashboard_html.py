"""The dashboard's HTML: pure functions from what the dashboard read to markup, no I/O.

Why apart from the routes: every value that reaches the page passes through `text()` here (HTML-escaped,
quotes included), so whether the page is safe is decided in one short module. Tenant names, reasons,
messages, labels and event details are hostile input (a tenant's own code can make a driver error say
anything): none is ever put into markup unescaped, into a URL unquoted, or into a script. The page carries
no inline script or style at all (its Content-Security-Policy refuses them), so even a missed escape
could not run code. What it must never do: read the store, or render an unbounded list.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from urllib.parse import quote, urlencode

from reconciler.web.dashboard_ledger import PlanLedger, PlanLine
from reconciler.web.fleet_routes import Node
from specs import Event, Tenant
from state.dashboard import FleetCounts, TenantLine, TenantLines

PREFIX = "/dashboard"
ASSETS = f"{PREFIX}/assets"
_LIVE_STATUS = '<p class="live-status">Updates: <span id="live-status">connecting</span></p>'
PHASE_ORDER = ("Running", "Sleeping", "Pending", "Scheduled", "Provisioning", "Paused", "Deleting", "Failed")


def text(value: object) -> str:
    """`value` as HTML text or attribute value: every markup character escaped."""
    return escape(str(value), quote=True)


def tenant_href(name: str) -> str:
    return f"{PREFIX}/tenants/{quote(name, safe='')}"


def _tenant_link(name: str) -> str:
    return f'<a href="{text(tenant_href(name))}">{text(name)}</a>'


def human_bytes(value: int) -> str:
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def human_cpu(millicores: int) -> str:
    return f"{millicores / 1000:g} CPU"


def money(cents: int | float) -> str:
    return f"{cents / 100:,.2f}"


def _time(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _table(headers: Sequence[str], rows: Iterable[str], *, css: str = "") -> str:
    """`rows` are whole `<tr>` elements already made of escaped cells."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    return f'<table class="{text(css)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cells(*cells: str) -> str:
    """A row of cells already escaped (or built from escaped parts)."""
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


@dataclass(frozen=True)
class DashboardView:
    """What the dashboard's live panels show, read at `revision`."""

    revision: int
    nodes: list[Node]
    counts: FleetCounts
    not_ready: TenantLines
    events: list[Event]
    monthly_prices: dict[str, int] = field(default_factory=dict)  # cents, by node
    plans: PlanLedger = field(default_factory=PlanLedger)  # the ledger per billing plan


# -- whole pages -------------------------------------------------------------------------------------------
def page(title: str, body: str, *, signed_in: bool = True, search: str = "") -> str:
    """A whole page around `body` (markup built here from escaped parts)."""
    header = ""
    if signed_in:
        header = (
            f'<header><a class="brand" href="{PREFIX}/">Fleet</a>'
            f'<form class="search" method="get" action="{PREFIX}/search" role="search">'
            f'<input type="search" name="q" maxlength="63" placeholder="Find a tenant" value="{text(search)}" '
            f'aria-label="Find a tenant"><button type="submit">Search</button></form>'
            f'<form class="logout" method="post" action="{PREFIX}/logout"><button type="submit">Log out</button></form>'
            "</header>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)} · Fleet</title>"
        f'<link rel="stylesheet" href="{ASSETS}/dashboard.css">'
        f'<script src="{ASSETS}/dashboard.js" defer></script>'
        f"</head><body>{header}<main>{body}</main></body></html>"
    )


def login_page(error: str = "") -> str:
    problem = f'<p class="error" role="alert">{text(error)}</p>' if error else ""
    body = (
        '<section class="login"><h1>Fleet dashboard</h1>'
        "<p>Sign in with an API token: a <code>viewer</code> token is enough "
        "(<code>fleet token create NAME --role viewer</code>).</p>"
        f"{problem}"
        f'<form method="post" action="{PREFIX}/login">'
        '<label for="token">Token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required maxlength="200">'
        '<button type="submit">Sign in</button></form></section>'
    )
    return page("Sign in", body, signed_in=False)


def dashboard_page(view: DashboardView) -> str:
    body = (
        f'<div id="live" data-live-url="{PREFIX}/panels" data-revision="{view.revision}" data-every="15000">'
        f"{panels(view)}</div>{_LIVE_STATUS}"
    )
    return page("Dashboard", body)


def not_found_page(what: str) -> str:
    return page("Not found", f'<section><h1>Not found</h1><p>{text(what)}</p></section>')


# -- the live panels -----------------------------------------------------------------------------------
def panels(view: DashboardView) -> str:
    """Everything that changes as the fleet does: replaced whole when the watch stream says so."""
    return "".join((
        _totals(view), _nodes(view), _sharing(view), _phases(view.counts), _not_ready(view.not_ready),
        _ledger(view), _events(view.events),
    ))


def _totals(view: DashboardView) -> str:
    bound = [node for node in view.nodes if node.tenants or node.registered]
    terms = " + ".join(
        f'<span class="term" data-node="{text(n.name)}">{text(n.name)} '
        f'<b class="count">{n.tenants}</b></span>' for n in bound
    ) or "no nodes yet"
    unbound = view.counts.unbound
    extra = f' + <span class="term unbound">unbound <b class="count">{unbound}</b></span>' if unbound else ""
    return (
        '<section id="totals"><h2>Fleet</h2>'
        f'<p class="totals"><b id="total-tenants">{view.counts.tenants}</b> tenants = {terms}{extra}</p>'
        f'<p class="muted">{len(view.nodes)} nodes; {view.counts.deleting} tenants being deleted.</p></section>'
    )


def _meter(label: str, used: int, allocatable: int | None, show: str) -> str:
    if not allocatable:
        return f'<div class="bar"><span class="label">{text(label)}</span><span>{text(show)}</span></div>'
    percent = 100 * used / allocatable
    return (
        f'<div class="bar"><span class="label">{text(label)}</span>'
        f'<meter min="0" max="{allocatable}" low="{allocatable * 0.7:.0f}" high="{allocatable * 0.9:.0f}" '
        f'optimum="0" value="{min(used, allocatable)}" title="{percent:.0f}%"></meter>'
        f"<span>{text(show)} ({percent:.0f}%)</span></div>"
    )


def _node_card(node: Node) -> str:
    state = "Ready" if node.ready else "NotReady"
    if node.cordoned:
        state += ", cordoned"
    why = f'<p class="warn">{text(node.not_ready_reason)}</p>' if node.not_ready_reason else ""
    used, allocatable, capacity = node.used, node.allocatable, node.capacity
    bars = []
    if allocatable is not None:
        bars = [
            _meter("CPU", used.cpu_millicores, allocatable.cpu_millicores,
                   f"{human_cpu(used.cpu_millicores)} of {human_cpu(allocatable.cpu_millicores)}"),
            _meter("Memory", used.memory_bytes, allocatable.memory_bytes,
                   f"{human_bytes(used.memory_bytes)} of {human_bytes(allocatable.memory_bytes)}"),
            _meter("Disk", used.disk_bytes, allocatable.disk_bytes,
                   f"{human_bytes(used.disk_bytes)} of {human_bytes(allocatable.disk_bytes)}"),
            _meter("Tenant slots", used.tenants, allocatable.tenants, f"{used.tenants} of {allocatable.tenants}"),
        ]
    else:  # the node of a single `fleet up`: it binds to itself, the scheduler's limits do not apply
        bars = [
            _meter("CPU", used.cpu_millicores, None, f"{human_cpu(used.cpu_millicores)} requested"),
            _meter("Memory", used.memory_bytes, None, f"{human_bytes(used.memory_bytes)} requested"),
            _meter("Disk", used.disk_bytes, None, f"{human_bytes(used.disk_bytes)} requested"),
        ]
    shared = None if capacity is None else capacity.disk_shared_bytes
    cow = "" if shared is None else f" · copy-on-write shares {text(human_bytes(shared))}"
    age = node.heartbeat_age_seconds
    heartbeat = "" if age is None else f" · heartbeat {age:.0f} s ago"
    hardware = ""
    if capacity is not None:
        hardware = (f'<p class="muted">Hardware: {text(human_cpu(capacity.cpu_millicores))}, '
                    f"{text(human_bytes(capacity.memory_bytes))} memory, "
                    f"{text(human_bytes(capacity.disk_bytes))} pool.</p>")
    return (
        f'<article class="node" data-node="{text(node.name)}"><h3>{text(node.name)} '
        f'<small class="{"ok" if node.ready else "bad"}">{text(state)}</small></h3>{why}'
        f'<p><b class="tenant-count">{node.tenants}</b> tenants · driver {text(node.driver or "?")} · '
        f"KSM saves {text(human_bytes(node.ksm_saved_bytes))}{cow}{heartbeat}</p>"
        f'{"".join(bars)}{hardware}</article>'
    )


def _nodes(view: DashboardView) -> str:
    cards = "".join(_node_card(node) for node in view.nodes) or '<p class="muted">No node has reported yet.</p>'
    return (
        '<section id="nodes"><h2>Nodes</h2><p class="muted">Bars: what the tenants bound to the node ask for, '
        f'of what the scheduler may hand out there (after reserves and overcommit).</p><div class="cards">{cards}'
        "</div></section>"
    )


def _sharing(view: DashboardView) -> str:
    ksm = sum(node.ksm_saved_bytes for node in view.nodes)
    reported = {node.name: node.capacity.disk_shared_bytes for node in view.nodes if node.capacity is not None}
    measured = [node for node in view.nodes if reported.get(node.name) is not None]
    unmeasured = [node.name for node in view.nodes if reported.get(node.name) is None]
    cow = sum(reported.get(node.name) or 0 for node in measured)
    if measured:
        shown = f'<b id="disk-shared">{text(human_bytes(cow))}</b>'
        if unmeasured:
            shown += f' <span class="muted">(not measured on {text(", ".join(unmeasured))})</span>'
    else:
        shown = '<b id="disk-shared">not measured</b>'
    why = ("each template's size times the tenants cloned from it, as each node last reported it; an upper "
           "bound, since what a tenant rewrote of its template still counts")
    if not measured and view.nodes:
        why = ("no node's driver measures it: nspawn does where btrfs quotas are on; LXD and a node that has not "
               "reported since do not")
    return (
        '<section id="sharing"><h2>Sharing</h2>'
        f'<p>Memory saved by KSM: <b id="ksm-saved">{text(human_bytes(ksm))}</b> '
        '<span class="muted">(pages_sharing × 4 KiB, as each node last reported it)</span></p>'
        f'<p>Disk shared by copy-on-write: {shown} <span class="muted">({text(why)})</span></p></section>'
    )


def _phases(counts: FleetCounts) -> str:
    names = [p for p in PHASE_ORDER if p in counts.phases] + sorted(set(counts.phases) - set(PHASE_ORDER))
    badges = "".join(
        f'<li class="phase phase-{text(p.lower())}" data-phase="{text(p)}"><a href="{text(search_href(phase=p))}">'
        f'{text(p)} <b class="count">{counts.phases[p]}</b></a></li>' for p in names
    ) or '<li class="muted">no tenants</li>'
    return f'<section id="phases"><h2>Phases</h2><ul class="phases">{badges}</ul></section>'


def _why(line: TenantLine) -> str:
    if not line.reason and not line.message:
        return '<span class="muted">no status yet</span>' if line.phase == "Pending" else ""
    return f'<b class="reason">{text(line.reason)}</b> <span class="message">{text(line.message)}</span>'


def _line_rows(lines: Sequence[TenantLine]) -> list[str]:
    return [
        f'<tr data-tenant="{text(line.name)}"><td>{_tenant_link(line.name)}</td><td>{text(line.phase)}'
        f'{" (deleting)" if line.deleting and line.phase != "Deleting" else ""}</td>'
        f"<td>{text(line.node or '—')}</td><td>{_why(line)}</td></tr>"
        for line in lines
    ]


def _not_ready(lines: TenantLines) -> str:
    if not lines.total:
        return '<section id="not-ready"><h2>Not Ready</h2><p class="ok">Every tenant is Ready.</p></section>'
    more = (f'<p class="muted">Showing {len(lines.lines)} of {lines.total} (Failed first); each phase above lists '
            "all of its tenants.</p>" if lines.total > len(lines.lines) else "")
    return (
        f'<section id="not-ready"><h2>Not Ready <small>{lines.total}</small></h2>'
        f'{_table(["Tenant", "Phase", "Node", "Why"], _line_rows(lines.lines), css="tenants")}{more}</section>'
    )


def _ledger(view: DashboardView) -> str:
    prices = view.monthly_prices
    rows = []
    for node in view.nodes:
        price = prices.get(node.name)
        per_tenant = "—" if price is None or not node.tenants else money(price / node.tenants)
        rows.append(_cells(text(node.name), "not set" if price is None else text(money(price)),
                           str(node.tenants), text(per_tenant)))
    priced = [node for node in view.nodes if node.name in prices]
    total_price = sum(prices[node.name] for node in priced)
    priced_tenants = sum(node.tenants for node in priced)
    fleet_per_tenant = money(total_price / priced_tenants) if priced_tenants else "—"
    rows.append(
        f'<tr class="fleet"><td>Fleet</td><td>{text(money(total_price))}</td><td>{priced_tenants}</td>'
        f'<td id="fleet-cost-per-tenant">{text(fleet_per_tenant)}</td></tr>'
    )
    unpriced = len(view.nodes) - len(priced)
    note = (f'<p class="muted">{unpriced} nodes have no price yet (<code>fleet node configure NODE '
            "--monthly-price AMOUNT</code>); the fleet row counts priced nodes only.</p>" if unpriced else "")
    return (
        '<section id="ledger"><h2>Ledger <small>per month</small></h2>'
        f'{_table(["Node", "Flat price", "Tenants", "Cost per tenant"], rows, css="ledger")}{note}'
        f"{_plan_ledger(view)}</section>"
    )


_PLAN_HEADERS = ["Plan", "Tenants", "Cost", "Usage read", "CPU time", "Memory now", "Disk (exclusive)",
                 "Network in", "Network out"]


def _plan_row(line: PlanLine) -> str:
    name = "(no plan)" if line.plan is None else line.plan
    cost = "—" if line.cost_cents is None else money(line.cost_cents)
    if line.cost_cents is not None and line.priced_tenants < line.tenants:
        cost += f" ({line.priced_tenants} priced)"
    used = line.usage
    if used is None:
        sums = ["—"] * 6
    else:
        sums = [f"{used.tenants} of {line.tenants}", f"{used.cpu_seconds:,.1f} s", human_bytes(used.memory_bytes),
                human_bytes(used.disk_bytes), human_bytes(used.network_in_bytes), human_bytes(used.network_out_bytes)]
    return (f'<tr data-plan="{text(name)}">' + "".join(f"<td>{text(cell)}</td>" for cell in (
        name, line.tenants, cost, *sums)) + "</tr>")


def _plan_ledger(view: DashboardView) -> str:
    ledger = view.plans
    if not ledger.lines:
        return ""
    read = sum(line.usage.tenants for line in ledger.lines if line.usage is not None)
    if ledger.usage_error:
        note = (f'<p class="warn" id="plan-usage-note">Usage could not be read from this node\'s host: '
                f"{text(ledger.usage_error)}</p>")
    elif not ledger.usage_nodes:
        note = ('<p class="muted" id="plan-usage-note">Usage not shown: it is read from each node\'s host by '
                "its driver, and this API process runs none (<code>fleet api</code>). Each node's agent serves "
                "its tenants' usage at <code>fleet agent --metrics-listen</code> (the "
                "<code>fleet_tenant_*</code> series); <code>fleet up</code> shows it here.</p>")
    else:
        nodes = ", ".join(ledger.usage_nodes)
        others = view.counts.tenants - read
        rest = (f" The other {others} tenants' usage is served by their nodes' agents "
                "(<code>fleet agent --metrics-listen</code>), or they have no container yet." if others > 0 else "")
        note = (f'<p class="muted" id="plan-usage-note">Usage read from the host of node {text(nodes)}: {read} '
                "tenants, a few seconds ago at most; CPU time and network are counters since each container was "
                f"made.{rest}</p>")
    return (
        '<h3>Per plan</h3><p class="muted">Cost: each tenant\'s share of its node\'s price (the price over the '
        "tenants on the node), summed by the plan its billing subscription bought.</p>"
        f'{_table(_PLAN_HEADERS, [_plan_row(line) for line in ledger.lines], css="ledger plans")}{note}'
    )


def _event_rows(events: Sequence[Event], *, with_tenant: bool = True) -> list[str]:
    rows = []
    for event in reversed(events):  # newest first
        tenant = f"<td>{_tenant_link(event.tenant)}</td>" if with_tenant else ""
        rows.append(
            f'<tr class="event-{text(event.type.lower())}"><td>{text(_time(event.created_at))}</td>{tenant}'
            f"<td>{text(event.type)}</td><td>{text(event.reason)}</td><td>{text(event.message)}</td></tr>"
        )
    return rows


def _events(events: Sequence[Event]) -> str:
    if not events:
        return '<section id="events"><h2>Recent events</h2><p class="muted">None yet.</p></section>'
    return (
        '<section id="events"><h2>Recent events</h2>'
        f'{_table(["When (UTC)", "Tenant", "Type", "Reason", "Message"], _event_rows(events), css="events")}'
        "</section>"
    )


# -- search and one tenant -----------------------------------------------------------------------------
def search_href(query: str = "", phase: str | None = None, after: str = "") -> str:
    parameters = {key: value for key, value in (("q", query), ("phase", phase or ""), ("after", after)) if value}
    return f"{PREFIX}/search" + (f"?{urlencode(parameters)}" if parameters else "")


def search_page(query: str, phase: str | None, after: str, found: TenantLines, page_size: int) -> str:
    """A page of the tenants whose name contains `query` (and in `phase`, when given), by name."""
    what = " ".join(part for part in (
        f"{phase} tenants" if phase else "Tenants", f"containing “{query}”" if query else "") if part)
    if not query and not phase:
        body = "<section><h1>Search</h1><p>Type part of a tenant's name.</p></section>"
    elif not found.total:
        body = f"<section><h1>Search</h1><p>No match: {text(what)}.</p></section>"
    else:
        more = ""
        if len(found.lines) == page_size:
            more = (f'<p><a id="next-page" href="{text(search_href(query, phase, found.lines[-1].name))}">Next '
                    f"{page_size}</a></p>")
        where = f" after {text(after)}" if after else ""
        body = (
            f'<section id="results"><h1>{text(what)} <small>{found.total}</small></h1>'
            f'<p class="muted">{len(found.lines)} by name{where}.</p>'
            f'{_table(["Tenant", "Phase", "Node", "Why"], _line_rows(found.lines), css="tenants")}{more}</section>'
        )
    return page(f"Search {query or phase or ''}", body, search=query)


def _receipt(events: Sequence[Event]) -> str:
    deleted = next((event for event in reversed(events) if event.reason == "Deleted"), None)
    if deleted is None:
        return ""
    removed = "".join(f"<li>{text(item)}</li>" for item in deleted.details.get("removed", [])) or "<li>nothing</li>"
    absent = "".join(f"<li>{text(item)}</li>" for item in deleted.details.get("already_absent", []))
    absent_part = f"<h3>Already absent</h3><ul>{absent}</ul>" if absent else ""
    return (
        f'<section id="receipt"><h2>Delete receipt</h2><p>{text(deleted.message)} '
        f'<span class="muted">at {text(_time(deleted.created_at))} on {text(deleted.node or "no node")}</span></p>'
        f"<h3>Removed and verified gone</h3><ul>{removed}</ul>{absent_part}</section>"
    )


def _link_if_web(url: str | None) -> str:
    if not url:
        return "—"
    if url.startswith(("http://", "https://")):
        return f'<a href="{text(url)}" rel="noreferrer noopener">{text(url)}</a>'
    return text(url)


def tenant_page(name: str, tenant: Tenant | None, events: Sequence[Event], revision: int) -> str:
    """One tenant's page, kept current: `tenant_body` again whenever the watch stream names the tenant."""
    body = (
        f'<h1>Tenant <span id="tenant-name">{text(name)}</span></h1>'
        f'<div id="tenant" data-live-url="{text(tenant_href(name))}?part=body" data-tenant="{text(name)}" '
        f'data-revision="{revision}">{tenant_body(tenant, events)}</div>{_LIVE_STATUS}'
    )
    return page(f"Tenant {name}", body)


def tenant_body(tenant: Tenant | None, events: Sequence[Event]) -> str:
    """One tenant: spec, status, conditions, its events; after its delete, the receipt and its events."""
    parts = []
    if tenant is None:
        parts.append('<p class="warn">This tenant does not exist (any more).</p>')
    else:
        spec = tenant.model_dump(mode="json", by_alias=True, exclude={"status"})
        parts.append(f'<section id="spec"><h2>Spec</h2><pre>{text(json.dumps(spec, indent=2))}</pre></section>')
        status = tenant.status
        if status is None:
            parts.append('<section id="status"><h2>Status</h2><p class="muted">Not reconciled yet.</p></section>')
        else:
            rows = [
                _cells("Phase", f'<b id="phase">{text(status.phase.value)}</b>'),
                _cells("Node", text(status.node or "—")),
                _cells("URL", _link_if_web(status.url)),
                _cells("Address", text(status.address or "—")),
                _cells("Observed generation", f"{status.observed_generation} of {tenant.metadata.generation}"),
                _cells("Last error", text(status.last_error or "—")),
            ]
            if tenant.deleting:
                rows.append(_cells("Deleting", "since " + text(_time(tenant.metadata.deletion_requested_at))))
            parts.append(f'<section id="status"><h2>Status</h2>{_table(["", ""], rows, css="status")}</section>')
            conditions = [
                _cells(text(c.type), text(c.status.value), text(c.reason), text(c.message),
                       text(_time(c.last_transition_time)))
                for c in status.conditions
            ]
            parts.append(
                '<section id="conditions"><h2>Conditions</h2>'
                f'{_table(["Type", "Status", "Reason", "Message", "Since (UTC)"], conditions, css="conditions")}'
                "</section>"
            )
    parts.append(_receipt(events))
    event_rows = _event_rows(events, with_tenant=False)
    parts.append(
        '<section id="tenant-events"><h2>Events</h2>'
        + (_table(["When (UTC)", "Type", "Reason", "Message"], event_rows, css="events") if event_rows
           else '<p class="muted">None.</p>')
        + "</section>"
    )
    return "".join(parts)


__all__ = [
    "ASSETS",
    "PREFIX",
    "DashboardView",
    "dashboard_page",
    "human_bytes",
    "login_page",
    "money",
    "not_found_page",
    "page",
    "panels",
    "search_href",
    "search_page",
    "tenant_body",
    "tenant_href",
    "tenant_page",
    "text",
]

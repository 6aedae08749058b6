"""The dashboard's reads: fleet-wide counts, the tenants that are not Ready (with why), and a name
search, each one aggregated or limited query, however many tenants there are.

Why it exists: the operators' page must paint in well under a second with ten thousand tenants, so it
never reads every tenant as a model: counts are computed by the database, and lists come in pages of a
few dozen. What it must never do: write, or hand a caller an unbounded list.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, or_, select, true

from state.access_schema import SUBSCRIPTIONS
from state.nodes_schema import NODES
from state.schema import STATUS, TEMPLATES, TENANTS
from state.session import Session

_PHASE = func.coalesce(STATUS.c.phase, "Pending")
_REQUESTED = ("cpu_millicores", "memory_bytes", "disk_bytes")
# Failed first (it will not fix itself), then Running on a lost node, then what is under way, then what waits.
_URGENCY = case({"Failed": 0, "Running": 1, "Deleting": 2, "Provisioning": 3, "Scheduled": 4, "Pending": 5},
                value=_PHASE, else_=6)


@dataclass(frozen=True)
class NodeTally:
    """The tenants bound to one node and what they ask for (their own quota, else their template's)."""

    tenants: int = 0
    cpu_millicores: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    running: int = 0  # of its tenants, those in phase Running


@dataclass(frozen=True)
class FleetCounts:
    tenants: int = 0
    unbound: int = 0  # not yet bound to a node
    deleting: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, NodeTally] = field(default_factory=dict)  # by node name, every node with a tenant bound


@dataclass(frozen=True)
class PlanTally:
    """How many tenants of one billing plan are bound to one node."""

    plan: str | None  # None: no live subscription owns the tenant (made by `fleet apply`, the API, SQL)
    node: str | None  # None: not bound yet
    tenants: int


@dataclass(frozen=True)
class TenantLine:
    """One tenant as a list on the dashboard shows it: where it is, what phase, and why if not Ready."""

    name: str
    phase: str
    node: str | None
    deleting: bool = False
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class TenantLines:
    lines: list[TenantLine]
    total: int  # how many match in all (the page holds at most its limit)


def _requested(column: str) -> Any:
    return func.coalesce(TENANTS.c[column], TEMPLATES.c[column])


def _why(conditions: str | None, last_error: str | None) -> tuple[str, str]:
    """The reason and message a person needs: the Ready condition's when it is not True, else the first
    condition that is not True, else the last error."""
    try:
        items = [c for c in json.loads(conditions or "[]") if isinstance(c, dict) and c.get("status") != "True"]
    except ValueError:
        items = []
    items.sort(key=lambda c: c.get("type") != "Ready")
    for condition in items:
        if condition.get("reason") or condition.get("message"):
            return str(condition.get("reason") or ""), str(condition.get("message") or "")
    return ("Error", last_error) if last_error else ("", "")


def _line(row: Any) -> TenantLine:
    reason, message = _why(row.conditions, row.last_error)
    return TenantLine(row.name, row.phase, row.node, row.deleting is not None, reason, message)


def _lines_query() -> Any:
    return (
        select(TENANTS.c.name, _PHASE.label("phase"), TENANTS.c.node,
               TENANTS.c.deletion_requested_at.label("deleting"), STATUS.c.conditions, STATUS.c.last_error)
        .select_from(TENANTS)
        .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
    )


class DashboardReads:
    """The dashboard's aggregate and paged reads over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def counts(self) -> FleetCounts:
        """Tenants in all, unbound, being deleted, by phase (no status yet counts as Pending), and per node
        with what they ask for: one grouped scan."""
        deleting = TENANTS.c.deletion_requested_at.is_not(None)
        query = (
            select(TENANTS.c.node, _PHASE.label("phase"), deleting.label("deleting"), func.count().label("tenants"),
                   *(func.coalesce(func.sum(_requested(column)), 0).label(column) for column in _REQUESTED))
            .select_from(TENANTS)
            .outerjoin(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
            .group_by(TENANTS.c.node, _PHASE, deleting)
        )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        phases: Counter[str] = Counter()
        nodes: dict[str, list[int]] = {}
        total = unbound = deleted = 0
        for row in rows:
            count = int(row.tenants)
            total += count
            phases[str(row.phase)] += count
            deleted += count if row.deleting else 0
            if row.node is None:
                unbound += count
                continue
            tally = nodes.setdefault(row.node, [0, 0, 0, 0, 0])
            running = count if row.phase == "Running" else 0
            for index, value in enumerate((count, *(int(getattr(row, column)) for column in _REQUESTED), running)):
                tally[index] += value
        return FleetCounts(total, unbound, deleted, dict(sorted(phases.items())),
                           {name: NodeTally(*tally) for name, tally in sorted(nodes.items())})

    def plan_tallies(self) -> list[PlanTally]:
        """Tenants by billing plan and node: one grouped scan. A tenant's plan is its live subscription's,
        as `fleet get --field-selector plan=` reads it (the webhook also writes it as the `billing/plan`
        label, which a user may change)."""
        owner = and_(SUBSCRIPTIONS.c.tenant == TENANTS.c.name, SUBSCRIPTIONS.c.plan.is_not(None),
                     SUBSCRIPTIONS.c.deleted_at.is_(None))
        query = (
            select(SUBSCRIPTIONS.c.plan, TENANTS.c.node, func.count().label("tenants"))
            .select_from(TENANTS)
            .outerjoin(SUBSCRIPTIONS, owner)
            .group_by(SUBSCRIPTIONS.c.plan, TENANTS.c.node)
        )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        return [PlanTally(row.plan, row.node, int(row.tenants)) for row in rows]

    def not_ready(self, *, limit: int = 20, total: int | None = None) -> TenantLines:
        """Tenants that are not Ready: every phase but Running and Sleeping (asleep while idle is where a
        tenant should be), and Running tenants of a node that stopped heartbeating (their Ready condition is
        Unknown). Failed first, each with the reason, and how many
        there are in all (`total` when the caller has counted them from `counts`)."""
        lost_nodes = select(NODES.c.name).where(NODES.c.ready.is_(False))
        where = or_(_PHASE.not_in(["Running", "Sleeping"]), and_(_PHASE == "Running", TENANTS.c.node.in_(lost_nodes)))
        with self.session.read() as conn:
            rows = conn.execute(_lines_query().where(where).order_by(_URGENCY, TENANTS.c.name).limit(limit)).all()
            if total is None:
                total = conn.execute(
                    select(func.count()).select_from(TENANTS).outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
                    .where(where)
                ).scalar_one()
        return TenantLines([_line(row) for row in rows], int(total))

    def search(self, text: str = "", *, phase: str | None = None, after: str = "", limit: int = 50) -> TenantLines:
        """Tenants whose name contains `text` (taken literally: % and _ match themselves) and, when given,
        in `phase`, by name: a page of `limit` after the name `after`, and how many match in all."""
        where = and_(
            TENANTS.c.name.contains(text, autoescape=True) if text else true(),
            _PHASE.in_([phase]) if phase else true(),
        )
        with self.session.read() as conn:
            rows = conn.execute(
                _lines_query().where(where, TENANTS.c.name > after).order_by(TENANTS.c.name).limit(limit)
            ).all()
            total = conn.execute(
                select(func.count()).select_from(TENANTS).outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
                .where(where)
            ).scalar_one()
        return TenantLines([_line(row) for row in rows], int(total))


__all__ = ["DashboardReads", "FleetCounts", "NodeTally", "PlanTally", "TenantLine", "TenantLines"]

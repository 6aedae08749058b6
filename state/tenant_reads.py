"""Reading tenants: desired state joined to its template and last status, as `Tenant` or `DesiredRecord`.

One joined query (`JOINED`) serves every read, so a tenant read through the API and one a reconcile
compares are the same row turned into two models. Reads never hold the write lock.
"""

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import bindparam, func, select

from specs import Metadata, ResolvedSpec, Resources, Sleep, Template, Tenant, TenantSpec
from state.columns import RESOURCE_COLUMNS, network_from_column, resources_from_row, sleep_from_column, utc
from state.records import DesiredRecord, TenantPage
from state.schema import STATUS, TEMPLATES, TENANTS
from state.session import Session
from state.status import STATUS_COLUMNS, status_from_row

# A tenant, its template's defaults (`tpl_` + column) and its status (`s_` + column).
JOINED: Any = (
    select(
        TENANTS,
        TEMPLATES.c.version.label("tpl_version"),
        *(TEMPLATES.c[column].label("tpl_" + column) for column in RESOURCE_COLUMNS.values()),
        TEMPLATES.c.ingress_ports.label("tpl_ingress_ports"),
        TEMPLATES.c.egress.label("tpl_egress"),
        TEMPLATES.c.description.label("tpl_description"),
        TEMPLATES.c.sleep_after_seconds.label("tpl_sleep_after_seconds"),
        *STATUS_COLUMNS,
        STATUS.c.revision.label("s_revision"),
    )
    .select_from(TENANTS)
    .outerjoin(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
    .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
)
# Built once: a reconcile runs these thousands of times a second, and building a statement costs more
# than running it.
BY_NAME = JOINED.where(TENANTS.c.name == bindparam("name"))
BY_NAMES = JOINED.where(TENANTS.c.name.in_(bindparam("names", expanding=True)))


def tenant_from_row(row: Any) -> Tenant:
    spec = TenantSpec.model_construct(
        template=row.template,
        resources=resources_from_row(row),
        network=network_from_column(row.ingress_ports, row.egress),
        paused=bool(row.paused),
        sleep=sleep_from_column(row.sleep_after_seconds),
    )
    metadata = Metadata.model_construct(
        name=row.name,
        labels=json.loads(row.labels),
        generation=row.generation,
        revision=max(row.revision, row.s_revision or 0),
        created_at=utc(row.created_at),
        deletion_requested_at=utc(row.deletion_requested_at),
    )
    return Tenant.model_construct(
        api_version="fleet/v1", kind="Tenant", metadata=metadata, spec=spec, status=status_from_row(row)
    )


def desired_from_row(
    row: Any, *, conditions: bool = True, templates: dict[tuple[str, str], Template] | None = None
) -> DesiredRecord:
    """`templates` shares one Template (and its default Resources and Network) between the rows of one
    pass: ten thousand tenants of one template then cost one template object, not ten thousand."""
    status = status_from_row(row, conditions=conditions)
    if row.tpl_version is None:
        return DesiredRecord(row.name, row.revision, row.node, None, status, row.template,
                             created_revision=row.created_revision)
    key = (row.template, row.tpl_version)
    template = templates.get(key) if templates is not None else None
    if template is None:
        template = Template.model_construct(
            name=row.template,
            version=row.tpl_version,
            resources=resources_from_row(row, "tpl_"),
            network=network_from_column(row.tpl_ingress_ports, row.tpl_egress),
            description=row.tpl_description,
            sleep=Sleep.from_column(row.tpl_sleep_after_seconds),
        )
        if templates is not None:
            templates[key] = template
    resources = template.resources
    if any(getattr(row, column) is not None for column in RESOURCE_COLUMNS.values()):
        resources = Resources.model_construct(**{
            field: own if (own := getattr(row, column)) is not None else getattr(row, "tpl_" + column)
            for field, column in RESOURCE_COLUMNS.items()
        })
    network = template.network
    if row.ingress_ports is not None or row.egress is not None:  # each unset field the template's
        network = network_from_column(row.ingress_ports, row.egress).filled_from(template.network)
    spec = ResolvedSpec.model_construct(
        name=row.name,
        generation=row.generation,
        template=template,
        resources=resources,
        network=network,
        paused=bool(row.paused),
        deleting=row.deletion_requested_at is not None,
        # The tenant's own rule (0: never), else its template's (NULL there: never).
        sleep_after=(row.sleep_after_seconds if row.sleep_after_seconds is not None
                     else row.tpl_sleep_after_seconds) or None,
        asleep_since=utc(row.asleep_since),
    )
    return DesiredRecord(row.name, row.revision, row.node, spec, status, created_revision=row.created_revision)


class TenantReads:
    """Reads of tenants over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_tenant(self, name: str) -> Tenant | None:
        with self.session.read() as conn:
            row = conn.execute(BY_NAME, {"name": name}).first()
        return None if row is None else tenant_from_row(row)

    def list_tenants(
        self, *, labels: dict[str, str] | None = None, phase: str | None = None, limit: int = 0, after: str = ""
    ) -> TenantPage:
        query = JOINED.where(TENANTS.c.name > after).order_by(TENANTS.c.name)
        if phase:
            query = (
                query.where(STATUS.c.phase == phase)
                if phase != "Pending"
                else query.where((STATUS.c.phase == phase) | STATUS.c.phase.is_(None))
            )
        with self.session.read() as conn:
            rows = conn.execute(query).all()
        items = [tenant_from_row(row) for row in rows]
        if labels:
            items = [t for t in items if all(t.metadata.labels.get(k) == v for k, v in labels.items())]
        if limit and len(items) > limit:
            return TenantPage(items[:limit], items[limit - 1].metadata.name)
        return TenantPage(items, None)

    def desired(self, name: str) -> DesiredRecord | None:
        with self.session.read() as conn:
            row = conn.execute(BY_NAME, {"name": name}).first()
        return None if row is None else desired_from_row(row)

    def iter_desired(self, *, node: str | None = None, chunk: int = 1000) -> Iterator[DesiredRecord]:
        """Every tenant (bound to `node`, or unbound, when given), streamed: what a resync compares in one
        pass without holding them all. Statuses come without conditions (phase and observed generation)."""
        query = JOINED
        if node is not None:
            query = query.where((TENANTS.c.node == node) | TENANTS.c.node.is_(None))
        templates: dict[tuple[str, str], Template] = {}
        with self.session.read() as conn:
            for row in conn.execution_options(yield_per=chunk).execute(query):
                yield desired_from_row(row, conditions=False, templates=templates)

    def sleep_candidates(self) -> list[tuple[str, int]]:
        """(name, seconds) of each Running tenant, awake, with a sleep rule of its own or its template's:
        what the gateway's idle rule looks at every second."""
        after = func.coalesce(TENANTS.c.sleep_after_seconds, TEMPLATES.c.sleep_after_seconds)
        query = (
            select(TENANTS.c.name, after)
            .select_from(TENANTS)
            .join(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .join(STATUS, STATUS.c.name == TENANTS.c.name)
            .where(after > 0, TENANTS.c.asleep_since.is_(None), TENANTS.c.deletion_requested_at.is_(None),
                   TENANTS.c.paused.is_(False), STATUS.c.phase == "Running")
        )
        with self.session.read() as conn:
            return [(name, int(seconds)) for name, seconds in conn.execute(query)]

    def counts_by_phase(self) -> dict[str, int]:
        with self.session.read() as conn:
            rows = conn.execute(
                select(func.coalesce(STATUS.c.phase, "Pending"), func.count())
                .select_from(TENANTS)
                .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
                .group_by(func.coalesce(STATUS.c.phase, "Pending"))
            ).all()
        return {phase: count for phase, count in rows}

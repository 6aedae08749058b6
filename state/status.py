"""Reported status: what the reconciler last saw of each tenant, one row per tenant in `tenant_status`.

The status row is written only for a tenant that still exists (a status never outlives its tenant) and
is read joined to tenant queries through `STATUS_COLUMNS`. Functions here run on a connection of the
caller's transaction; they never open one themselves.
"""

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select, text

from specs import Condition, Observed, Phase, TenantStatus
from state.columns import utc
from state.schema import STATUS

# Portable upsert (SQLite >= 3.24 and PostgreSQL): a status only for a tenant that still exists.
UPSERT_STATUS = text(
    """
    INSERT INTO tenant_status (name, phase, observed_generation, node, url, address, template, conditions,
                               last_error, observed, updated_at)
    SELECT :name, :phase, :observed_generation, :node, :url, :address, :template, :conditions,
           :last_error, :observed, CURRENT_TIMESTAMP
     WHERE EXISTS (SELECT 1 FROM tenants WHERE name = :name)
    ON CONFLICT (name) DO UPDATE SET
        phase = excluded.phase, observed_generation = excluded.observed_generation, node = excluded.node,
        url = excluded.url, address = excluded.address, template = excluded.template,
        conditions = excluded.conditions, last_error = excluded.last_error, observed = excluded.observed,
        updated_at = excluded.updated_at
    """
)

# A status as `status_from_row` reads it, joined to any tenant query.
STATUS_COLUMNS = (
    STATUS.c.phase.label("s_phase"),
    STATUS.c.observed_generation.label("s_observed_generation"),
    STATUS.c.node.label("s_node"),
    STATUS.c.url.label("s_url"),
    STATUS.c.address.label("s_address"),
    STATUS.c.template.label("s_template"),
    STATUS.c.conditions.label("s_conditions"),
    STATUS.c.last_error.label("s_last_error"),
    STATUS.c.updated_at.label("s_updated_at"),
)


def status_parameters(name: str, status: TenantStatus, observed: Observed | None) -> dict[str, Any]:
    """The bound values of `UPSERT_STATUS` for one tenant."""
    return {
        "name": name,
        "phase": status.phase.value,
        "observed_generation": status.observed_generation,
        "node": status.node,
        "url": status.url,
        "address": status.address,
        "template": status.template,
        "conditions": json.dumps([c.model_dump(mode="json") for c in status.conditions]),
        "last_error": status.last_error,
        "observed": None if observed is None else observed.model_dump_json(),
    }


def write_statuses(conn: Connection, parameters: Sequence[dict[str, Any]]) -> None:
    """Upsert statuses built by `status_parameters`, in the caller's write transaction."""
    if parameters:
        conn.execute(UPSERT_STATUS, list(parameters))


def read_observed(conn: Connection, name: str) -> Observed | None:
    """What the tenant's last reconcile observed on its host, if anything."""
    stored = conn.execute(select(STATUS.c.observed).where(STATUS.c.name == name)).scalar_one_or_none()
    return None if stored is None else Observed.model_validate_json(stored)


def status_from_row(row: Any, *, conditions: bool = True) -> TenantStatus | None:
    """A status from a row with `STATUS_COLUMNS`. Without `conditions` it skips parsing them: a resync over
    thousands of tenants needs only phase and observed generation."""
    if row.s_phase is None:
        return None
    if not conditions:
        return TenantStatus.model_construct(
            phase=Phase(row.s_phase), observed_generation=row.s_observed_generation, node=row.s_node,
            conditions=(), last_error=row.s_last_error,
        )
    return TenantStatus(
        phase=Phase(row.s_phase),
        observed_generation=row.s_observed_generation,
        node=row.s_node,
        url=row.s_url,
        address=row.s_address,
        template=row.s_template,
        conditions=tuple(Condition.model_validate(c) for c in json.loads(row.s_conditions)),
        last_error=row.s_last_error,
        updated_at=utc(row.s_updated_at),
    )

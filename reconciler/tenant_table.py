"""The rows `fleet get tenants` prints, built in one place for both ways of asking: the CLI on the store
(`--db`) and the API's table view (`GET /api/v1/views/tenants`, which `fleet --server` prints as it comes),
as kubectl's server-side printing does. A cell is text, or None for "none" (printed as `-`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from specs import Template, Tenant, format_bytes, format_cpu
from specs.tenant import egress_display

if TYPE_CHECKING:
    from state import Store

HEADERS = ("NAME", "PHASE", "READY", "NODE", "ADDRESS", "CPU", "MEMORY", "DISK", "IO", "AGE")
WIDE = ("TEMPLATE", "GEN", "OBSERVED", "URL")

Cell = str | None


def headers(*, wide: bool) -> list[str]:
    return [*HEADERS, *(WIDE if wide else ())]


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def ready_of(tenant: Tenant) -> str:
    condition = tenant.status.condition("Ready") if tenant.status else None
    return condition.status.value if condition else "Unknown"


def _effective(tenant: Tenant, template: Template | None) -> list[Cell]:
    """CPU, memory, disk and io as the tenant gets them: its own, else its template's."""
    resources = tenant.spec.resources.filled_from(template.resources) if template else tenant.spec.resources
    return [
        format_cpu(resources.cpu) if resources.cpu is not None else None,
        format_bytes(resources.memory) if resources.memory is not None else None,
        format_bytes(resources.disk) if resources.disk is not None else None,
        # Bytes per second each way; none from the spec or its template: unlimited.
        format_bytes(resources.io) if resources.io is not None else ("unlimited" if template else None),
    ]


def row(tenant: Tenant, template: Template | None, *, wide: bool, now: datetime | None = None) -> list[Cell]:
    status = tenant.status
    cells: list[Cell] = [
        tenant.metadata.name,
        status.phase.value if status else "Pending",
        ready_of(tenant),
        status.node if status else None,
        status.address if status else None,
        *_effective(tenant, template),
        age(tenant.metadata.created_at, now),
    ]
    if wide:
        cells += [
            tenant.spec.template,
            str(tenant.metadata.generation),
            str(status.observed_generation if status else 0),
            status.url if status else None,
        ]
    return cells


def rows(store: Store, tenants: Sequence[Tenant], *, wide: bool) -> list[list[Cell]]:
    """The rows of `tenants`, their templates read in one query (not one a row)."""
    templates: Mapping[str, Template] = {template.name: template for template in store.list_templates()}
    now = datetime.now(UTC)
    return [row(tenant, templates.get(tenant.spec.template), wide=wide, now=now) for tenant in tenants]


def document(tenant: Tenant) -> dict[str, Any]:
    """The tenant as `fleet get -o yaml|json` shows it: quantities as people write them."""
    data = tenant.model_dump(mode="json", by_alias=True)
    spec = data["spec"]
    spec["resources"] = {k: v for k, v in tenant.spec.resources.display().items() if v is not None}
    network = tenant.spec.network
    spec["network"] = {"ingress": list(network.ingress)} if network.ingress else {}
    if network.egress is not None:  # unset: the template's, left out as the other defaults are
        spec["network"]["egress"] = egress_display(network.egress)
    if data.get("status") is None:
        data.pop("status", None)
    return data

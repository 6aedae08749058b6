"""What the store hands to the layers above: typed records, never rows or dicts."""

from dataclasses import dataclass
from enum import StrEnum

from specs import Observed, ResolvedSpec, Tenant, TenantStatus


class ApplyOutcome(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class DesiredRecord:
    """One tenant as the reconciler needs it: the resolved spec (with its template), its binding, its status."""

    name: str
    revision: int
    node: str | None
    spec: ResolvedSpec | None  # None when the template it names is gone
    status: TenantStatus | None
    missing_template: str | None = None
    # The revision the tenant was created at: which tenant of this name it is (claims are bound to it).
    created_revision: int | None = None


@dataclass(frozen=True)
class Precondition:
    """What an update expects the stored tenant to be, as it was read before the change was made (a
    compare-and-set): the same generation and, when given, the same labels."""

    generation: int
    labels: dict[str, str] | None = None


@dataclass(frozen=True)
class ApplyResult:
    name: str
    outcome: ApplyOutcome
    generation: int
    desired: DesiredRecord | None = None
    tenant: Tenant | None = None  # as stored (or, on a dry run, as it would be), read in the same transaction
    observed: Observed | None = None  # what the reconciler last saw of it, for the plan


@dataclass(frozen=True)
class Change:
    name: str
    revision: int


@dataclass(frozen=True)
class TenantPage:
    items: list[Tenant]
    next_after: str | None

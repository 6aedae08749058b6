"""Errors the store raises, mapped from the database's at this one edge.

PermanentError (specs)
├── InvalidRecord       a write no valid spec could produce (names the field and the rule)
├── Conflict            the write collides with the stored state
│   ├── AlreadyExists   a create named a record that exists
│   ├── TenantOwned     a billing subscription named a tenant another subscription owns
│   └── StaleWrite      a compare-and-set found the record changed since it was read
└── RevisionCompacted   a feed reader asked for changes older than what the store still keeps
"""

import re

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from specs import FleetError, NotFound, PermanentError, TransientError
from state.columns import RESOURCE_COLUMNS

_COLUMN_TO_FIELD = {
    "name": "metadata.name",
    "labels": "metadata.labels",
    "template": "spec.template",
    **{column: f"spec.resources.{field}" for field, column in RESOURCE_COLUMNS.items()},
    "ingress_ports": "spec.network.ingress",
    "egress": "spec.network.egress",
    "paused": "spec.paused",
    "sleep_after_seconds": "spec.sleep.after",
    "deletion_requested_at": "metadata.deletion_requested_at",
}


class InvalidRecord(PermanentError):
    """A write no valid spec could produce. Names the field and the rule; nothing was written."""

    reason = "Invalid"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class UnknownReference(InvalidRecord):
    """A write that names a record the store does not have (a template). Valid in itself, it can succeed
    once that record exists: the API answers 409, not 422."""


class Conflict(PermanentError):
    reason = "Conflict"


class AlreadyExists(Conflict):
    """A create named a record that exists."""


class TenantOwned(Conflict):
    """A billing subscription named a tenant that another subscription (or no subscription) owns: a tenant
    belongs to exactly one subscription. `owner` is that subscription, None when it is not known."""

    def __init__(self, tenant: str, owner: str | None) -> None:
        whose = f"subscription {owner}" if owner else "another subscription"
        super().__init__(f"tenant: tenant {tenant} belongs to {whose}")
        self.tenant = tenant
        self.owner = owner


class StaleWrite(Conflict):
    """A write conditioned on what was read (a generation, labels) found the record changed meanwhile:
    nothing was written. Read again and reapply the change."""

    reason = "StaleWrite"

    def __init__(self, message: str, *, current_generation: int) -> None:
        super().__init__(message)
        self.current_generation = current_generation


class RevisionCompacted(PermanentError):
    """Deletions at or below `horizon` were pruned: a reader resuming from an older revision could miss
    one, so it must list again and follow the feed from the revision of that list."""

    reason = "Gone"

    def __init__(self, revision: int, horizon: int) -> None:
        super().__init__(
            f"revision: {revision} is older than the oldest the store keeps ({horizon}); "
            "list the tenants again and watch from the revision of that list"
        )
        self.revision = revision
        self.horizon = horizon


def field_for(column: str) -> str:
    return _COLUMN_TO_FIELD.get(column, column)


def translate(error: DBAPIError) -> FleetError:
    """The most specific Fleet error for a database error."""
    message = str(error.orig) if error.orig is not None else str(error)
    if isinstance(error, IntegrityError) or "CHECK constraint" in message or "unknown template" in message:
        check = re.search(r"CHECK constraint failed: (\w+)", message) or re.search(
            r'violates check constraint "(\w+)"', message
        )
        if check:
            rule = check.group(1)
            column = next((c for c in _COLUMN_TO_FIELD if rule.startswith(c + "_")), rule)
            return InvalidRecord(field_for(column), rule[len(column) + 1 :].replace("_", " "))
        unique = re.search(r"UNIQUE constraint failed: \w+\.(\w+)", message) or re.search(
            r"Key \((\w+)\)=\(.*\) already exists", message
        )
        if unique:
            return Conflict(f"{field_for(unique.group(1))}: already exists")
        not_null = re.search(r"NOT NULL constraint failed: \w+\.(\w+)", message) or re.search(
            r'null value in column "(\w+)"', message
        )
        if not_null:
            return InvalidRecord(field_for(not_null.group(1)), "is required")
    raised = re.search(r"(\w+): (.+)$", message.splitlines()[0] if message else "")
    if raised and raised.group(1) in _COLUMN_TO_FIELD:
        return InvalidRecord(field_for(raised.group(1)), raised.group(2))
    if isinstance(error, OperationalError):
        return TransientError(f"the store is unavailable: {message}")
    return PermanentError(f"the store refused the write: {message}")


__all__ = ["AlreadyExists", "Conflict", "InvalidRecord", "NotFound", "RevisionCompacted", "StaleWrite", "TenantOwned",
           "UnknownReference", "field_for", "translate"]

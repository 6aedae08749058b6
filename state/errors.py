"""Errors the store raises, mapped from the database's at this one edge."""

import re

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from specs import FleetError, NotFound, PermanentError, TransientError

_COLUMN_TO_FIELD = {
    "name": "metadata.name",
    "labels": "metadata.labels",
    "template": "spec.template",
    "cpu_millicores": "spec.resources.cpu",
    "memory_bytes": "spec.resources.memory",
    "disk_bytes": "spec.resources.disk",
    "pids": "spec.resources.pids",
    "io_bytes_per_second": "spec.resources.io",
    "ingress_ports": "spec.network.ingress",
    "paused": "spec.paused",
    "deletion_requested_at": "metadata.deletion_requested_at",
}


class InvalidRecord(PermanentError):
    """A write no valid spec could produce. Names the field and the rule; nothing was written."""

    reason = "Invalid"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class Conflict(PermanentError):
    reason = "Conflict"


class AlreadyExists(Conflict):
    """A create named a record that exists."""


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


__all__ = ["AlreadyExists", "Conflict", "InvalidRecord", "NotFound", "field_for", "translate"]

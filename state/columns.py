"""The one mapping between Fleet's models and the store's columns: resources, ports, timestamps.

Tenants, templates and plans store `Resources` in the same five columns and ingress ports as a JSON array;
every reader and writer in `state/` converts through here, so a new resource is one line in
`RESOURCE_COLUMNS` plus its migration. It never opens a transaction.
"""

import json
from datetime import UTC, datetime
from typing import Any

from specs import Network, Resources

# Resources field -> column, in the order of the tables.
RESOURCE_COLUMNS: dict[str, str] = {
    "cpu": "cpu_millicores",
    "memory": "memory_bytes",
    "disk": "disk_bytes",
    "pids": "pids",
    "io": "io_bytes_per_second",
}


def resource_values(resources: Resources) -> dict[str, int | None]:
    """The columns of `resources` (None: not set, e.g. the template's default applies)."""
    return {column: getattr(resources, field) for field, column in RESOURCE_COLUMNS.items()}


def resources_from_row(row: Any, prefix: str = "") -> Resources:
    """`Resources` from a row's resource columns, named `prefix` + column (e.g. `tpl_` in a join)."""
    return Resources.model_construct(
        **{field: getattr(row, prefix + column) for field, column in RESOURCE_COLUMNS.items()}
    )


def ports_value(network: Network, *, empty_when_unset: bool = False) -> str | None:
    """The `ingress_ports` column of `network`: a JSON array, or None when unset (a template stores `[]`)."""
    if network.ingress is None:
        return "[]" if empty_when_unset else None
    return json.dumps(list(network.ingress))


def ports(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(sorted(set(json.loads(text))))


def network_from_column(text: str | None) -> Network:
    return Network.model_construct(ingress=ports(text))


def utc(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite returns text or naive datetimes)."""
    if value is None:
        return None
    parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed

"""The one mapping between Fleet's models and the store's columns: resources, ports, timestamps.

Tenants, templates and plans store `Resources` in the same five columns and ingress ports as a JSON array;
every reader and writer in `state/` converts through here, so a new resource is one line in
`RESOURCE_COLUMNS` plus its migration. It never opens a transaction.
"""

import functools
import json
from datetime import UTC, datetime
from typing import Any

from specs import Network, Resources, Sleep
from specs.tenant import EgressRule, egress_rules

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


def network_from_column(text: str | None, egress: str | None = None) -> Network:
    """`Network` from the `ingress_ports` and `egress` columns (NULL: the template's default)."""
    return Network.model_construct(ingress=ports(text), egress=egress_from_column(egress))


def egress_value(network: Network, *, empty_when_unset: bool = False) -> str | None:
    """The `egress` column of `network`: its canonical rules as a JSON array ("none" is '[]'), or None when
    unset (the template's default; a template stores '[]')."""
    if network.egress is None:
        return "[]" if empty_when_unset else None
    return json.dumps([rule.as_json() for rule in network.egress])


@functools.lru_cache(maxsize=1024)  # a pass reads thousands of rows, nearly all NULL or one of a few policies
def egress_from_column(text: str | None) -> tuple[EgressRule, ...] | None:
    """The rules of an `egress` column, canonical. A value a raw writer made that no spec validates is kept
    as written: the driver refuses it with a message naming the field, rather than every read failing."""
    if text is None:
        return None
    value = json.loads(text)
    try:
        return egress_rules(value)
    except ValueError:
        items = value if isinstance(value, list) else []
        return tuple(
            EgressRule.model_construct(to=str(item.get("to")), ports=item.get("ports")) if isinstance(item, dict)
            else EgressRule.model_construct(to=repr(item), ports=None)
            for item in items
        )


def sleep_value(sleep: Sleep | None) -> int | None:
    """The `sleep_after_seconds` column: NULL when unset (the template's rule), 0 for never."""
    if sleep is None:
        return None
    return sleep.after or 0


def sleep_from_column(seconds: int | None) -> Sleep | None:
    return None if seconds is None else Sleep.from_column(seconds)


def utc(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite returns text or naive datetimes)."""
    if value is None:
        return None
    parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed

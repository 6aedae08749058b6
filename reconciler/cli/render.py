"""How the CLI shows things: aligned tables, ages, JSON and YAML (loaded only for `-o yaml`)."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from specs import Tenant


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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def tenant_document(tenant: Tenant) -> dict[str, Any]:
    data = tenant.model_dump(mode="json", by_alias=True)
    spec = data["spec"]
    spec["resources"] = {k: v for k, v in tenant.spec.resources.display().items() if v is not None}
    spec["network"] = {"ingress": list(tenant.spec.network.ingress)} if tenant.spec.network.ingress else {}
    if data.get("status") is None:
        data.pop("status", None)
    return data


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def as_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def ready_of(tenant: Tenant) -> str:
    condition = tenant.status.condition("Ready") if tenant.status else None
    return condition.status.value if condition else "Unknown"

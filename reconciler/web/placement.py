"""Where a tenant would land, for `POST /api/v1/tenants?dry_run=true`.

Why it exists: a billing system checking a signup wants to know, before writing anything, whether the
tenant fits and where. On a fleet (nodes registered by `fleet agent`) the answer is what the scheduler's
pure `place()` chooses from a snapshot of the nodes; on a single `fleet up` it is that machine's node.
What it must never do: write (no binding, no status), or decide differently from the scheduler.
"""

from dataclasses import dataclass

from reconciler.scheduler import NodeSlot, place
from reconciler.web.context import WebContext
from state import DesiredRecord
from state.nodes import NodeStore, PendingTenant


@dataclass(frozen=True)
class Placement:
    node: str | None
    unschedulable: str | None = None  # why no node would take it, as the scheduler would report it


def would_place(context: WebContext, desired: DesiredRecord, labels: dict[str, str]) -> Placement:
    spec = desired.spec
    if spec is None:
        return Placement(None, "the template it names is gone")
    records = NodeStore(context.store).list_nodes()
    if not records:
        local = context.nodes()
        if local:
            return Placement(local[0].name)
    tenant = PendingTenant(
        name=spec.name, revision=desired.revision, template=f"{spec.template}@{spec.template_version}",
        cpu_millicores=spec.resources.cpu or 0, memory_bytes=spec.resources.memory or 0,
        disk_bytes=spec.resources.disk or 0, labels=labels,
    )
    decision = place([tenant], [NodeSlot.of(record) for record in records], context.config.strategy)
    if decision.bindings:
        return Placement(decision.bindings[0].node)
    return Placement(None, decision.unschedulable.get(spec.name))

"""Where a tenant would land, for the dry runs of `POST /api/v1/tenants` and `fleet apply --dry-run`.

Why it exists: a billing system checking a signup wants to know, before writing anything, whether the
tenant fits and where. On a fleet (nodes registered by `fleet agent`) the answer is what the scheduler's
pure `place()` chooses from a snapshot of the nodes; on a single `fleet up` it is that machine's node.
What it must never do: write (no binding, no status), or decide differently from the scheduler.
"""

from dataclasses import dataclass

from reconciler.scheduler import NodeSlot, Strategy, place
from state import DesiredRecord, Store
from state.nodes import NodeStore, PendingTenant


@dataclass(frozen=True)
class Placement:
    node: str | None
    unschedulable: str | None = None  # why no node would take it, as the scheduler would report it


def would_place(
    store: Store,
    desired: DesiredRecord,
    labels: dict[str, str],
    strategy: Strategy = Strategy.BINPACK,
    local_node: str | None = None,
) -> Placement:
    """`local_node`: the node of a single `fleet up` whose nodes table may still be empty."""
    spec = desired.spec
    if spec is None:
        return Placement(None, "the template it names is gone")
    if desired.node is not None:
        return Placement(desired.node)  # already bound: it stays where it is
    records = NodeStore(store).list_nodes()
    if not records:
        if local_node is not None:
            return Placement(local_node)
        return Placement(None, "no node has registered yet: start fleet up or fleet agent")
    tenant = PendingTenant(
        name=spec.name, revision=desired.revision, template=spec.template.ref,
        cpu_millicores=spec.resources.cpu or 0, memory_bytes=spec.resources.memory or 0,
        disk_bytes=spec.resources.disk or 0, labels=labels,
    )
    decision = place([tenant], [NodeSlot.of(record) for record in records], strategy)
    if decision.bindings:
        return Placement(decision.bindings[0].node)
    return Placement(None, decision.unschedulable.get(spec.name))

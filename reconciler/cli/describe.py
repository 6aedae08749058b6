"""`fleet describe tenant NAME` and `fleet describe node NAME`: everything about one object, for a person.

A node: whether it is Ready (and why not), cordoned, its labels, driver and templates, its capacity, what
the scheduler may hand out and what its tenants ask for, what KSM saves, and its tenants by phase. Read
from the store only (what the agents reported). What it must never do: write.
"""

import typer

from reconciler.cli.render import table
from reconciler.cli.settings import Settings
from reconciler.documents import BadInput
from specs import NotFound, format_bytes, format_cpu

TENANTS_SHOWN = 50  # a node holds hundreds: the list shows this many, the counts cover all


def describe(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="tenant or node"),
    name: str = typer.Argument(...),
) -> None:
    """Everything about one tenant or node: spec, status, conditions, the last events; a node's room."""
    if kind == "tenant":
        from reconciler.cli import tenants

        tenants.describe(ctx, kind, name)
        return
    if kind != "node":
        raise BadInput(f"kind: must be 'tenant' or 'node', not {kind!r}")
    describe_node(ctx.obj, name)


def _share(used: int, allocatable: int) -> str:
    return f"{used / allocatable:.0%}" if allocatable else "-"


def describe_node(settings: Settings, name: str) -> None:
    from state.aggregates import Aggregates
    from state.nodes import NodeStore

    store = settings.open_store()
    nodes = NodeStore(store)
    try:
        node = nodes.get_node(name)
    except NotFound:
        raise NotFound(f"node {name} is not registered; see fleet nodes") from None
    status = "Ready" if node.ready else f"NotReady ({node.not_ready_reason or 'no heartbeat'})"
    capacity, allocatable, used = node.capacity, node.allocatable, node.used
    lines = [
        f"Name:          {node.name}",
        f"Status:        {status}" + (", SchedulingDisabled (cordoned)" if node.cordoned else ""),
        f"Heartbeat:     {node.heartbeat_age:.0f}s ago",
        f"Labels:        {', '.join(f'{k}={v}' for k, v in node.labels.items()) or '<none>'}",
        f"Driver:        {node.driver}",
        f"Templates:     {', '.join(node.templates) or '<none>'}",
        f"KSM saves:     {format_bytes(capacity.ksm_pages_sharing * 4096)} "
        f"({capacity.ksm_pages_sharing} pages sharing, {capacity.ksm_pages_shared} shared)",
        "Resources:",
    ]
    rows = [
        ["cpu", format_cpu(capacity.cpu_millicores), format_cpu(allocatable.cpu_millicores),
         format_cpu(used.cpu_millicores), _share(used.cpu_millicores, allocatable.cpu_millicores)],
        ["memory", format_bytes(capacity.memory_bytes), format_bytes(allocatable.memory_bytes),
         format_bytes(used.memory_bytes), _share(used.memory_bytes, allocatable.memory_bytes)],
        ["disk", format_bytes(capacity.disk_bytes), format_bytes(allocatable.disk_bytes),
         format_bytes(used.disk_bytes), _share(used.disk_bytes, allocatable.disk_bytes)],
        ["tenants", str(capacity.max_tenants), str(allocatable.tenants), str(used.tenants),
         _share(used.tenants, allocatable.tenants)],
    ]
    lines += ["  " + line for line in table(["", "CAPACITY", "ALLOCATABLE", "ALLOCATED", "USED"], rows).splitlines()]
    counts = [row for row in Aggregates(store).tenants_by_phase_and_node() if row.node == name]
    lines.append("Tenants by phase: " + (", ".join(f"{row.phase} {row.tenants}" for row in counts) or "<none>"))
    bound = nodes.tenants_on(name)
    lines.append(f"Tenants ({len(bound)}):")
    if bound:
        shown = bound[:TENANTS_SHOWN]
        lines += [f"  {tenant}" for tenant in shown]
        if len(bound) > len(shown):
            lines.append(f"  ... and {len(bound) - len(shown)} more (fleet get tenants --field-selector node={name})")
    else:
        lines.append("  <none>")
    if not node.ready:
        lines.append("What to do: see docs/operations.md, \"A node NotReady\".")
    typer.echo("\n".join(lines))

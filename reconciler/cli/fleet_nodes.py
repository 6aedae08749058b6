"""`fleet nodes`, `fleet cordon|uncordon|drain NODE`: the nodes of a fleet as the store knows them.

Why here: operators need where capacity is and a way to stop new bindings to a node. What it must never
do: move a tenant. Draining only cordons and lists what lives there; moving a stateful tenant is an
explicit, documented procedure (docs/fleet.md), never a side effect.
"""

import typer

from reconciler.cli.render import as_json, table
from reconciler.cli.settings import Settings
from specs import format_bytes, format_cpu
from state.ledger import NodeSettings
from state.nodes import NodeStore


def nodes(
    ctx: typer.Context,
    output: str = typer.Option("table", "-o", "--output", help="table or json"),
) -> None:
    """Every registered node: Ready, cordoned, tenants and allocatable room, driver, KSM savings.

    Also its flat monthly price when one is set (`fleet node configure NODE --monthly-price`)."""
    settings: Settings = ctx.obj
    store = settings.open_store()
    records = NodeStore(store).list_nodes()
    prices = NodeSettings(store.session).monthly_prices()  # cents; `fleet node configure --monthly-price`
    if output == "json":
        typer.echo(as_json([
            {
                "name": n.name, "ready": n.ready, "cordoned": n.cordoned, "reason": n.not_ready_reason,
                "labels": n.labels, "driver": n.driver, "templates": list(n.templates),
                "heartbeat_age_seconds": round(n.heartbeat_age, 1),
                "tenants": n.used.tenants, "max_tenants": n.allocatable.tenants,
                "tenants_running": n.used.running, "tenants_sleeping": n.used.sleeping,
                "cpu_millicores": {"used": n.used.cpu_millicores, "allocatable": n.allocatable.cpu_millicores},
                "memory_bytes": {"used": n.used.memory_bytes, "allocatable": n.allocatable.memory_bytes},
                "disk_bytes": {"used": n.used.disk_bytes, "allocatable": n.allocatable.disk_bytes},
                "ksm_saved_bytes": n.capacity.ksm_pages_sharing * 4096,
                "monthly_price": None if n.name not in prices else prices[n.name] / 100,
            }
            for n in records
        ]))
        return
    rows = [
        [
            n.name,
            ("Ready" if n.ready else "NotReady") + (",SchedulingDisabled" if n.cordoned else ""),
            f"{n.used.tenants}/{n.allocatable.tenants}" + (f" ({n.used.sleeping} asleep)" if n.used.sleeping else ""),
            f"{format_cpu(n.used.cpu_millicores)}/{format_cpu(n.allocatable.cpu_millicores)}",
            f"{format_bytes(n.used.memory_bytes)}/{format_bytes(n.allocatable.memory_bytes)}",
            f"{format_bytes(n.used.disk_bytes)}/{format_bytes(n.allocatable.disk_bytes)}",
            n.driver,
            format_bytes(n.capacity.ksm_pages_sharing * 4096),
            f"{n.heartbeat_age:.0f}s",
            "-" if n.name not in prices else f"{prices[n.name] / 100:.2f}",
        ]
        for n in records
    ]
    typer.echo(table(["NAME", "STATUS", "TENANTS", "CPU", "MEMORY", "DISK", "DRIVER", "KSM SAVED", "HEARTBEAT",
                      "PRICE/MONTH"], rows))


def cordon(ctx: typer.Context, node: str = typer.Argument(..., help="The node's name.")) -> None:
    """Stop new bindings to NODE; its tenants keep running."""
    settings: Settings = ctx.obj
    NodeStore(settings.open_store()).set_cordoned(node, True)
    typer.echo(f"node/{node} cordoned")


def uncordon(ctx: typer.Context, node: str = typer.Argument(..., help="The node's name.")) -> None:
    """Allow new bindings to NODE again."""
    settings: Settings = ctx.obj
    NodeStore(settings.open_store()).set_cordoned(node, False)
    typer.echo(f"node/{node} uncordoned")


def drain(ctx: typer.Context, node: str = typer.Argument(..., help="The node's name.")) -> None:
    """Cordon NODE and list its tenants. Nothing is moved: a tenant's data lives on its node, so moving
    one is explicit (see docs/fleet.md, "Moving a tenant")."""
    settings: Settings = ctx.obj
    store = NodeStore(settings.open_store())
    store.set_cordoned(node, True)
    tenants = store.tenants_on(node)
    typer.echo(f"node/{node} cordoned; {len(tenants)} tenants still on it (nothing is moved automatically)")
    for name in tenants:
        typer.echo(f"  {name}")

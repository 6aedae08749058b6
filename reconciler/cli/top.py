"""`fleet top tenants|nodes`: what tenants use now, read from this node's host through its driver.

CPU is a rate: usage is read twice, `--interval` seconds apart, and the CPU time used in between is shown
in cores (`250m` = a quarter of a core); memory, disk and network are what the kernel counts at the second
reading. Limits come from the store (the tenants' resolved specs). A node's own usage is only readable on
it: `top nodes` shows the live columns for this node and the store's view (what tenants ask for) for all.
What it must never do: write, or touch the host itself (the driver reads it).
"""

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from reconciler.cli.render import as_json, table
from reconciler.cli.settings import Settings, this_node
from specs import Resources, Usage, format_bytes, format_cpu

if TYPE_CHECKING:
    from state import Store


class What(StrEnum):
    tenants = "tenants"
    nodes = "nodes"


class Sort(StrEnum):
    cpu = "cpu"
    memory = "memory"
    disk = "disk"
    name = "name"


def _cores(seconds: float, interval: float) -> str:
    return format_cpu(max(0, round(seconds / interval * 1000))) if interval > 0 else "-"


def _of(value: int, limit: int | None) -> str:
    return format_bytes(value) + (f"/{format_bytes(limit)}" if limit else "")


def top(
    ctx: typer.Context,
    what: What = typer.Argument(..., help="tenants or nodes"),
    driver_name: str = typer.Option("auto", "--driver", help="This node's driver: auto (nspawn), nspawn, fake."),
    pool: Path | None = typer.Option(None, "--pool", help="The btrfs filesystem Fleet uses, if not DATA_DIR/pool."),
    node: str = typer.Option(this_node(), "--node", help="This node's name."),
    interval: float = typer.Option(1.0, "--interval", min=0.0, max=60.0,
                                   help="Seconds between the two readings CPU is measured over (0: CPU time only)."),
    sort: Sort = typer.Option(Sort.cpu, "--sort", help="cpu, memory, disk or name."),
    output: str = typer.Option("table", "-o", "--output", help="table or json"),
) -> None:
    """What tenants and nodes use now: CPU, memory, disk, network, read from this node's host."""
    import time

    from reconciler.cli.driver_options import DriverOptions, open_driver

    settings: Settings = ctx.obj
    store = settings.open_store()
    driver, _described = open_driver(
        DriverOptions(name=driver_name, data_dir=settings.resolved_data_dir, pool=pool, node=node)
    )
    first = {usage.tenant: usage for usage in driver.usage()}
    if interval > 0:
        time.sleep(interval)  # the interval CPU time is measured over, not a synchronisation
    second = driver.usage() if interval > 0 else list(first.values())
    rate = {u.tenant: u.cpu_seconds - first[u.tenant].cpu_seconds if u.tenant in first else 0.0 for u in second}
    limits = {record.name: record.spec.resources for record in store.iter_desired(node=node) if record.spec}
    if what == What.tenants:
        _tenants(second, rate, limits, interval, sort, output)
    else:
        _nodes(store, node, second, rate, interval, output)
    driver.close()


def _tenants(usage: list[Usage], rate: dict[str, float], limits: dict[str, Resources], interval: float, sort: Sort,
             output: str) -> None:
    keys = {
        Sort.cpu: lambda u: (-rate.get(u.tenant, 0.0), -u.cpu_seconds, u.tenant),
        Sort.memory: lambda u: (-u.memory_bytes, u.tenant),
        Sort.disk: lambda u: (-u.disk_bytes, u.tenant),
        Sort.name: lambda u: (u.tenant,),
    }
    ordered = sorted(usage, key=keys[sort])
    if output == "json":
        typer.echo(as_json([
            {**u.model_dump(), "cpu_cores": round(rate.get(u.tenant, 0.0) / interval, 4) if interval > 0 else None}
            for u in ordered
        ]))
        return
    rows = []
    for u in ordered:
        limit = limits.get(u.tenant, Resources())
        rows.append([
            u.tenant,
            "Running" if u.running else "Stopped",
            _cores(rate.get(u.tenant, 0.0), interval) + (f"/{format_cpu(limit.cpu)}" if limit.cpu else ""),
            f"{u.cpu_seconds:.1f}s",
            _of(u.memory_bytes, limit.memory),
            format_bytes(u.memory_peak_bytes),
            _of(u.disk_bytes, limit.disk),
            format_bytes(u.network_in_bytes),
            format_bytes(u.network_out_bytes),
        ])
    typer.echo(table(["NAME", "STATE", "CPU", "CPU TIME", "MEMORY", "PEAK", "DISK", "NET IN", "NET OUT"], rows))


def _nodes(store: "Store", node: str, usage: list[Usage], rate: dict[str, float], interval: float,
           output: str) -> None:
    from state.nodes import NodeStore

    records = {record.name: record for record in NodeStore(store).list_nodes()}
    names = sorted(set(records) | {node})
    live = {
        "cpu_cores": round(sum(rate.values()) / interval, 4) if interval > 0 else None,
        "memory_bytes": sum(u.memory_bytes for u in usage),
        "disk_bytes": sum(u.disk_bytes for u in usage),
        "network_in_bytes": sum(u.network_in_bytes for u in usage),
        "network_out_bytes": sum(u.network_out_bytes for u in usage),
        "tenants_running": sum(1 for u in usage if u.running),
    }
    if output == "json":
        typer.echo(as_json([
            {"name": name, "ready": records[name].ready if name in records else None,
             "live": live if name == node else None,
             "allocated": None if name not in records else {
                 "cpu_millicores": records[name].used.cpu_millicores, "memory_bytes": records[name].used.memory_bytes,
                 "disk_bytes": records[name].used.disk_bytes, "tenants": records[name].used.tenants}}
            for name in names
        ]))
        return
    rows = []
    for name in names:
        record = records.get(name)
        here = name == node
        rows.append([
            name,
            "-" if record is None else ("Ready" if record.ready else "NotReady"),
            str(live["tenants_running"]) if here else "-",
            _cores(sum(rate.values()), interval) if here else "-",
            format_bytes(int(live["memory_bytes"] or 0)) if here else "-",
            format_bytes(int(live["disk_bytes"] or 0)) if here else "-",
            "-" if record is None else f"{format_cpu(record.used.cpu_millicores)}/"
            f"{format_cpu(record.allocatable.cpu_millicores)}",
            "-" if record is None else f"{format_bytes(record.used.memory_bytes)}/"
            f"{format_bytes(record.allocatable.memory_bytes)}",
        ])
    typer.echo(table(["NAME", "STATUS", "RUNNING", "CPU", "MEMORY", "DISK", "CPU ALLOCATED", "MEMORY ALLOCATED"],
                     rows))
    if len(names) > 1:
        typer.echo("(CPU, MEMORY and DISK are read on this node only: run fleet top on each node for its own)")

"""Verbs on this node: prepare it (pool, built-in template) and show what it has."""

from pathlib import Path

import typer

from reconciler.cli.driver_options import DriverOptions, open_driver
from reconciler.cli.render import table
from reconciler.cli.settings import Settings, this_node
from specs import Template, format_bytes, format_cpu
from state.migrations import BUILTIN_TEMPLATE

app = typer.Typer(help="This node: its pool, capacity and memory sharing.", no_args_is_help=True)


@app.command("init")
def init(
    ctx: typer.Context,
    pool: Path | None = typer.Option(None, "--pool", help="A btrfs filesystem to use instead of a loop image."),
    pool_size: str = typer.Option("20Gi", "--pool-size", help="Size of the loop-backed image if one is made."),
    driver_name: str = typer.Option("auto", "--driver"),
) -> None:
    """Create (or re-attach) the pool, build the built-in template, and create the store."""
    settings: Settings = ctx.obj
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.open_store(create=True)
    driver, described = open_driver(
        DriverOptions(name=driver_name, data_dir=data_dir, pool=pool, pool_size=pool_size, node=this_node())
    )
    template: Template = BUILTIN_TEMPLATE
    driver.ensure_template(template)
    typer.echo(f"node {this_node()} ready: driver {described}; template {template.ref}; store {store.url}")


@app.command("status")
def status(
    ctx: typer.Context,
    pool: Path | None = typer.Option(None, "--pool"),
    driver_name: str = typer.Option("auto", "--driver"),
) -> None:
    """The driver, its tools, the node's capacity, what it runs, and what KSM merged."""
    settings: Settings = ctx.obj
    driver, described = open_driver(
        DriverOptions(name=driver_name, data_dir=settings.resolved_data_dir, pool=pool, node=this_node())
    )
    info, capacity = driver.info(), driver.capacity()
    running = [o for o in driver.list() if o.running]
    page = 4096
    rows = [
        ["node", this_node()],
        ["driver", described],
        ["capabilities", ", ".join(info.capabilities)],
        *[[f"tool {name}", version] for name, version in info.tools.items()],
        ["cpu", format_cpu(capacity.cpu_millicores)],
        ["memory", format_bytes(capacity.memory_bytes)],
        ["disk (pool)", format_bytes(capacity.disk_bytes)],
        ["tenant slots", str(capacity.max_tenants)],
        ["tenants running", str(len(running))],
        ["KSM pages shared", f"{capacity.ksm_pages_shared} ({format_bytes(capacity.ksm_pages_shared * page)})"],
        [
            "KSM pages sharing",
            f"{capacity.ksm_pages_sharing} (saves about {format_bytes(capacity.ksm_pages_sharing * page)})",
        ],
    ]
    typer.echo(table(["", ""], rows))

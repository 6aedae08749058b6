"""Verbs on this node: prepare it (pool, built-in template) and show what it has."""

from pathlib import Path

import typer

from reconciler.cli.driver_options import LXD_SOCKET_HELP, DriverOptions, open_driver
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
    driver_name: str = typer.Option("auto", "--driver", help="auto (nspawn), nspawn, lxd, or fake."),
    lxd_socket: Path | None = typer.Option(None, "--lxd-socket", help=LXD_SOCKET_HELP),
) -> None:
    """Create (or re-attach) the pool, build the built-in template, and create the store."""
    settings: Settings = ctx.obj
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.open_store(create=True)
    template: Template = BUILTIN_TEMPLATE
    from reconciler.cli.progress import progress

    # A spinner on a terminal only: the pool (a new image is made and formatted), then the template.
    with progress("Preparing this node", plain_steps=False) as step:
        step("opening the pool")
        driver, described = open_driver(
            DriverOptions(name=driver_name, data_dir=data_dir, pool=pool, pool_size=pool_size, node=this_node(),
                          lxd_socket=lxd_socket)
        )
        step(f"making template {template.ref}")
        driver.ensure_template(template)
    typer.echo(f"node {this_node()} ready: driver {described}; template {template.ref}; store {store.url}")


@app.command("status")
def status(
    ctx: typer.Context,
    pool: Path | None = typer.Option(None, "--pool"),
    driver_name: str = typer.Option("auto", "--driver", help="auto (nspawn), nspawn, lxd, or fake."),
    lxd_socket: Path | None = typer.Option(None, "--lxd-socket", help=LXD_SOCKET_HELP),
) -> None:
    """The driver, its tools, the node's capacity, what it runs, and what KSM merged."""
    settings: Settings = ctx.obj
    driver, described = open_driver(
        DriverOptions(name=driver_name, data_dir=settings.resolved_data_dir, pool=pool, node=this_node(),
                      lxd_socket=lxd_socket)
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


@app.command("configure")
def configure(
    ctx: typer.Context,
    node: str = typer.Argument("", help="The node's name; this machine's node when left out.", show_default=False),
    monthly_price: str = typer.Option(
        ..., "--monthly-price",
        help="The node's flat monthly price (e.g. 450 or 450.00, in the billing currency), which the dashboard's "
        "ledger divides by the tenants on it; 'none' removes it.",
    ),
) -> None:
    """Set a node's settings: its flat monthly price, for the dashboard's ledger. The node need not be
    registered yet (the node of a single `fleet up` never is)."""
    from reconciler.documents import BadInput
    from state.ledger import NodeSettings

    name = node or this_node()
    cents = None if monthly_price.strip().lower() == "none" else _cents(monthly_price, BadInput)
    settings: Settings = ctx.obj
    NodeSettings(settings.open_store().session).set_monthly_price(name, cents)
    typer.echo(f"node/{name} monthly price {'removed' if cents is None else f'{cents / 100:.2f}'}")


def _cents(text: str, bad: type[Exception]) -> int:
    from decimal import Decimal, InvalidOperation

    from state.ledger import MAX_MONTHLY_PRICE_CENTS

    try:
        amount = Decimal(text.strip().replace(",", "").replace("_", ""))
    except InvalidOperation:
        raise bad(f"--monthly-price: {text!r} is not an amount like 450 or 450.00") from None
    cents = amount * 100
    if not amount.is_finite() or cents != cents.to_integral_value() or not 0 <= cents <= MAX_MONTHLY_PRICE_CENTS:
        raise bad(f"--monthly-price: {text!r} must be between 0 and {MAX_MONTHLY_PRICE_CENTS // 100} with at most "
                  "two decimals")
    return int(cents)

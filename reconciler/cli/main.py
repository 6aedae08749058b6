"""`fleet`: the entry point. Maps errors to one line on stderr and an exit code in one place:
2 for input the user must fix (nothing was written), 1 for everything else."""

import sys
from pathlib import Path

import typer

from reconciler.cli import agents, fleet_nodes, node, plans, templates, tenants, tokens, web
from reconciler.cli.documents import BadInput
from reconciler.cli.logs import quiet
from reconciler.cli.settings import Settings
from reconciler.cli.up import up
from specs import FleetError, NotFound
from state import InvalidRecord

app = typer.Typer(
    name="fleet",
    help="Fleet: one isolated container per tenant, converged to records in a SQL store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    db: str | None = typer.Option(
        None, "--db", help="Store URL (sqlite:///PATH or postgresql://USER@HOST/DB). "
        "Default: FLEET_DB, else DATA_DIR/fleet.db."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Default: FLEET_DATA_DIR, else /var/lib/fleet (root) or ~/.local/share/fleet."
    ),
) -> None:
    ctx.obj = Settings(db=db, data_dir=data_dir)


app.command("up")(up)
app.command("apply")(tenants.apply)
app.command("get")(tenants.get)
app.command("describe")(tenants.describe)
app.command("delete")(tenants.delete)
app.command("pause")(tenants.pause)
app.command("resume")(tenants.resume)
app.command("events")(tenants.events)
app.add_typer(templates.app, name="template")
app.add_typer(node.app, name="node")
app.command("nodes")(fleet_nodes.nodes)
app.command("cordon")(fleet_nodes.cordon)
app.command("uncordon")(fleet_nodes.uncordon)
app.command("drain")(fleet_nodes.drain)
app.command("agent")(agents.agent)
app.command("scheduler")(agents.scheduler)
app.add_typer(tokens.app, name="token")
app.add_typer(tokens.keys, name="key")
app.add_typer(plans.app, name="plan")
app.command("api")(web.api)
app.command("gateway")(web.gateway)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("up", "api", "gateway", "agent", "scheduler"):
        quiet()
    try:
        app()
    except (BadInput, InvalidRecord) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except NotFound as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except FleetError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

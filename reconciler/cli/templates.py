"""Verbs on templates."""

import typer

from reconciler.cli.render import table
from reconciler.cli.settings import Settings
from specs import format_bytes, format_cpu

app = typer.Typer(help="Templates tenants are cloned from.", no_args_is_help=True)


@app.command("list")
def list_templates(ctx: typer.Context) -> None:
    """The templates tenants can name in spec.template, with their defaults."""
    settings: Settings = ctx.obj
    store = settings.open_store()
    rows = [
        [
            t.name,
            t.version,
            format_cpu(t.resources.cpu or 0),
            format_bytes(t.resources.memory or 0),
            format_bytes(t.resources.disk or 0),
            t.resources.pids,
            ",".join(str(p) for p in t.network.ingress or ()),
            t.description,
        ]
        for t in store.list_templates()
    ]
    typer.echo(table(["NAME", "VERSION", "CPU", "MEMORY", "DISK", "PIDS", "PORTS", "DESCRIPTION"], rows))

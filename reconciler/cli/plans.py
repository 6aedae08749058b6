"""`fleet plan apply -f|list|delete`: which template and quota each billing price or product buys."""

from typing import Any

import typer
from pydantic import ValidationError

from reconciler.cli.render import table
from reconciler.cli.settings import Settings
from reconciler.documents import BadInput, describe_validation, load_documents
from specs import format_bytes, format_cpu
from specs.billing_plan import Plan
from state.access import Access

app = typer.Typer(help="Billing plans: a price or product id -> template and resources.", no_args_is_help=True)


def _access(ctx: typer.Context) -> Access:
    settings: Settings = ctx.obj
    return Access(settings.open_store(create=True))


def parse_plans(documents: list[Any]) -> list[Plan]:
    plans = []
    for index, document in enumerate(documents, start=1):
        if not isinstance(document, dict):
            raise BadInput(f"document {index}: must be a mapping with kind: Plan, id, template")
        try:
            plans.append(Plan.model_validate(document))
        except ValidationError as error:
            raise BadInput(f"document {index}: {describe_validation(error)}") from error
    return plans


@app.command("apply")
def apply(
    ctx: typer.Context, file: str = typer.Option(..., "-f", "--filename", help="YAML or JSON; - for stdin.")
) -> None:
    """Create or replace plans, all or none."""
    plans = parse_plans(load_documents(file))
    _access(ctx).apply_plans(plans)
    for plan in plans:
        typer.echo(f"plan/{plan.id} applied")


@app.command("list")
def list_plans(ctx: typer.Context) -> None:
    """Plans and what they buy (empty resources: the template's defaults)."""
    rows = []
    for plan in _access(ctx).list_plans():
        r = plan.resources
        rows.append([plan.id, plan.template, format_cpu(r.cpu) if r.cpu else "-",
                     format_bytes(r.memory) if r.memory else "-", format_bytes(r.disk) if r.disk else "-",
                     str(r.pids or "-"), format_bytes(r.io) if r.io else "-", plan.description])
    typer.echo(table(["ID", "TEMPLATE", "CPU", "MEMORY", "DISK", "PIDS", "IO", "DESCRIPTION"], rows))


@app.command("delete")
def delete(ctx: typer.Context, plan_id: str = typer.Argument(..., help="The price or product id.")) -> None:
    """Delete a plan (tenants on it keep their spec; new signups on it are refused)."""
    _access(ctx).delete_plan(plan_id)
    typer.echo(f"plan/{plan_id} deleted")

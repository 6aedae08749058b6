"""Verbs on tenants: apply, get, describe, delete, pause, resume (events: `events.py`).

On the store, or, with `--server`, over the API (`remote.py`): so the specs, the store and the planner are
imported inside each verb's store path, never at the top."""

from __future__ import annotations

import getpass
import time
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from reconciler.cli.render import as_json, as_yaml, table
from reconciler.cli.settings import Settings
from reconciler.documents import BadInput, load_documents

if TYPE_CHECKING:
    from reconciler.selectors import FieldRequirement
    from specs import Tenant
    from state import Store
    from state.records import DesiredRecord


class Output(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def apply(
    ctx: typer.Context,
    filename: str = typer.Option(..., "-f", "--filename", help="A YAML or JSON file of tenants, or - for stdin."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change and the plan; write nothing."),
) -> None:
    """Create or update tenants from a file: all documents or none."""
    documents = load_documents(filename)
    remote = _settings(ctx).remote()
    if remote is not None:
        from reconciler.cli import remote as over_api

        typer.echo("\n".join(over_api.apply(remote, documents, dry_run)))
        return
    from reconciler.applying import apply_tenants
    from reconciler.documents import parse_tenants

    tenants = parse_tenants(documents)
    for applied in apply_tenants(_settings(ctx).open_store(), tenants, dry_run=dry_run):
        typer.echo("\n".join(applied.lines()))


def _print_tenants(store: Store, tenants: list[Tenant], output: Output, header: bool = True) -> None:
    from reconciler import tenant_table
    from reconciler.tenant_table import document as tenant_document

    if output == Output.json:
        typer.echo(as_json({"items": [tenant_document(t) for t in tenants]}))
    elif output == Output.yaml:
        typer.echo(as_yaml({"items": [tenant_document(t) for t in tenants]}))
    else:
        wide = output == Output.wide
        rendered = table(tenant_table.headers(wide=wide), tenant_table.rows(store, tenants, wide=wide))
        typer.echo(rendered if header else "\n".join(rendered.splitlines()[1:]))


def get(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="tenants, or tenant NAME"),
    name: str | None = typer.Argument(None),
    output: Output = typer.Option(Output.table, "-o", "--output"),
    watch: bool = typer.Option(False, "-w", "--watch", help="Keep printing tenants as they change."),
    selector: str | None = typer.Option(None, "-l", "--selector", help="Only tenants with these labels: k=v,k2=v2"),
    field_selector: str | None = typer.Option(
        None, "--field-selector", help="Only tenants whose fields match: phase, node, template, plan with = or !=, "
        "e.g. phase!=Running,node=n1"),
) -> None:
    """List tenants, or show one."""
    if kind not in ("tenants", "tenant"):
        raise BadInput(f"kind: must be 'tenants' or 'tenant', not {kind!r}")
    remote = _settings(ctx).remote()
    if remote is not None:
        from reconciler.cli import remote as over_api

        if watch and name is None:
            over_api.watch_tenants(remote, output.value, selector, field_selector, typer.echo)
            return
        typer.echo("\n".join(over_api.print_tenants(remote, name, output.value, selector, field_selector)))
        return
    from reconciler.selectors import parse_field_selector, parse_label_selector
    from reconciler.tenant_table import document as tenant_document
    from specs import NotFound

    labels = parse_label_selector(selector) if selector else None
    fields = parse_field_selector(field_selector) if field_selector else []
    store = _settings(ctx).open_store()
    if name:
        tenant = store.get_tenant(name)
        if tenant is None:
            raise NotFound(f"tenant {name} not found; list them with fleet get tenants")
        if output in (Output.json, Output.yaml):
            document = tenant_document(tenant)
            typer.echo(as_json(document) if output == Output.json else as_yaml(document))
        else:
            _print_tenants(store, [tenant], output)
        return
    everything = store.list_tenants(labels=labels).items
    tenants = _by_fields(store, everything, fields)
    _print_tenants(store, tenants, output)
    if not watch:
        return
    seen = {t.metadata.name: t.metadata.revision for t in tenants}
    try:
        while True:
            time.sleep(0.2)  # a display refresh, not a synchronisation
            everything = store.list_tenants(labels=labels).items
            current = _by_fields(store, everything, fields)
            changed = [t for t in current if seen.get(t.metadata.name) != t.metadata.revision]
            names = {t.metadata.name for t in everything}
            for gone in sorted(set(seen) - names):
                typer.echo(f"{gone}   (deleted)")
                seen.pop(gone)
            for left in set(seen) - {t.metadata.name for t in current}:  # no longer matches the field selector
                seen.pop(left)
            if changed:
                _print_tenants(store, changed, output, header=False)
                seen.update({t.metadata.name: t.metadata.revision for t in changed})
    except KeyboardInterrupt:
        return


def _by_fields(store: Store, tenants: list[Tenant], fields: list[FieldRequirement]) -> list[Tenant]:
    if not fields:
        return tenants
    from reconciler.selectors import needs_plans, select
    from state.aggregates import Aggregates

    return select(tenants, fields, Aggregates(store).plans_by_tenant() if needs_plans(fields) else {})


def describe(
    ctx: typer.Context, kind: str = typer.Argument(..., help="tenant"), name: str = typer.Argument(...)
) -> None:
    """Everything about one tenant: spec, status, conditions, the last events."""
    if kind != "tenant":
        raise BadInput(f"kind: must be 'tenant', not {kind!r}")
    from reconciler.tenant_table import age
    from specs import NotFound
    from specs.tenant import egress_summary
    store = _settings(ctx).open_store()
    tenant = store.get_tenant(name)
    if tenant is None:
        raise NotFound(f"tenant {name} not found; list them with fleet get tenants")
    desired = store.desired(name)
    status = tenant.status
    resources = desired.spec.resources.display() if desired and desired.spec else tenant.spec.resources.display()
    # Resolved, a None is an io without a limit; unresolved (template unknown), the default is unknown too.
    unset = "unlimited" if desired and desired.spec else "-"
    shown = " ".join(f"{k}={unset if v is None else v}" for k, v in resources.items())
    ports = desired.spec.network.ingress if desired and desired.spec else tenant.spec.network.ingress
    egress = desired.spec.network.egress if desired and desired.spec else tenant.spec.network.egress
    lines = [
        f"Name:          {name}",
        f"Labels:        {', '.join(f'{k}={v}' for k, v in tenant.metadata.labels.items()) or '<none>'}",
        f"Created:       {tenant.metadata.created_at:%Y-%m-%d %H:%M:%S} UTC ({age(tenant.metadata.created_at)} ago)"
        if tenant.metadata.created_at
        else "Created:       -",
        f"Template:      {tenant.spec.template}"
        + (f" (cloned {status.template})" if status and status.template else ""),
        f"Resources:     {shown}",
        f"Ingress ports: {', '.join(str(p) for p in ports or ()) or 'none'}",
        f"Egress:        {egress_summary(egress) if egress is not None else '-'}",
        f"Paused:        {'yes (observe only)' if tenant.spec.paused else 'no'}",
        f"Sleep:         {_sleep_line(desired)}",
        f"Generation:    {tenant.metadata.generation} (observed {status.observed_generation if status else 0})",
        f"Phase:         {status.phase.value if status else 'Pending'}",
        f"Node:          {status.node if status and status.node else '<not bound yet>'}",
        f"Address:       {status.address if status and status.address else '-'}",
        f"URL:           {status.url if status and status.url else '-'}",
    ]
    if tenant.metadata.deletion_requested_at:
        lines.append(f"Deleting:      requested {age(tenant.metadata.deletion_requested_at)} ago")
    if status and status.last_error:
        lines.append(f"Last error:    {status.last_error}")
    lines.append("Conditions:")
    if status and status.conditions:
        rows = [[c.type, c.status.value, c.reason, age(c.last_transition_time), c.message] for c in status.conditions]
        lines += ["  " + line for line in table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows).splitlines()]
    else:
        lines.append("  <none yet: the reconciler has not reported>")
    lines.append("Events:")
    events = store.events(tenant=name, limit=15)
    if events:
        rows = [
            [
                age(e.created_at),
                e.type,
                e.reason,
                f"{e.duration_ms:.1f}ms" if e.duration_ms is not None else "",
                e.message,
            ]
            for e in events
        ]
        lines += ["  " + line for line in table(["AGE", "TYPE", "REASON", "TOOK", "MESSAGE"], rows).splitlines()]
    else:
        lines.append("  <none>")
    typer.echo("\n".join(lines))


def delete(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="tenant"),
    name: str = typer.Argument(...),
    wait: bool = typer.Option(False, "--wait", help="Return only when everything the tenant had is gone."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds --wait waits at most."),
) -> None:
    """Delete a tenant and everything it has (the reconciler does it and records a receipt)."""
    if kind != "tenant":
        raise BadInput(f"kind: must be 'tenant', not {kind!r}")
    remote = _settings(ctx).remote()
    if remote is not None:
        from reconciler.cli import remote as over_api

        over_api.delete(remote, name, wait, timeout, typer.echo)
        return
    from specs import NotFound

    store = _settings(ctx).open_store()
    if not store.request_delete(name):
        raise NotFound(f"tenant {name} not found; list them with fleet get tenants")
    typer.echo(f"tenant/{name} deletion requested")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while store.get_tenant(name) is not None:
        if time.monotonic() > deadline:
            typer.echo(
                f"error: tenant {name} is still being deleted after {timeout:.0f}s; see fleet describe tenant {name}",
                err=True,
            )
            raise typer.Exit(1)
        time.sleep(0.05)  # polling a condition with a deadline
    receipt = next((e for e in reversed(store.events(tenant=name, limit=20)) if e.reason == "Deleted"), None)
    removed = ", ".join(receipt.details.get("removed", [])) if receipt else ""
    typer.echo(f"tenant/{name} deleted" + (f"; removed: {removed}" if removed else ""))


def _set_paused(ctx: typer.Context, name: str, paused: bool) -> None:
    remote = _settings(ctx).remote()
    if remote is not None:
        from reconciler.cli import remote as over_api

        typer.echo(over_api.set_paused(remote, name, paused))
        return
    generation = _settings(ctx).open_store().set_paused(name, paused)
    typer.echo(f"tenant/{name} {'paused' if paused else 'resumed'}, generation {generation}")


def pause(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Stop reconciling a tenant: the reconciler only observes it until resumed."""
    _set_paused(ctx, name, True)


def resume(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Reconcile a paused tenant again."""
    _set_paused(ctx, name, False)



def _sleep_line(desired: DesiredRecord | None) -> str:
    from specs import format_duration

    spec = desired.spec if desired else None
    if spec is None:
        return "-"
    rule = f"after {format_duration(spec.sleep_after)} without a visitor" if spec.sleep_after else "never"
    if spec.asleep_since is not None:
        return f"asleep since {spec.asleep_since:%Y-%m-%d %H:%M:%S} UTC ({rule})"
    return rule


def _power(ctx: typer.Context, name: str, asleep: bool, wait: bool, timeout: float) -> None:
    remote = _settings(ctx).remote()
    if remote is not None:
        from reconciler.cli import remote as over_api

        typer.echo(over_api.set_asleep(remote, name, asleep, wait))
        return
    from reconciler import waking
    from specs import NotFound, Phase

    store = _settings(ctx).open_store()
    who = f"{getpass.getuser()} (fleet {'sleep' if asleep else 'wake'})"
    try:
        changed = (waking.request_sleep if asleep else waking.request_wake)(store, name, who)
    except NotFound:
        typer.echo(f"tenant {name} not found; list them with fleet get tenants", err=True)
        raise typer.Exit(1) from None
    verb = "asleep" if asleep else "awake"
    if not changed and not wait:
        typer.echo(f"tenant/{name} was already {verb}")
    if wait:
        tenant = waking.wait_for_phase(store, name, frozenset({Phase.SLEEPING if asleep else Phase.RUNNING}), timeout)
        phase = tenant.status.phase.value if tenant.status else "Pending"
        typer.echo(f"tenant/{name} {verb}: {phase}")
    elif changed:
        typer.echo(f"tenant/{name} marked {verb}; its reconciler {'stops' if asleep else 'starts'} the container")


def sleep(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    wait: bool = typer.Option(False, "--wait", help="Return once the container is stopped (phase Sleeping)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds --wait waits at most."),
) -> None:
    """Put a tenant to sleep now: its container stops, everything else stays; a request wakes it."""
    _power(ctx, name, True, wait, timeout)


def wake(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    wait: bool = typer.Option(False, "--wait", help="Return once it is Running again."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds --wait waits at most."),
) -> None:
    """Wake a sleeping tenant: its container starts again (--wait: until it is Running)."""
    _power(ctx, name, False, wait, timeout)

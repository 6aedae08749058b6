"""`fleet events [NAME] [--watch]`: what the reconciler did, oldest first; `--watch` keeps printing new
events as they are recorded, as `kubectl get events --watch` does, until Ctrl-C.

The watch follows the event log by id (`reconciler.event_follower`): it prints each event once, and one
whose transaction commits after a higher id's (PostgreSQL) too. What it must never do: write.
"""

from datetime import UTC, datetime
from enum import StrEnum

import typer

from reconciler.cli.render import as_json, as_yaml, table
from reconciler.cli.settings import Settings
from reconciler.tenant_table import age
from specs import Event

HEADERS = ["AGE", "TENANT", "TYPE", "REASON", "TOOK", "MESSAGE"]
WATCH_REFRESH_SECONDS = 0.5  # how often --watch asks the store for new events (a display refresh)
WATCH_BATCH = 10_000  # events printed per refresh at most (a burst larger than that shows its newest)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def _row(event: Event, now: datetime) -> list[object]:
    took = f"{event.duration_ms:.1f}ms" if event.duration_ms is not None else ""
    return [age(event.created_at, now), event.tenant, event.type, event.reason, took, event.message]


def _print(found: list[Event], output: Output, *, header: bool) -> None:
    if output == Output.json:
        for event in found:  # one JSON document a line: what a script reading a stream wants
            typer.echo(as_json(event.model_dump(mode="json")).replace("\n", ""))
        return
    if output == Output.yaml:
        typer.echo(as_yaml([event.model_dump(mode="json") for event in found]).rstrip())
        return
    rendered = table(HEADERS, [_row(event, datetime.now(UTC)) for event in found])
    typer.echo(rendered if header else "\n".join(rendered.splitlines()[1:]))


def events(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only this tenant's events."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="How many of the newest to show first."),
    output: Output = typer.Option(Output.table, "-o", "--output"),
    watch: bool = typer.Option(False, "-w", "--watch", help="Keep printing new events as they happen."),
) -> None:
    """What the reconciler did, newest last; --watch keeps printing new events until Ctrl-C."""
    settings: Settings = ctx.obj
    store = settings.open_store()
    found = store.events(tenant=name, limit=limit)
    if not watch:
        if output == Output.json:
            typer.echo(as_json([event.model_dump(mode="json") for event in found]))
        else:
            _print(found, output, header=True)
        return
    import time

    if found or output == Output.table:
        _print(found, output, header=True)
    from reconciler.event_follower import EventFollower

    # Not simply "after the newest id printed": an id taken by a transaction that commits later than a
    # higher one would be skipped for good (PostgreSQL); the follower re-reads after its floor instead.
    follower = EventFollower(lambda floor: store.events(tenant=name, after_id=floor, limit=WATCH_BATCH),
                             time.monotonic, shown=found)
    try:
        while True:
            time.sleep(WATCH_REFRESH_SECONDS)  # a display refresh, not a synchronisation
            new = follower.poll()
            if new:
                _print(new, output, header=False)
    except KeyboardInterrupt:
        return

"""`fleet`: the entry point. Maps errors to one line on stderr and an exit code in one place:
2 for input the user must fix (nothing was written), 1 for everything else.

Why it is built this way: an operator types these commands all day, so `fleet --help` answers from the table
below and imports no command, and a command imports only its own module (`fleet get` never loads the web
server, the agent or the drivers). The global options (`--db`, `--data-dir`, `--server`, `--token-file`) are
accepted before the command and after it, as kubectl accepts its global flags. With `--server`, the tenant
verbs speak HTTP to the API and load neither pydantic nor the store (`cli/remote.py`).
What it must never do: import a command's module at its top.
"""

import copy
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import typer
from typer.core import TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo

from reconciler.cli.settings import DATA_DIR_HELP, DB_HELP, SERVER_HELP, TOKEN_FILE_HELP, Settings

# Every command, in the order `fleet --help` lists them, with the first sentence of its help.
COMMANDS = {
    "up": "Run the operator (store, controller, driver, API, gateway) in this process until Ctrl-C.",
    "apply": "Create or update tenants from a file: all documents or none.",
    "get": "List tenants, or show one.",
    "describe": "Everything about one tenant or node: spec, status, conditions, the last events; a node's room.",
    "delete": "Delete a tenant and everything it has (the reconciler does it and records a receipt).",
    "pause": "Stop reconciling a tenant: the reconciler only observes it until resumed.",
    "resume": "Reconcile a paused tenant again.",
    "sleep": "Put a tenant to sleep now: its container stops, everything else stays; a request wakes it.",
    "wake": "Wake a sleeping tenant: its container starts again (--wait: until it is Running).",
    "events": "What the reconciler did, newest last; --watch keeps printing new events until Ctrl-C.",
    "exec": "Run a command inside a tenant as its root (-i: stdin, -t: a terminal); exit with its exit code.",
    "nodes": "Every registered node: Ready, cordoned, tenants and allocatable room, driver, KSM savings.",
    "cordon": "Stop new bindings to NODE; its tenants keep running.",
    "uncordon": "Allow new bindings to NODE again.",
    "drain": "Cordon NODE and list its tenants.",
    "top": "What tenants and nodes use now: CPU, memory, disk, network, read from this node's host.",
    "doctor": "Check this host and the store: kernel features, tools, cgroups, KSM, the pool; say what to fix.",
    "agent": "Run this node's agent: register the node, heartbeat, reconcile the tenants bound to it.",
    "scheduler": "Run a scheduler: one is active at a time (a leader lease); it binds unbound tenants to nodes, "
    "finishes the deletes of tenants deleted before they were bound, and prunes old records.",
    "api": "Serve the HTTP API (tenants, plans, claims, the billing webhook) on the store, until Ctrl-C.",
    "gateway": "Serve the gateway: NAME.BASE-DOMAIN -> the tenant's container, for holders of its claim.",
    "template": "Templates tenants are cloned from.",
    "node": "This node: its pool, capacity and memory sharing.",
    "token": "API tokens: billing (write tenants, mint claims), operator (all), viewer (read).",
    "key": "Keys claims are signed with: rotate without logging anyone out, revoke to.",
    "plan": "Billing plans: a price or product id -> template and resources.",
}
SERVERS = {"up", "api", "gateway", "agent", "scheduler"}  # long-running: they configure their own logs
PATH_OPTIONS = {"data_dir", "token_file"}  # the global options that are paths


def target(name: str) -> Callable[..., None] | typer.Typer:
    """The function or group of verbs behind a command, its module imported only now."""
    if name not in SERVERS:
        from reconciler.cli.logs import quiet

        quiet()
        # pydantic scans every installed package's entry points for plugins when the first model is built
        # (tens of ms); a short-lived command runs none. `PYDANTIC_DISABLE_PLUGINS=` (empty) turns them on.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    match name:
        case "up":
            from reconciler.cli.up import up

            return up
        case "apply" | "get" | "delete" | "pause" | "resume" | "sleep" | "wake":
            from reconciler.cli import tenants

            return _verb(tenants, name)
        case "describe":
            from reconciler.cli import describe

            return describe.describe
        case "events":
            from reconciler.cli import events

            return events.events
        case "exec":
            from reconciler.cli import exec as exec_command

            return exec_command.exec_
        case "top":
            from reconciler.cli import top

            return top.top
        case "doctor":
            from reconciler.cli import doctor

            return doctor.doctor
        case "nodes" | "cordon" | "uncordon" | "drain":
            from reconciler.cli import fleet_nodes

            return _verb(fleet_nodes, name)
        case "agent" | "scheduler":
            from reconciler.cli import fleet_daemons

            return _verb(fleet_daemons, name)
        case "api" | "gateway":
            from reconciler.cli import servers

            return _verb(servers, name)
        case "template":
            from reconciler.cli import templates

            return templates.app
        case "node":
            from reconciler.cli import this_node

            return this_node.app
        case "token":
            from reconciler.cli import tokens

            return tokens.app
        case "key":
            from reconciler.cli import tokens

            return tokens.keys
        case "plan":
            from reconciler.cli import plans

            return plans.app
    raise KeyError(name)


def _verb(module: ModuleType, name: str) -> Callable[..., None]:
    return cast(Callable[..., None], getattr(module, name))


def _remember(ctx: typer.Context, param: Any, value: Any) -> None:
    """A global option after the command: the same settings as before it (given twice, the later wins).
    Click hands the raw value to this callback (typer converts only its own parameters): paths made here."""
    if value is not None:
        setattr(ctx.ensure_object(Settings), param.name, Path(value) if param.name in PATH_OPTIONS else value)


def _with_global_options(command: Any, options: list[Any]) -> Any:
    """`command`, and every verb under it, also takes the global options, with the same help."""
    for option in options:
        local = copy.copy(option)
        local.expose_value = False
        local.callback = _remember
        command.params.append(local)
    for sub in getattr(command, "commands", {}).values():
        _with_global_options(sub, options)
    return command


def _click_command(name: str) -> Any:
    """What `app.add_typer`/`app.command` would have made of the command, made only when it is needed."""
    found = target(name)
    if isinstance(found, typer.Typer):
        group = get_group_from_info(
            TyperInfo(found), pretty_exceptions_short=True, suggest_commands=True, rich_markup_mode=None
        )
        group.name = name
        return group
    return get_command_from_info(
        CommandInfo(name=name, callback=found), pretty_exceptions_short=True, rich_markup_mode=None
    )


class FleetCommands(TyperGroup):
    """Lists the commands from `COMMANDS`; builds one (importing its module) only when it is looked up."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = _with_global_options(_click_command(cmd_name), self.params)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name = args[0]
        if name not in COMMANDS and not name.startswith("-"):
            from difflib import get_close_matches  # only for a mistyped command

            close = ", ".join(repr(match) for match in get_close_matches(name, COMMANDS))
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {close}?" if close else ""))
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


app = typer.Typer(
    name="fleet",
    cls=FleetCommands,
    help="Fleet: one isolated container per tenant, converged to records in a SQL store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Rich would add as much to `fleet --help` as all it imports now
    add_completion=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    server: str | None = typer.Option(None, "--server", help=SERVER_HELP),
    token_file: Path | None = typer.Option(None, "--token-file", help=TOKEN_FILE_HELP),
) -> None:
    ctx.obj = Settings(db=db, data_dir=data_dir, server=server, token_file=token_file)


def exit_code(error: Exception) -> int | None:
    """2 for input the user must fix, 1 for any other error Fleet explains, None for a bug (a traceback).
    Imported here, not at the top; the specs and the store only when loaded already (a command that failed
    in them has), as `fleet --server` loads neither."""
    from reconciler.documents import BadInput

    if isinstance(error, BadInput):
        return 2
    remote = sys.modules.get("reconciler.cli.remote")
    if remote is not None and isinstance(error, remote.RemoteError):
        return 1
    state = sys.modules.get("state")
    if state is not None and isinstance(error, state.InvalidRecord):
        return 2
    specs = sys.modules.get("specs")
    if specs is not None and isinstance(error, specs.FleetError):
        return 1
    return None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()

"""`fleet exec NAME [-i] [-t] -- COMMAND...`: run a command inside a tenant as its root, streams attached, and
exit with its exit code.

On the tenant's node (the local store, as root): the tenant must be bound to this node (`--node`) and
Running; the driver starts the command inside the container (`Driver.exec`) and this process pumps the
streams. With `--server` (or FLEET_SERVER): over the API's websocket (`exec_remote`), without loading the
store or pydantic. `-i` passes this process's stdin (else the command's input is empty); `-t` gives the
command a terminal (implies `-i`; needs one here), in raw mode, resized with this one.

Errors before the command starts are one line and exit 1 (2 for input to fix); after, the exit code is the
command's (126: it could not be run, 127: not found, 128+N: killed by signal N).
What it must never do: join the command into a shell line.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import select
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from reconciler.cli import terminal
from reconciler.cli.settings import Settings, this_node

if TYPE_CHECKING:
    from drivers import ExecProcess

CHUNK = 65536


def exec_(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The tenant."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --); never run by a shell."),
    stdin: bool = typer.Option(False, "-i", "--stdin", help="Pass this process's stdin to the command."),
    tty: bool = typer.Option(False, "-t", "--tty", help="Give the command a terminal (implies -i; needs one here)."),
    driver_name: str = typer.Option("auto", "--driver", help="This node's driver: auto (nspawn), nspawn, lxd."),
    pool: Path | None = typer.Option(None, "--pool", help="The btrfs filesystem Fleet uses, if not DATA_DIR/pool."),
    node: str = typer.Option(this_node(), "--node", help="This node's name (the tenant must be bound to it)."),
) -> None:
    """Run a command inside a tenant as its root (-i: stdin, -t: a terminal); exit with its exit code.

    As the tenant's root in its own user namespace, cgroups and limits, never the host's. On the tenant's
    node (root, the local store) the driver runs it; with --server, the API's exec websocket does. Every
    exec is recorded as events on the tenant (who, the command, the exit code, how long)."""
    from reconciler.documents import BadInput

    if tty and not os.isatty(0):
        raise BadInput("-t: stdin is not a terminal (drop -t, or run fleet exec from a terminal)")
    settings: Settings = ctx.obj
    remote = settings.remote()
    rows, cols = terminal.size(0) if tty else (24, 80)
    term = os.environ.get("TERM", "xterm-256color") or "xterm-256color"
    try:
        if remote is not None:
            from reconciler.cli.exec_remote import run_remote

            code = run_remote(remote, name, list(command), tty=tty, forward_stdin=stdin or tty, rows=rows, cols=cols,
                              term=term)
        else:
            code = _run_local(settings, name, list(command), tty=tty, forward_stdin=stdin or tty, rows=rows,
                              cols=cols, term=term, driver_name=driver_name, pool=pool, node=node)
    except terminal.Hangup as hangup:  # the session is closed and the command killed
        code = hangup.exit_code
    raise typer.Exit(code)


def local_user() -> str:
    """Who runs this exec, for the audit event: the user sudo was run by, else this process's user."""
    return "local:" + (os.environ.get("SUDO_USER") or getpass.getuser())


def _run_local(settings: Settings, name: str, command: list[str], *, tty: bool, forward_stdin: bool, rows: int,
               cols: int, term: str, driver_name: str, pool: Path | None, node: str) -> int:
    from drivers import ExecRequest
    from reconciler import exec_session
    from reconciler.cli.driver_options import DriverOptions, open_driver
    from reconciler.documents import BadInput

    try:
        request = ExecRequest(tuple(command), tty=tty, rows=rows, cols=cols, term=term)
    except ValueError as error:
        raise BadInput(f"command: {error}") from error
    store = settings.open_store()
    exec_session.check_target(store, node, name)  # before opening the driver: a wrong node fails fast
    driver, _described = open_driver(DriverOptions(name=driver_name, data_dir=settings.resolved_data_dir, pool=pool,
                                                   node=node))
    code: int | None = None
    note = ""
    try:
        session = exec_session.start(store, driver, node, name, request, local_user())
        try:
            with terminal.hangups_end_the_session():
                code = pump(session.process, forward_stdin=forward_stdin)
        except (KeyboardInterrupt, terminal.Hangup) as stopped:
            note = f" ({type(stopped).__name__})"
            raise
        finally:
            session.process.close()
            session.finish(code, note=note)
    finally:
        driver.close()
        store.close()
    assert code is not None
    return code


def pump(process: ExecProcess, *, forward_stdin: bool, stdin_fd: int = 0, out_fd: int = 1, err_fd: int = 2) -> int:
    """Copy stdin to the command and its output here until it ends; its exit code. With a terminal, this
    one is raw and resizes reach the command."""
    if process.tty and os.isatty(stdin_fd):
        with terminal.raw(stdin_fd), terminal.on_resize(stdin_fd, process.resize):
            process.resize(*terminal.size(stdin_fd))  # the size may have changed since the request
            return _copy(process, forward_stdin, stdin_fd, out_fd, err_fd)
    return _copy(process, forward_stdin, stdin_fd, out_fd, err_fd)


def _read(fd: int) -> bytes:
    """A chunk, b"" at the end (a terminal's master says EIO once the command side is closed)."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno == errno.EIO:
            return b""
        raise


def _copy(process: ExecProcess, forward_stdin: bool, stdin_fd: int, out_fd: int, err_fd: int) -> int:
    outputs = {process.stdout: out_fd}
    if process.stderr is not None:
        outputs[process.stderr] = err_fd
    reading = forward_stdin
    if not reading:
        process.close_stdin()
    while outputs:
        watched = [*outputs, *([stdin_fd] if reading else [])]
        ready, _, _ = select.select(watched, [], [], 0.1)
        for fd in ready:
            if fd == stdin_fd and reading:
                data = os.read(stdin_fd, CHUNK)
                if data:
                    with contextlib.suppress(BrokenPipeError):
                        process.write(data)
                else:
                    reading = False
                    process.close_stdin()
                continue
            chunk = _read(fd)
            if chunk:
                terminal.write_all(outputs[fd], chunk)
            else:
                del outputs[fd]
        if process.poll() is not None:
            _drain(outputs)  # what it wrote before it ended; a background child holding the pipe is not waited for
            break
    return process.wait()


def _drain(outputs: dict[int, int]) -> None:
    for fd, target in outputs.items():
        os.set_blocking(fd, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := _read(fd):
                terminal.write_all(target, chunk)
    with contextlib.suppress(OSError):
        sys.stdout.flush()

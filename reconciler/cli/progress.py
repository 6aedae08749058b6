"""Progress of the CLI's long operations (building or importing a template, preparing a node): a rich
spinner with the current step and the time taken, on a terminal only.

Why like this: a build takes from seconds (busybox) to minutes (debootstrap), and a person at a terminal
should see it is alive and where it is; a script or a log reading the output wants the plain step lines it
always had, and no control characters. rich is imported only once a spinner is shown, so `fleet --help`
and every short command start without it (tests/bench/bench_cli.py). What it must never do: write to
stdout (results go there; progress goes to stderr).
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer


def on_terminal() -> bool:
    """Both streams are a terminal: progress on stderr would otherwise end up in a file or a pipe."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress(title: str, *, plain_steps: bool = True) -> Iterator[Callable[[str], None]]:
    """Yields `step(line)` for the operation's steps. On a terminal: a spinner titled `title` with the
    current step and the elapsed time, and each step printed above it as it starts; the spinner is gone when the
    block ends. Elsewhere: each step as an indented line on stderr (`plain_steps`), or nothing."""
    if not on_terminal():
        yield (lambda line: typer.echo(f"  {line}", err=True)) if plain_steps else (lambda line: None)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as shown:
        task = shown.add_task(title)

        def step(line: str) -> None:
            console.print(f"  {line}", markup=False, highlight=False)
            shown.update(task, description=f"{title}: {line}")

        yield step


__all__ = ["on_terminal", "progress"]

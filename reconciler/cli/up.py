"""`fleet up`: the whole operator in one process, on the embedded store, until Ctrl-C."""

import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import typer
from loguru import logger

from drivers import Driver, available_drivers, create_driver
from reconciler.cli.logs import configure
from reconciler.cli.settings import Settings
from reconciler.controller import Controller, ControllerConfig
from specs import PermanentError


def choose_driver(requested: str, data_dir: Path) -> tuple[Driver, str]:
    """The driver to run and a line saying what it is. 'auto' means the real one where the host can."""
    names = available_drivers()
    if requested == "auto":
        requested = "nspawn" if "nspawn" in names else "fake"
    if requested not in names:
        raise PermanentError(f"--driver: unknown driver {requested!r}; choose one of: auto, {', '.join(names)}")
    if requested == "fake":
        return create_driver("fake"), "fake (in memory: containers are simulated and vanish when fleet up stops)"
    driver = create_driver(requested, data_dir=data_dir)
    return driver, f"{requested} ({driver.info().version})"


def up(
    ctx: typer.Context,
    driver_name: str = typer.Option("auto", "--driver", help="auto (the real driver where the host can), or fake."),
    node: str = typer.Option(socket.gethostname().split(".")[0].lower(), "--node", help="This node's name."),
    workers: int = typer.Option(4, "--workers", min=1, max=64),
    resync: float = typer.Option(30.0, "--resync-seconds", min=0.5, help="How often to compare all with the host."),
    base_domain: str = typer.Option("fleet.localhost", "--base-domain", help="Tenant URLs are NAME.BASE-DOMAIN."),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run the operator (store, controller, driver) in this process until Ctrl-C."""
    configure(log_level)
    settings: Settings = ctx.obj
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.open_store(create=True)
    driver, described = choose_driver(driver_name, data_dir)
    controller = Controller(
        store, driver, ControllerConfig(node=node, workers=workers, resync_seconds=resync, base_domain=base_domain)
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    controller.start()
    engine = "SQLite, WAL" if store.url.startswith("sqlite") else store.dialect.name
    typer.echo(
        f"Fleet is up. Store: {store.url} ({engine}). Driver: {described}. Node: {node}. "
        f"Try: fleet apply -f docs/examples/tenant.yaml. Stop with Ctrl-C.",
        err=True,
    )
    stop.wait()
    logger.info("Stopping: finishing the passes under way")
    controller.stop()
    driver.close()
    store.close()
    typer.echo("Fleet stopped. Containers keep running; the next fleet up picks them up.", err=True)

"""`fleet agent` and `fleet scheduler`: the long-running processes of a fleet on PostgreSQL.

Why here: each is a thin door onto `reconciler.agent` and `reconciler.scheduler` (flags, signals, a
retry while the store is not reachable yet). What it must never do: hold placement or reconcile logic.
"""

import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer
from loguru import logger

from drivers import limit_heap_arenas
from reconciler.agent import Agent, AgentConfig
from reconciler.cli.driver_options import EGRESS_INTERFACE_HELP, LXD_SOCKET_HELP, DriverOptions, open_driver
from reconciler.cli.logs import configure
from reconciler.cli.settings import Settings, this_node
from reconciler.housekeeping import RETAIN_HELP, Housekeeper, HousekeeperConfig, parse_retention
from reconciler.scheduler import Scheduler, SchedulerConfig, Strategy
from specs import PermanentError, TransientError
from state import Store

if TYPE_CHECKING:
    from drivers import Driver
    from reconciler.metrics import Metrics
    from reconciler.web.server import BackgroundServer


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PermanentError(f"--label: {pair!r} must be KEY=VALUE")
        labels[key] = value
    return labels


def _open_store(settings: Settings, wait_seconds: float = 60.0) -> Store:
    """The store, waiting for it while it is unreachable (a database restarting is not fatal)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return settings.open_store(create=True)
        except TransientError as error:
            if time.monotonic() > deadline:
                raise
            logger.warning("Store not reachable yet, will retry: {}", error)
            time.sleep(1)


def _until_signal() -> threading.Event:
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return stop


def agent(
    ctx: typer.Context,
    node: str = typer.Option(this_node(), "--node", help="This node's name."),
    driver_name: str = typer.Option("auto", "--driver", help="auto (the real driver, nspawn), nspawn, lxd, or fake."),
    lxd_socket: Path | None = typer.Option(None, "--lxd-socket", help=LXD_SOCKET_HELP),
    pool: Path | None = typer.Option(None, "--pool", help="A btrfs filesystem for this node's containers."),
    pool_size: str = typer.Option("20Gi", "--pool-size"),
    address_range: str = typer.Option("10.213.0.0/16", "--address-range"),
    egress_interface: str | None = typer.Option(None, "--egress-interface", help=EGRESS_INTERFACE_HELP),
    label: list[str] = typer.Option([], "--label", help="KEY=VALUE node label (repeatable), for node selectors."),
    lease: float = typer.Option(10.0, "--lease-seconds", min=1.0, help="Heartbeat lease; NotReady after it."),
    max_tenants: int | None = typer.Option(None, "--max-tenants", min=1, help="Tenant slots on this node."),
    cpu_overcommit: float = typer.Option(100.0, "--cpu-overcommit", min=0.1, help="Allocatable cpu = cores x this."),
    memory_overcommit: float = typer.Option(4.0, "--memory-overcommit", min=0.1),
    disk_overcommit: float = typer.Option(20.0, "--disk-overcommit", min=0.1, help="Allocatable disk = pool x this."),
    workers: int = typer.Option(4, "--workers", min=1, max=64),
    resync: float = typer.Option(30.0, "--resync-seconds", min=0.5),
    base_domain: str = typer.Option("fleet.localhost", "--base-domain"),
    public_port: int | None = typer.Option(None, "--public-port", help="Port customers reach the gateway on."),
    public_scheme: str = typer.Option("http", "--public-scheme", help="http, or https behind a TLS proxy."),
    log_level: str = typer.Option("INFO", "--log-level"),
    metrics_listen: str | None = typer.Option(
        None, "--metrics-listen", help="HOST:PORT to serve this node's /metrics on (port 0: any): its reconciles, "
        "queue, actions and tenants' usage, for a viewer token."),
) -> None:
    """Run this node's agent: register the node, heartbeat, reconcile the tenants bound to it."""
    configure(log_level)
    limit_heap_arenas()  # before any thread: see drivers/heap.py
    settings: Settings = ctx.obj
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = _open_store(settings)
    driver, described = open_driver(
        DriverOptions(
            name=driver_name, data_dir=data_dir, pool=pool, pool_size=pool_size, address_range=address_range, node=node,
            lxd_socket=lxd_socket, egress_interface=egress_interface,
        )
    )
    config = AgentConfig(
        node=node,
        labels=_labels(label),
        lease_seconds=lease,
        cpu_overcommit=cpu_overcommit,
        memory_overcommit=memory_overcommit,
        disk_overcommit=disk_overcommit,
        max_tenants=max_tenants,
        workers=workers,
        resync_seconds=resync,
        base_domain=base_domain,
        url_scheme=public_scheme,
        public_port=public_port,
    )
    from reconciler.metrics import Metrics

    metrics = Metrics()
    metrics.watch_usage(node, driver)
    runner = Agent(store, driver, config, metrics=metrics)
    server = None if metrics_listen is None else _serve_metrics(store, metrics, node, driver, metrics_listen)
    stop = _until_signal()
    runner.start()
    where = f" Metrics: http://{server.listen}/metrics." if server is not None else ""
    typer.echo(f"Fleet agent is up. Node: {node}. Driver: {described}. Store: {store.dialect.name}.{where}", err=True)
    while not stop.wait(0.5):
        if runner.lost.is_set():
            break
    if server is not None:
        server.stop()
    runner.stop()
    driver.close()
    store.close()
    typer.echo("Fleet agent stopped. Containers keep running.", err=True)


def _serve_metrics(store: Store, metrics: "Metrics", node: str, driver: "Driver", listen_on: str) -> "BackgroundServer":
    from reconciler.cli.servers import listen
    from reconciler.web.context import LocalUsage, WebContext
    from reconciler.web.observability import create_node_app
    from reconciler.web.server import BackgroundServer

    context = WebContext(store, metrics=metrics, usage=LocalUsage(node, driver.usage))
    return BackgroundServer(create_node_app(context), listen(listen_on, "--metrics-listen"), name="metrics").start()


def _serve_scheduler_metrics(store: Store, metrics: "Metrics", listen_on: str) -> "BackgroundServer":
    from reconciler.cli.servers import listen
    from reconciler.web.context import WebContext
    from reconciler.web.observability import create_metrics_app
    from reconciler.web.server import BackgroundServer

    context = WebContext(store, metrics=metrics)  # its tokens are the store's, as the API's are
    return BackgroundServer(create_metrics_app(context), listen(listen_on, "--metrics-listen"), name="metrics").start()


def scheduler(
    ctx: typer.Context,
    strategy: Strategy = typer.Option(Strategy.BINPACK, "--strategy", help="binpack (fill nodes) or spread."),
    lease: float = typer.Option(10.0, "--lease-seconds", min=1.0, help="Leader lease; a standby takes over after."),
    max_tenants_per_node: int | None = typer.Option(None, "--max-tenants-per-node", min=1),
    interval: float = typer.Option(1.0, "--interval-seconds", min=0.05, help="Longest wait between passes."),
    log_level: str = typer.Option("INFO", "--log-level"),
    retain: list[str] = typer.Option([], "--retain", help=RETAIN_HELP),
    metrics_listen: str | None = typer.Option(
        None, "--metrics-listen", help="HOST:PORT to serve this scheduler's /metrics on (port 0: any): bindings "
        "and their failures, pending tenants, finished deletes, whether it is the active one; for a viewer token."),
) -> None:
    """Run a scheduler: one is active at a time (a leader lease); it binds unbound tenants to nodes, finishes
    the deletes of tenants deleted before they were bound, and prunes old records."""
    configure(log_level)
    limit_heap_arenas()  # before any thread: see drivers/heap.py
    housekeeping = HousekeeperConfig(retention=parse_retention(retain))
    settings: Settings = ctx.obj
    store = _open_store(settings)
    identity = f"{socket.gethostname()}/{os.getpid()}"
    from reconciler.metrics import Metrics

    metrics = Metrics()
    runner = Scheduler(
        store,
        SchedulerConfig(
            identity=identity,
            strategy=strategy,
            lease_seconds=lease,
            interval_seconds=interval,
            max_tenants_per_node=max_tenants_per_node,
        ),
        metrics=metrics,
    )
    housekeeper = Housekeeper(store, housekeeping)
    server = None if metrics_listen is None else _serve_scheduler_metrics(store, metrics, metrics_listen)
    stop = _until_signal()
    runner.start()
    housekeeper.start()
    where = f" Metrics: http://{server.listen}/metrics." if server is not None else ""
    typer.echo(f"Fleet scheduler is up ({strategy.value}). Identity: {identity}.{where}", err=True)
    stop.wait()
    if server is not None:
        server.stop()
    housekeeper.stop()
    runner.stop()
    store.close()
    typer.echo("Fleet scheduler stopped.", err=True)

"""`fleet up`: the whole operator in one process, on the embedded store, until Ctrl-C."""

import contextlib
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from loguru import logger

from drivers import limit_heap_arenas
from reconciler.agent import Agent, AgentConfig
from reconciler.cli import servers as serving
from reconciler.cli.driver_options import EGRESS_INTERFACE_HELP, LXD_SOCKET_HELP, DriverOptions, open_driver
from reconciler.cli.logs import configure
from reconciler.cli.settings import Settings, this_node
from reconciler.exec_session import ExecLimits
from reconciler.housekeeping import RETAIN_HELP, Housekeeper, HousekeeperConfig, parse_retention
from reconciler.metrics import Metrics
from reconciler.scheduler import Scheduler, SchedulerConfig, Strategy


def up(
    ctx: typer.Context,
    driver_name: str = typer.Option(
        "auto",
        "--driver",
        help="auto (the real driver, nspawn; says what is missing where "
        "the host cannot run it), nspawn, lxd, or fake (simulated, in memory).",
    ),
    lxd_socket: Path | None = typer.Option(None, "--lxd-socket", help=LXD_SOCKET_HELP),
    pool: Path | None = typer.Option(
        None,
        "--pool",
        help="A btrfs filesystem to keep containers in. Default: a "
        "loop-backed image DATA_DIR/pool.img, created on first start.",
    ),
    pool_size: str = typer.Option("20Gi", "--pool-size", help="Size of the loop-backed image when Fleet creates it."),
    address_range: str = typer.Option("10.213.0.0/16", "--address-range", help="Tenant addresses on this node."),
    egress_interface: str | None = typer.Option(None, "--egress-interface", help=EGRESS_INTERFACE_HELP),
    node: str = typer.Option(this_node(), "--node", help="This node's name."),
    workers: int = typer.Option(4, "--workers", min=1, max=64),
    resync: float = typer.Option(30.0, "--resync-seconds", min=0.5, help="How often to compare all with the host."),
    base_domain: str = typer.Option("fleet.localhost", "--base-domain", help="Tenant URLs are NAME.BASE-DOMAIN."),
    public_port: int | None = typer.Option(None, "--public-port", help=serving.PUBLIC_PORT_HELP),
    public_scheme: str = typer.Option("http", "--public-scheme", help=serving.PUBLIC_SCHEME_HELP),
    tenant_connections: int = typer.Option(
        serving.DEFAULT_LIMITS.upstream_connections_per_tenant, "--tenant-connections", min=1,
        help=serving.CONNECTIONS_HELP,
    ),
    body_idle: float = typer.Option(serving.DEFAULT_LIMITS.request_body_idle_seconds, "--body-idle-seconds", min=0.1,
                                    help=serving.BODY_IDLE_HELP),
    body_seconds: float = typer.Option(serving.DEFAULT_LIMITS.request_body_seconds, "--body-seconds", min=0.1,
                                       help=serving.BODY_SECONDS_HELP),
    exec_per_tenant: int = typer.Option(serving.DEFAULT_EXEC_LIMITS.per_tenant, "--exec-sessions-per-tenant", min=1,
                                        help=serving.EXEC_PER_TENANT_HELP),
    exec_total: int = typer.Option(serving.DEFAULT_EXEC_LIMITS.total, "--exec-sessions", min=1,
                                   help=serving.EXEC_TOTAL_HELP),
    log_level: str = typer.Option("INFO", "--log-level"),
    api_listen: str = typer.Option("127.0.0.1:8080", "--api-listen", help="HOST:PORT of the HTTP API (port 0: any)."),
    gateway_listen: str = typer.Option("127.0.0.1:8081", "--gateway-listen", help="HOST:PORT of the tenant gateway."),
    no_api: bool = typer.Option(False, "--no-api", help="Start neither the API nor the gateway."),
    strategy: Strategy = typer.Option(Strategy.BINPACK, "--strategy", help="The scheduler's: binpack or spread."),
    max_tenants: int | None = typer.Option(None, "--max-tenants", min=1, help="Tenant slots on this node."),
    cpu_overcommit: float = typer.Option(100.0, "--cpu-overcommit", min=0.1, help="Allocatable cpu = cores x this."),
    memory_overcommit: float = typer.Option(4.0, "--memory-overcommit", min=0.1),
    disk_overcommit: float = typer.Option(20.0, "--disk-overcommit", min=0.1, help="Allocatable disk = pool x this."),
    retain: list[str] = typer.Option([], "--retain", help=RETAIN_HELP),
) -> None:
    """Run the operator (store, controller, driver, API, gateway) in this process until Ctrl-C."""
    configure(log_level)
    limit_heap_arenas()  # before any thread: see drivers/heap.py
    housekeeping = HousekeeperConfig(retention=parse_retention(retain))
    api_at = None if no_api else serving.listen(api_listen, "--api-listen")
    gateway_at = None if no_api else serving.listen(gateway_listen, "--gateway-listen")
    config = serving.web_config(base_domain, gateway_at, public_port, public_scheme,
                                serving.gateway_limits(tenant_connections, body_idle, body_seconds),
                                ExecLimits(per_tenant=exec_per_tenant, total=exec_total))
    settings: Settings = ctx.obj
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = settings.open_store(create=True)
    driver, described = open_driver(
        DriverOptions(
            name=driver_name, data_dir=data_dir, pool=pool, pool_size=pool_size, address_range=address_range, node=node,
            lxd_socket=lxd_socket, egress_interface=egress_interface,
        )
    )
    # One set of metrics for every part of this process: the store and this node's usage read at scrape time.
    metrics = Metrics()
    metrics.watch_store(store)
    metrics.watch_usage(node, driver)
    # The API and the gateway first: a gateway asked for a free port (":0") then says which, for tenant URLs.
    servers = (
        []
        if no_api
        else serving.start_web(store, config, api_at, gateway_at, [serving.NodeView(node, driver.name, None)],
                               metrics, serving.LocalUsage(node, driver.usage), serving.LocalExec(node, driver),
                               nudge=lambda name: agent.take(name, node))  # a wake is reconciled at once
    )
    public = serving.published(config, servers).public
    # The same parts as a fleet, in one process: this node's agent (registration, heartbeat, controller)
    # and the scheduler, which binds each new tenant to this node once it has room.
    agent = Agent(
        store,
        driver,
        AgentConfig(
            node=node,
            workers=workers,
            resync_seconds=resync,
            poll_seconds=0.05,
            base_domain=base_domain,
            url_scheme=public.scheme,
            public_port=public.port,
            max_tenants=max_tenants,
            cpu_overcommit=cpu_overcommit,
            memory_overcommit=memory_overcommit,
            disk_overcommit=disk_overcommit,
        ),
        metrics=metrics,
    )
    scheduler = Scheduler(
        store,
        SchedulerConfig(identity=f"{agent.identity}/scheduler", strategy=strategy, interval_seconds=0.05),
        on_bound=agent.take,
        metrics=metrics,
    )
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    housekeeper = Housekeeper(store, housekeeping)
    agent.start()
    scheduler.start()
    housekeeper.start()
    # Installed once every part has started, so no library's set-up can replace it; before the line
    # that says Fleet is up, which is what a supervisor waits for before it may send a signal.
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    listening = "".join(f" {s.name}: http://{s.listen}." for s in servers)
    engine = "SQLite, WAL" if store.url.startswith("sqlite") else store.dialect.name
    typer.echo(
        f"Fleet is up. Store: {store.url} ({engine}). Driver: {described}. Node: {node}.{listening} "
        f"Try: fleet apply -f docs/examples/tenant.yaml. Stop with Ctrl-C.",
        err=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C that reached the default handler stops cleanly too
        stop.wait()
    logger.info("Stopping: finishing the passes under way")
    for server in servers:
        server.stop()
    housekeeper.stop()
    scheduler.stop()
    agent.stop()
    driver.close()
    store.close()
    typer.echo("Fleet stopped. Containers keep running; the next fleet up picks them up.", err=True)

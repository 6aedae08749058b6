"""`fleet api` and `fleet gateway`: the HTTP API or the gateway alone, for a fleet where they run on other
machines than the controllers. `fleet up` starts both in its own process (see `start_web`)."""

import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

import typer

from reconciler.cli.logs import configure
from reconciler.cli.settings import Settings
from reconciler.documents import BadInput
from reconciler.exec_session import ExecLimits
from reconciler.metrics import Metrics
from reconciler.web.app import create_app
from reconciler.web.context import GatewayLimits, LocalExec, LocalUsage, NodeView, WebConfig, WebContext

__all__ = [
    "LocalExec", "LocalUsage", "NodeView", "api", "gateway", "gateway_limits", "listen", "published", "start_web",
    "web_config",
]
from reconciler.web.gateway import create_gateway
from reconciler.web.server import BackgroundServer, Listen
from state import Store

PUBLIC_PORT_HELP = ("Port customers reach the gateway on, in tenant URLs (default: the gateway's own port with "
                    "http, 443 with https).")
PUBLIC_SCHEME_HELP = "http, or https behind a TLS proxy (tenant URLs say https, the claim cookie is Secure)."
CONNECTIONS_HELP = "Requests and websockets proxied to one tenant at once; more wait, then 503."
BODY_IDLE_HELP = "A request body that sends nothing for this long is cut off (408)."
BODY_SECONDS_HELP = "A request body not whole after this long is cut off (408)."
EXEC_PER_TENANT_HELP = "Exec websocket sessions open into one tenant at once; more are refused (429)."
EXEC_TOTAL_HELP = "Exec websocket sessions open at once in all (each holds a ~10 MB helper); more are refused (429)."
DEFAULT_LIMITS = GatewayLimits()
DEFAULT_EXEC_LIMITS = ExecLimits()


def listen(text: str, option: str) -> Listen:
    try:
        return Listen.parse(text, option)
    except ValueError as error:
        raise BadInput(str(error)) from error


def web_config(base_domain: str, gateway: Listen | None, public_port: int | None, public_scheme: str,
               limits: GatewayLimits | None = None, exec_limits: ExecLimits | None = None) -> WebConfig:
    """Behind a TLS proxy (https) customers reach the proxy's port, 443 unless said; over plain http, the
    gateway's own port."""
    if public_scheme not in ("http", "https"):
        raise BadInput(f"--public-scheme: {public_scheme!r} must be http or https")
    port = public_port if public_port is not None else (gateway.port if gateway and public_scheme == "http" else None)
    try:
        max_body_bytes = WebConfig.max_body_from_env()
    except ValueError as error:
        raise BadInput(str(error)) from error
    return WebConfig(base_domain=base_domain, public_scheme=public_scheme, public_port=port,
                     webhook_secrets=WebConfig.secrets_from_env(), secure_cookies=public_scheme == "https",
                     gateway=limits or GatewayLimits(), max_body_bytes=max_body_bytes,
                     exec_billing=WebConfig.exec_billing_from_env(), exec_limits=exec_limits or ExecLimits())


def gateway_limits(connections: int, body_idle_seconds: float, body_seconds: float) -> GatewayLimits:
    return replace(DEFAULT_LIMITS, upstream_connections_per_tenant=connections,
                   request_body_idle_seconds=body_idle_seconds, request_body_seconds=body_seconds)


def published(config: WebConfig, servers: list[BackgroundServer]) -> WebConfig:
    """`config` with the port the gateway really got where it was asked for any free one (":0")."""
    gateway = next((s for s in servers if s.name == "gateway"), None)
    if config.public_port == 0 and gateway is not None:
        return replace(config, public_port=gateway.listen.port)
    return config


def start_web(store: Store, config: WebConfig, api: Listen | None, gateway: Listen | None,
              nodes: list[NodeView] | None = None, metrics: Metrics | None = None,
              usage: LocalUsage | None = None, local_exec: LocalExec | None = None,
              nudge: Callable[[str], None] | None = None) -> list[BackgroundServer]:
    """Start the API and/or the gateway in background threads; returns them, started. `metrics`: the
    process's (`/metrics`); `usage`, `local_exec`: this node's driver, when it runs in this process."""
    known = nodes or []
    context = WebContext(store, config, nodes=lambda: known, metrics=metrics, usage=usage, local_exec=local_exec,
                         nudge=nudge)
    servers = []
    if api is not None:
        servers.append(BackgroundServer(create_app(context), api, name="API").start())
    if gateway is not None:
        servers.append(BackgroundServer(create_gateway(context), gateway, name="gateway").start())
    context.config = published(config, servers)
    return servers


def _serve(ctx: typer.Context, what: str, api: Listen | None, gateway: Listen | None, base_domain: str,
           public_port: int | None, public_scheme: str, log_level: str, limits: GatewayLimits | None = None) -> None:
    configure(log_level)
    config = web_config(base_domain, gateway, public_port, public_scheme, limits)
    settings: Settings = ctx.obj
    store = settings.open_store()
    servers = start_web(store, config, api, gateway)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    typer.echo(f"Fleet {what} is up on " + ", ".join(f"{s.name} http://{s.listen}" for s in servers)
               + ". Stop with Ctrl-C.", err=True)
    stop.wait()
    for server in servers:
        server.stop()
    store.close()


def api(
    ctx: typer.Context,
    listen_on: str = typer.Option("127.0.0.1:8080", "--listen", help="HOST:PORT to serve the API on."),
    base_domain: str = typer.Option("fleet.localhost", "--base-domain", help="Tenant URLs are NAME.BASE-DOMAIN."),
    public_port: int | None = typer.Option(None, "--public-port", help=PUBLIC_PORT_HELP),
    public_scheme: str = typer.Option("http", "--public-scheme", help=PUBLIC_SCHEME_HELP),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Serve the HTTP API (tenants, plans, claims, the billing webhook) on the store, until Ctrl-C."""
    if public_port is None and public_scheme == "http":
        public_port = 8081  # `fleet gateway`'s default
    _serve(ctx, "API", listen(listen_on, "--listen"), None, base_domain, public_port, public_scheme, log_level)


def gateway(
    ctx: typer.Context,
    listen_on: str = typer.Option("127.0.0.1:8081", "--listen", help="HOST:PORT to serve tenants on."),
    base_domain: str = typer.Option("fleet.localhost", "--base-domain", help="Tenant URLs are NAME.BASE-DOMAIN."),
    public_port: int | None = typer.Option(None, "--public-port", help=PUBLIC_PORT_HELP),
    public_scheme: str = typer.Option("http", "--public-scheme", help=PUBLIC_SCHEME_HELP),
    connections: int = typer.Option(DEFAULT_LIMITS.upstream_connections_per_tenant, "--tenant-connections", min=1,
                                    help=CONNECTIONS_HELP),
    body_idle: float = typer.Option(DEFAULT_LIMITS.request_body_idle_seconds, "--body-idle-seconds", min=0.1,
                                    help=BODY_IDLE_HELP),
    body_seconds: float = typer.Option(DEFAULT_LIMITS.request_body_seconds, "--body-seconds", min=0.1,
                                       help=BODY_SECONDS_HELP),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Serve the gateway: NAME.BASE-DOMAIN -> the tenant's container, for holders of its claim."""
    _serve(ctx, "gateway", None, listen(listen_on, "--listen"), base_domain, public_port, public_scheme, log_level,
           gateway_limits(connections, body_idle, body_seconds))

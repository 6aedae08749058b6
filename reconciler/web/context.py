"""What the web apps share: the store, the access tables, the claim signer, and their configuration,
plus the typed dependency aliases routes declare (`StoreDep`, `AccessDep`, ...).

One `WebContext` per process, built by `fleet up`/`fleet api`/`fleet gateway` or by a test; no global
state. Never holds a secret in a log line.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from drivers import Driver
from reconciler.exec_session import ExecLimits, ExecSlots
from reconciler.metrics import Metrics
from reconciler.scheduler import Strategy
from reconciler.urls import PublicAddress
from reconciler.web.body_limit import DEFAULT_MAX_BODY_BYTES
from reconciler.web.claims import ClaimSigner
from reconciler.web.create_batcher import CreateWriter
from reconciler.web.dashboard_ledger import UsageSample
from specs import NodeCapacity, Usage, parse_bytes
from state import Store
from state.access import Access

WEBHOOK_SECRET_ENV = "FLEET_WEBHOOK_SECRET"
MAX_BODY_ENV = "FLEET_MAX_BODY"
EXEC_BILLING_ENV = "FLEET_EXEC_BILLING"


@dataclass(frozen=True)
class NodeView:
    name: str
    driver: str
    capacity: NodeCapacity | None


@dataclass(frozen=True)
class LocalUsage:
    """Usage of the tenants of the node whose driver runs in this process (`fleet up`): `read` is the
    driver's `usage`. A process without a driver (`fleet api`) has none."""

    node: str
    read: Callable[[Sequence[str] | None], list[Usage]]


@dataclass(frozen=True)
class LocalExec:
    """The driver of the node that runs in this process (`fleet up`), for the exec websocket: commands
    run only in tenants bound to `node`. A process without a driver (`fleet api`) has none."""

    node: str
    driver: Driver


@dataclass(frozen=True)
class GatewayLimits:
    """What one tenant's visitors may hold of the gateway, so they cannot starve another tenant's."""

    # Requests (and websockets) proxied to one tenant's container at once; more wait for a free one.
    upstream_connections_per_tenant: int = 100
    upstream_wait_seconds: float = 10.0  # then 503 with Retry-After
    # A request body must keep arriving (no gap longer than idle) and be whole within body_seconds: else
    # 408, and the tenant's connection is free again.
    request_body_idle_seconds: float = 30.0
    request_body_seconds: float = 300.0
    # A request for a sleeping tenant waits for its wake this long at most (then 503), and at most this many
    # wait per tenant (more get 503 at once); the idle rule looks at every tenant this often.
    wake_timeout_seconds: float = 30.0
    wake_queue_per_tenant: int = 1000
    idle_sweep_seconds: float = 1.0


@dataclass(frozen=True)
class WebConfig:
    base_domain: str = "fleet.localhost"
    # How customers reach the gateway: scheme and port in the URLs the API hands out ("" = default port).
    public_scheme: str = "http"
    public_port: int | None = None
    # Stripe endpoint secrets (whsec_...); several while rotating. Empty: the webhook answers 503.
    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance_seconds: int = 300
    # Request bodies larger than this get 413 on every API route (FLEET_MAX_BODY, e.g. 1Mi or 262144).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    secure_cookies: bool = False  # set when a TLS front proxy terminates https
    # The scheduler's strategy, so a dry run names the node the scheduler would choose.
    strategy: Strategy = Strategy.BINPACK
    gateway: GatewayLimits = field(default_factory=GatewayLimits)
    # Billing tokens may open the exec websocket too (FLEET_EXEC_BILLING=1); operators always may.
    exec_billing: bool = False
    # Exec websocket sessions open at once, per tenant and in all (`fleet up --exec-sessions[-per-tenant]`).
    exec_limits: ExecLimits = field(default_factory=ExecLimits)

    @property
    def public(self) -> PublicAddress:
        return PublicAddress(self.base_domain, self.public_scheme, self.public_port)

    def tenant_url(self, name: str) -> str:
        return self.public.url(name)

    @staticmethod
    def secrets_from_env() -> tuple[str, ...]:
        return tuple(s.strip() for s in os.environ.get(WEBHOOK_SECRET_ENV, "").split(",") if s.strip())

    @staticmethod
    def exec_billing_from_env() -> bool:
        return os.environ.get(EXEC_BILLING_ENV, "").strip().lower() in ("1", "true", "yes")

    @staticmethod
    def max_body_from_env() -> int:
        """FLEET_MAX_BODY as a size (1Mi, 262144); the default when unset. ValueError names the variable."""
        text = os.environ.get(MAX_BODY_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_BODY_BYTES
        try:
            return parse_bytes(text)
        except ValueError as error:
            raise ValueError(f"{MAX_BODY_ENV}: {text!r} {error}") from error


@dataclass
class WebContext:
    store: Store
    config: WebConfig = field(default_factory=WebConfig)
    nodes: Callable[[], list[NodeView]] = field(default=lambda: [])
    clock: Callable[[], float] | None = None
    # The process's metrics (`/metrics`); None: a set of its own that reads the store at scrape time.
    metrics: Metrics | None = None
    usage: LocalUsage | None = None
    local_exec: LocalExec | None = None  # `fleet exec` over the API: this node's driver, when it runs here
    # Reconcile a tenant now (the local controller's queue, under `fleet up`): a wake need not wait for the
    # change feed's next poll. None: the feed brings it.
    nudge: Callable[[str], None] | None = None
    # The usage the dashboard's ledger read last, reused for a moment (its refreshes come up to once a second).
    ledger_usage: UsageSample = field(default_factory=UsageSample)
    access: Access = field(init=False)
    signer: ClaimSigner = field(init=False)
    creates: CreateWriter = field(init=False)
    exec_slots: ExecSlots = field(init=False)  # the exec sessions open in this process, within config.exec_limits

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = Metrics()
            self.metrics.watch_store(self.store)
        self.access = Access(self.store)
        self.creates = CreateWriter(self.store)
        self.exec_slots = ExecSlots(self.config.exec_limits)
        self.signer = ClaimSigner(self.access) if self.clock is None else ClaimSigner(self.access, clock=self.clock)


def _context(request: Request) -> WebContext:
    context: WebContext = request.app.state.context
    return context


def _store(request: Request) -> Store:
    return _context(request).store


def _access(request: Request) -> Access:
    return _context(request).access


ContextDep = Annotated[WebContext, Depends(_context)]
StoreDep = Annotated[Store, Depends(_store)]
AccessDep = Annotated[Access, Depends(_access)]

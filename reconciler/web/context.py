"""What the web apps share: the store, the access tables, the claim signer, and their configuration,
plus the typed dependency aliases routes declare (`StoreDep`, `AccessDep`, ...).

One `WebContext` per process, built by `fleet up`/`fleet api`/`fleet gateway` or by a test; no global
state. Never holds a secret in a log line.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from reconciler.scheduler import Strategy
from reconciler.web.claims import ClaimSigner
from reconciler.web.writer import CreateWriter
from specs import NodeCapacity
from state import Store
from state.access import Access

WEBHOOK_SECRET_ENV = "FLEET_WEBHOOK_SECRET"


@dataclass(frozen=True)
class NodeView:
    name: str
    driver: str
    capacity: NodeCapacity | None


@dataclass(frozen=True)
class WebConfig:
    base_domain: str = "fleet.localhost"
    # How customers reach the gateway: scheme and port in the URLs the API hands out ("" = default port).
    public_scheme: str = "http"
    public_port: int | None = None
    # Stripe endpoint secrets (whsec_...); several while rotating. Empty: the webhook answers 503.
    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance_seconds: int = 300
    secure_cookies: bool = False  # set when a TLS front proxy terminates https
    # The scheduler's strategy, so a dry run names the node the scheduler would choose.
    strategy: Strategy = Strategy.BINPACK

    def tenant_url(self, name: str) -> str:
        default = {"http": 80, "https": 443}.get(self.public_scheme)
        port = "" if self.public_port in (None, default) else f":{self.public_port}"
        return f"{self.public_scheme}://{name}.{self.base_domain}{port}/"

    @staticmethod
    def secrets_from_env() -> tuple[str, ...]:
        return tuple(s.strip() for s in os.environ.get(WEBHOOK_SECRET_ENV, "").split(",") if s.strip())


@dataclass
class WebContext:
    store: Store
    config: WebConfig = field(default_factory=WebConfig)
    nodes: Callable[[], list[NodeView]] = field(default=lambda: [])
    clock: Callable[[], float] | None = None
    access: Access = field(init=False)
    signer: ClaimSigner = field(init=False)
    creates: CreateWriter = field(init=False)

    def __post_init__(self) -> None:
        self.access = Access(self.store)
        self.creates = CreateWriter(self.store)
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

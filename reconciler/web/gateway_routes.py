"""Where a tenant's container listens (read from the store off the event loop, cached briefly), and how
many of its visitors are proxied at once (per-tenant slots, so one tenant's visitors cannot starve
another's)."""

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from specs import Phase
from state import Store

ROUTE_CACHE_SECONDS = 0.5
ROUTE_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Route:
    tenant: str
    phase: Phase
    address: str | None
    port: int
    created_revision: int | None  # which tenant of this name (claims are bound to it)
    asleep: bool = False  # put to sleep: a request wakes it (reconciler.web.gateway_sleep)


@dataclass(frozen=True)
class Admitted:
    tenant: str
    route: Route
    query: str  # the query string to forward: the claim taken out
    wake: bool = False  # the tenant sleeps: wake it before proxying


class TenantBusy(Exception):
    """All of a tenant's upstream connections stayed in use while this request waited."""


class Routes:
    """Tenant name -> where its container listens, read from the store in a worker thread (one read per
    tenant at a time, however many requests wait for it) and cached briefly."""

    def __init__(self, store: Store, ttl: float = ROUTE_CACHE_SECONDS, size: int = ROUTE_CACHE_SIZE) -> None:
        self.store = store
        self.ttl = ttl
        self.size = size
        self._cache: OrderedDict[str, tuple[float, Route | None]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[Route | None]] = {}

    def read(self, tenant: str) -> Route | None:
        """From the store (blocking)."""
        record = self.store.desired(tenant)
        if record is None or record.spec is None:
            return None
        status = record.status
        phase = Phase.DELETING if record.spec.deleting else (status.phase if status else Phase.PENDING)
        ports = record.spec.network.ingress or (80,)
        return Route(tenant, phase, status.address if status else None, ports[0], record.created_revision,
                     asleep=record.spec.asleep)

    async def lookup(self, tenant: str) -> Route | None:
        cached = self._cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        reading = self._reading.get(tenant)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(self.read, tenant))
            self._reading[tenant] = reading
            reading.add_done_callback(lambda done: self._remember(tenant, done))
        return await asyncio.shield(reading)

    def _remember(self, tenant: str, done: "asyncio.Future[Route | None]") -> None:
        self._reading.pop(tenant, None)
        if done.cancelled() or done.exception() is not None:
            return
        self.remember(tenant, done.result())

    def remember(self, tenant: str, route: Route | None) -> None:
        """Cache what was just read (a wake's fresh route replaces the sleeping one at once)."""
        self._cache[tenant] = (time.monotonic(), route)
        self._cache.move_to_end(tenant)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)


@dataclass
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting
    held: int = 0


class TenantSlots:
    """At most `limit` upstream connections per tenant at once; a request beyond waits for a free one.
    Only tenants with requests under way or waiting have an entry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, _Gate] = {}

    def in_use(self, tenant: str) -> int:
        gate = self._gates.get(tenant)
        return 0 if gate is None else gate.held

    def visitors(self, tenant: str) -> int:
        """Requests holding one of the tenant's connections or waiting for one."""
        gate = self._gates.get(tenant)
        return 0 if gate is None else gate.users

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, wait_seconds: float) -> AsyncIterator[None]:
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = _Gate(asyncio.Semaphore(self.limit))
        gate.users += 1
        try:
            try:
                async with asyncio.timeout(wait_seconds):
                    await gate.semaphore.acquire()
            except TimeoutError as error:
                raise TenantBusy(tenant) from error
            gate.held += 1
            try:
                yield
            finally:
                gate.held -= 1
                gate.semaphore.release()
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[tenant]

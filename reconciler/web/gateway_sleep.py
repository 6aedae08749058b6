"""Sleep and wake at the gateway: the idle rule that puts a tenant to sleep, and the wake a visitor starts.

The gateway is what sees a tenant's visitors, so it decides when one is idle: no request and no open
connection (websockets included) for the tenant's `sleep.after`. It then writes the sleep to the store;
the tenant's reconciler stops the container and keeps everything else (filesystem, address, limits,
firewall). The first request for a sleeping tenant is held (bounded by `wake_timeout_seconds` and
`wake_queue_per_tenant`), the sleep is cleared in the store, and once the reconciler has the container
Running and it accepts connections on its port, the request is proxied as if it had never slept. However
many requests arrive at once, one wake is under way per tenant (and the store's compare-and-set makes it
one write across gateways).

Never killed mid-request: a tenant with a request under way (counted from its arrival, before anything
is awaited) is not idle, and a request that arrives after this gateway decided to put a tenant to sleep
waits until that stop is done, then wakes it. Idle time is what this gateway saw: with several gateways
in front of one fleet, run the idle rule on one of them (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from loguru import logger

from reconciler import waking
from reconciler.web.context import GatewayLimits
from reconciler.web.gateway_routes import Route, Routes, TenantBusy
from specs import Event, FleetError, Phase, format_duration
from state import Store

CONNECT_POLL_SECONDS = 0.003  # a container's server usually listens within a few ms of Running
STORE_POLL_SECONDS = 0.005
# How long a request waits for a stop this gateway asked for to finish before it wakes the tenant anyway
# (a reconciler that is down never records the stop).
STOP_WAIT_SECONDS = 5.0
VISITOR = "a visitor's request at the gateway"  # who wakes a tenant here, in its WakeRequested event


@dataclass
class Visit:
    """One request or websocket. It counts as its tenant's activity only once its claim was found good:
    a visitor without one can neither wake a tenant nor keep it awake."""

    sleeper: Sleeper | None = None
    tenant: str = ""
    admitted: bool = False

    def admit(self) -> None:
        """Called in the same step of the event loop as the admission's last look at the route (no await
        in between), so the idle rule either put the tenant to sleep before (and the request wakes it) or
        sees this request under way (and leaves it awake)."""
        if self.sleeper is not None and not self.admitted:
            self.admitted = True
            self.sleeper.arrived(self.tenant)


class WakeFailed(Exception):
    """The tenant did not come back within the deadline, or its reconciler said why not."""


@dataclass
class _Wake:
    done: asyncio.Future[Route]
    waiting: int = 0


class Sleeper:
    def __init__(self, store: Store, routes: Routes, limits: GatewayLimits,
                 nudge: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """`nudge`: reconcile a tenant now (the local controller's queue, under `fleet up`); without it the
        reconciler learns of a wake from the store's change feed."""
        self.store = store
        self.routes = routes
        self.limits = limits
        self.nudge = nudge
        self.clock = clock
        self._started = clock()
        self._last_active: dict[str, float] = {}
        self._active: dict[str, int] = {}  # requests and websockets under way, from their arrival
        self._put_to_sleep: dict[str, float] = {}  # by this gateway, until its wake
        self._wakes: dict[str, _Wake] = {}
        self._task: asyncio.Task[None] | None = None
        self.wakes = 0  # wakes this gateway started (one per sleeping tenant however many requests wait)

    # -- visitors ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def visiting(self, tenant: str) -> Iterator[Visit]:
        """Around the whole handling of one request or websocket: from its admission (`Visit.admit`) to its
        end the tenant is not idle, and its end starts the idle time again."""
        visit = Visit(self, tenant)
        try:
            yield visit
        finally:
            if visit.admitted:
                self._last_active[tenant] = self.clock()
                left = self._active[tenant] - 1
                if left:
                    self._active[tenant] = left
                else:
                    del self._active[tenant]

    def arrived(self, tenant: str) -> None:
        self._active[tenant] = self._active.get(tenant, 0) + 1
        self._last_active[tenant] = self.clock()

    def needs_wake(self, route: Route) -> bool:
        return route.asleep or route.phase == Phase.SLEEPING or route.tenant in self._put_to_sleep

    # -- waking ------------------------------------------------------------------------------------------
    async def wake(self, tenant: str) -> Route:
        """The tenant's route once it is Running and accepts connections; one wake per tenant at a time.
        TenantBusy when `wake_queue_per_tenant` requests already wait; WakeFailed past the deadline."""
        wake = self._wakes.get(tenant)
        if wake is None:
            task = asyncio.ensure_future(self._wake(tenant))
            wake = self._wakes[tenant] = _Wake(task)
            task.add_done_callback(lambda _: self._wakes.pop(tenant, None))
        if wake.waiting >= self.limits.wake_queue_per_tenant:
            raise TenantBusy(tenant)
        wake.waiting += 1
        try:
            return await asyncio.shield(wake.done)
        finally:
            wake.waiting -= 1

    async def _wake(self, tenant: str) -> Route:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        deadline = loop.time() + self.limits.wake_timeout_seconds
        # Its stop may be under way (this gateway, `fleet sleep` or another gateway put it to sleep and its
        # reconciler has not recorded Sleeping yet): let it finish rather than proxy into a container that is
        # being stopped. Bounded: a reconciler that is down never records it.
        await self._until(tenant, lambda r: r is None or r.phase == Phase.SLEEPING or not r.asleep,
                          min(deadline, loop.time() + STOP_WAIT_SECONDS), required=False)
        try:  # the store's compare-and-set: of many gateways waking it, one writes (and records WakeRequested)
            await asyncio.to_thread(waking.request_wake, self.store, tenant, VISITOR)
        except FleetError as error:
            raise WakeFailed(f"could not wake {tenant}: {error}") from error
        self._put_to_sleep.pop(tenant, None)
        self.wakes += 1
        if self.nudge is not None:
            try:
                self.nudge(tenant)
            except Exception as error:  # only a shortcut: the change feed brings the wake anyway
                logger.bind(tenant=tenant, error=str(error)).debug("Could not nudge the reconciler")
        route = await self._until(tenant, lambda r: r is None or (r.phase == Phase.RUNNING and r.address is not None
                                                                  and not r.asleep), deadline)
        if route is None:
            raise WakeFailed(f"tenant {tenant} was deleted while it woke")
        assert route.address is not None
        while not await _accepts(route.address, route.port):
            if loop.time() > deadline:
                raise WakeFailed(f"tenant {tenant} is Running but nothing answers on port {route.port}")
            await asyncio.sleep(CONNECT_POLL_SECONDS)
        self.routes.remember(tenant, route)
        self._last_active[tenant] = self.clock()
        logger.bind(tenant=tenant, ms=round((time.perf_counter() - began) * 1000, 1)).info("Woke tenant")
        return route

    async def _until(self, tenant: str, condition: Callable[[Route | None], bool], deadline: float, *,
                     required: bool = True) -> Route | None:
        loop = asyncio.get_running_loop()
        while True:
            route = await asyncio.to_thread(self.routes.read, tenant)
            if condition(route):
                return route
            if loop.time() > deadline:
                if not required:
                    return route
                phase = route.phase.value if route else "gone"
                raise WakeFailed(f"tenant {tenant} did not wake within {self.limits.wake_timeout_seconds:g}s "
                                 f"(it is {phase}); see fleet describe {tenant}")
            await asyncio.sleep(STORE_POLL_SECONDS)

    # -- the idle rule -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._sweep_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except FleetError as error:
                logger.bind(error=str(error)).warning("Could not apply the idle rule; will try again")
            await asyncio.sleep(self.limits.idle_sweep_seconds)

    async def sweep(self) -> list[str]:
        """Put to sleep each Running tenant with a rule that this gateway saw idle for that long."""
        candidates = await asyncio.to_thread(self.store.sleep_candidates)
        now = self.clock()
        known = set()
        slept = []
        for name, after in candidates:
            known.add(name)
            if name in self._put_to_sleep and name not in self._wakes:
                # Awake again, not through this gateway (`fleet wake`, started by hand): a new idle period.
                del self._put_to_sleep[name]
                self._last_active[name] = now
                continue
            # A tenant first seen now (this gateway just started, or it just woke) has its full time.
            last = self._last_active.setdefault(name, now)
            if self._active.get(name) or name in self._wakes or name in self._put_to_sleep or now - last < after:
                continue
            self._put_to_sleep[name] = now  # before any await: a request arriving from here on waits
            event = Event(tenant=name, reason="SleepRequested",
                          message=f"idle at the gateway for {format_duration(after)}: no request, no open connection")
            try:
                changed = await asyncio.to_thread(self.store.set_asleep, name, True, event)
            except FleetError:
                self._put_to_sleep.pop(name, None)
                raise
            if not changed:  # asleep already, or being deleted: nothing for a request to wait for
                self._put_to_sleep.pop(name, None)
            else:
                slept.append(name)
                logger.bind(tenant=name, after=format_duration(after)).info("Put idle tenant to sleep")
                if self.nudge is not None:
                    with contextlib.suppress(Exception):
                        self.nudge(name)
        # Forget what is no longer a candidate (asleep, deleted, rule removed), but not a stop under way.
        for name in [n for n in self._last_active if n not in known and n not in self._active]:
            del self._last_active[name]
        return slept


async def _accepts(address: str, port: int) -> bool:
    """On the event loop, not in a worker thread: a tenant that never accepts must not hold the threads
    every other tenant's store reads share."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True

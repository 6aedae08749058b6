"""The controller: follows the store's change feed, reconciles one tenant per key, reports back.

Level-triggered: a key carries only a name, so every pass re-reads desired state from the store and
observed state from the driver. The change feed (`revision > last_seen`) makes it fast; a periodic
resync makes it right even when a change or a host event was missed. How an error ends a pass is
decided in one place, `_finish`: transient -> retry with backoff, permanent -> recorded and not
retried until the spec changes, not found -> success.
"""

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from apscheduler.schedulers.background import BackgroundScheduler
from loguru import logger

from drivers import Driver, trim_heap
from reconciler.actions import Delete, Stop
from reconciler.clock import Clock
from reconciler.conditions import derive_status, describe_drift, failed_status, same_status
from reconciler.executor import Executor
from reconciler.metrics import Metrics
from reconciler.plan import plan
from reconciler.queue import WorkQueue
from reconciler.urls import PublicAddress
from specs import Event, FleetError, NotFound, Observed, PermanentError, Phase, ResolvedSpec, TransientError
from state import Store


class Outcome(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"  # not ours, or gone


HEAP_TRIM_SECONDS = 30.0  # freed C heap goes back to the host this often (drivers/heap.py)


@dataclass(frozen=True)
class ControllerConfig:
    node: str = "local"
    workers: int = 4
    resync_seconds: float = 30.0
    poll_seconds: float = 0.05
    base_domain: str = "fleet.localhost"
    url_scheme: str = "http"
    public_port: int | None = None  # the port customers reach the gateway on (None: the scheme's)
    # True on a single machine (`fleet up`): an unbound tenant is bound to this node. False under an agent
    # of a fleet: the scheduler binds, and this controller touches only tenants bound to its node.
    self_bind: bool = True


@dataclass
class Stats:
    reconciles: int = 0
    actions: int = 0
    retries: int = 0
    failures: int = 0


class Controller:
    def __init__(
        self,
        store: Store,
        driver: Driver,
        config: ControllerConfig | None = None,
        queue: WorkQueue | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`metrics`: where outcomes, durations and the queue are counted (a private set when None)."""
        self.store = store
        self.driver = driver
        self.config = config or ControllerConfig()
        self.metrics = metrics if metrics is not None else Metrics()
        # not `or`: an empty queue is falsy (__len__)
        self.queue = queue if queue is not None else WorkQueue(on_wait=self.metrics.queue_wait.observe)
        self.metrics.watch_queue(self.config.node, self.queue.__len__, self.queue.waiting)
        self.clock: Clock = self.queue.clock  # one clock for backoff and for the times in statuses
        self.executor = Executor(driver, node=self.config.node, metrics=self.metrics)
        self.stats = Stats()
        self.last_seen_revision = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None
        self._log = logger.bind(node=self.config.node)

    # -- one pass ----------------------------------------------------------------------------------
    def url_for(self, name: str) -> str:
        return PublicAddress(self.config.base_domain, self.config.url_scheme, self.config.public_port).url(name)

    def reconcile(self, name: str) -> Outcome:
        """One level-triggered pass over one tenant. Raises only what the driver or store raise."""
        node = self.config.node
        record = self.store.desired(name)
        if record is None:
            return Outcome.SKIPPED
        events: list[Event] = []
        if record.node is None:
            if not self.config.self_bind:
                return Outcome.SKIPPED  # the scheduler has not bound it yet
            if not self.store.bind(name, node):
                return Outcome.SKIPPED  # another node took it first
            events.append(Event(tenant=name, node=node, reason="Scheduled", message=f"bound to {node}"))
        elif record.node != node:
            return Outcome.SKIPPED
        spec = record.spec
        if spec is None:
            raise PermanentError(
                f"template {record.missing_template!r} does not exist; create it or change spec.template",
                reason="TemplateMissing",
            )
        previous = record.status
        # A tenant no pass has recorded yet gets the whole create plan without a first look: every step of
        # it is idempotent (a clone that exists is kept, a running container stays running), so after a
        # crash half-way it finishes the half, and a signup saves one read of the host (~10 ms on LXD).
        fresh = previous is None and not spec.deleting and not spec.paused
        observed = None if fresh else self.driver.inspect(name)
        if spec.asleep and observed is not None and observed.running and previous is not None \
                and previous.phase == Phase.SLEEPING and not spec.deleting:
            spec = self._woken_outside(name, spec, events)
        actions = plan(spec, observed)
        if spec.deleting and not actions:
            # Nothing observed, but a crash mid-delete may have left parts inspect cannot see (an address
            # lease, a firewall rule): the driver's delete is idempotent and verifies all is gone.
            sweep = self.executor.run(name, spec.generation, [Delete()])
            if sweep.error is not None:
                self.store.record(name, None, None, sweep.events)
                raise sweep.error
            if sweep.receipt is not None and sweep.receipt.removed:
                events.extend(sweep.events)
            self._finalize(name, events)
            return Outcome.SUCCESS
        converged_before = (
            previous is not None and previous.phase == Phase.RUNNING and previous.observed_generation == spec.generation
        )
        # Stopping a tenant put to sleep is the plan, not drift.
        repairs = [a for a in actions if not (spec.asleep and isinstance(a, Stop))]
        if repairs and converged_before and not spec.deleting:
            drift = describe_drift(spec, observed)
            events.append(
                Event(
                    tenant=name,
                    node=node,
                    type="Warning",
                    reason="DriftDetected",
                    generation=spec.generation,
                    message=f"found on the host: {drift}; repairing",
                )
            )
            self._log.bind(tenant=name).warning("Detected drift: {}", drift)
        execution = self.executor.run(name, spec.generation, actions)
        events.extend(execution.events)
        self.stats.actions += len(execution.events)
        after: Observed | None = self.driver.inspect(name) if actions else observed
        if spec.deleting and execution.ok and after is None:
            self._finalize(name, events)
            return Outcome.SUCCESS
        status = derive_status(
            previous=previous,
            spec=spec,
            node=node,
            observed=after,
            error=execution.error,
            failed=execution.failed,
            url=self.url_for(name),
            now=self.clock.wall(),
        )
        if status.phase == Phase.RUNNING and (previous is None or previous.phase != Phase.RUNNING):
            woke = previous is not None and previous.phase == Phase.SLEEPING
            events.append(
                Event(
                    tenant=name,
                    node=node,
                    reason="Woke" if woke else "Running",
                    generation=spec.generation,
                    message=f"{'awake: ' if woke else ''}running at {status.address}; {status.url}",
                )
            )
        elif status.phase == Phase.SLEEPING and (previous is None or previous.phase != Phase.SLEEPING):
            events.append(Event(tenant=name, node=node, reason="Sleeping", generation=spec.generation,
                                message="container stopped; filesystem, address, limits and firewall kept"))
        self.store.record(name, None if same_status(previous, status) else status, after, events)
        if execution.error is not None:
            raise execution.error
        return Outcome.SUCCESS

    def _woken_outside(self, name: str, spec: ResolvedSpec, events: list[Event]) -> ResolvedSpec:
        """Its container runs though it was put to sleep and stopped: started by hand (Fleet's own wake clears
        the sleep before it starts one). Never killed for it, as it may be serving a request: it is awake
        now, and the idle rule puts it back to sleep."""
        event = Event(tenant=name, node=self.config.node, type="Warning", reason="WokenOutsideFleet",
                      generation=spec.generation,
                      message="found running while asleep (started by hand?); kept running, awake until idle again")
        if self.store.set_asleep(name, False, event):
            self._log.bind(tenant=name).warning("Found a sleeping tenant running; it is awake now")
        return spec.model_copy(update={"asleep_since": None})

    def _finalize(self, name: str, events: list[Event]) -> None:
        events.append(
            Event(
                tenant=name,
                node=self.config.node,
                reason="Finalized",
                message="everything the tenant had is gone; the record is removed",
            )
        )
        self.store.finalize_delete(name, events)
        self._log.bind(tenant=name).info("Deleted tenant")

    def process(self, name: str) -> Outcome:
        """Reconcile and decide the outcome: the one place errors turn into retries or conditions."""
        started = time.perf_counter()
        try:
            outcome = self.reconcile(name)
        except NotFound:
            outcome = Outcome.SUCCESS
        except TransientError as error:
            outcome = Outcome.RETRY
            self._log.bind(tenant=name).info("Will retry: {}", error)
        except PermanentError as error:
            # A delete never gives up: whatever stops it (a part Fleet does not own, a host refusing) is
            # in the condition, and it is tried again with backoff until it finishes.
            outcome = Outcome.RETRY if self._record_permanent(name, error) else Outcome.FAILED
        except FleetError as error:
            outcome = Outcome.RETRY
            self._log.bind(tenant=name).warning("Will retry after an unclassified error: {}", error)
        except Exception as error:  # a bug or an unmapped library error: retry, loudly
            outcome = Outcome.RETRY
            self._log.bind(tenant=name).exception("Reconcile raised an unexpected error: {}", error)
        self.stats.reconciles += 1
        self.metrics.reconciles.labels(result=outcome.value).inc()
        self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        if outcome == Outcome.RETRY:
            self.stats.retries += 1
            delay = self.queue.add_rate_limited(name)
            self._log.bind(tenant=name, retry_in_ms=round(delay * 1000, 1)).debug("Requeued")
        else:
            if outcome == Outcome.FAILED:
                self.stats.failures += 1
            self.queue.forget(name)
        self._log.bind(tenant=name, outcome=outcome.value, ms=round((time.perf_counter() - started) * 1000, 2)).trace(
            "Reconciled"
        )
        return outcome

    def _record_permanent(self, name: str, error: PermanentError) -> bool:
        """A failure that retrying alone will not fix: say so in status and events. True when the tenant is
        being deleted (the caller retries it anyway)."""
        record = self.store.desired(name)
        if record is None:
            return False
        deleting = record.spec is not None and record.spec.deleting
        previous = record.status
        if previous is not None and previous.last_error == str(error) and (deleting or previous.phase == Phase.FAILED):
            return deleting  # already said (a failed delete's pass records its own Deleting status)
        status = failed_status(
            generation=record.spec.generation if record.spec else 0,
            node=record.node,
            url=self.url_for(name),
            reason=error.reason,
            message=str(error),
            now=self.clock.wall(),
        )
        event = Event(tenant=name, node=self.config.node, type="Warning", reason=error.reason, message=str(error))
        if previous is None or previous.last_error != str(error):
            self.store.record(name, status, None, [event])
        return deleting

    # -- feeding the queue -------------------------------------------------------------------------
    def poll_changes(self) -> int:
        """Enqueue tenants written since the last poll. Returns how many."""
        added = 0
        while True:
            changes = self.store.changes_since(self.last_seen_revision)
            for change in changes:
                self.queue.add(change.name)
            added += len(changes)
            if changes:
                self.last_seen_revision = changes[-1].revision
            if len(changes) < 10_000:
                return added

    def resync(self) -> int:
        """Compare every tenant with the host in one pass; enqueue those that need work."""
        started = time.perf_counter()
        observed = {o.name: o for o in self.driver.list()}
        queued = 0
        known: set[str] = set()
        for record in self.store.iter_desired(node=self.config.node):
            if record.node is None and not self.config.self_bind:
                continue
            known.add(record.name)
            spec, status = record.spec, record.status
            needs_work = (
                spec is None
                or record.node is None
                or spec.deleting
                or status is None
                or status.observed_generation != spec.generation
                or (status.phase != Phase.FAILED and bool(plan(spec, observed.get(record.name))))
            )
            if needs_work and not (spec is None and status is not None and status.phase == Phase.FAILED):
                self.queue.add(record.name)
                queued += 1
        orphans = sorted(set(observed) - known)
        if orphans:
            self._log.warning("Found containers with no record, left alone: {}", ", ".join(orphans[:20]))
        self._log.bind(tenants=len(known), queued=queued, ms=round((time.perf_counter() - started) * 1000, 1)).debug(
            "Resynced"
        )
        return queued

    # -- running -----------------------------------------------------------------------------------
    def run_worker(self) -> None:
        while not self._stop.is_set():
            name = self.queue.get(timeout=0.5)
            if name is None:
                continue
            try:
                self.process(name)
            finally:
                self.queue.done(name)

    def _run_feed(self) -> None:
        listener = self.store.listen()  # PostgreSQL wakes the feed early; SQLite polls
        try:
            while not self._stop.is_set():
                try:
                    self.poll_changes()
                except FleetError as error:
                    self._log.warning("Could not read the change feed, will retry: {}", error)
                if not self._stop.is_set():
                    listener.wait(self.config.poll_seconds)
        finally:
            listener.close()

    def start(self) -> None:
        self.poll_changes()
        self.resync()
        for index in range(self.config.workers):
            thread = threading.Thread(target=self.run_worker, name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        feed = threading.Thread(target=self._run_feed, name="feed", daemon=True)
        feed.start()
        self._threads.append(feed)
        self._scheduler = BackgroundScheduler()
        self._scheduler.add_job(
            self._safe_resync, "interval", seconds=self.config.resync_seconds, max_instances=1, coalesce=True
        )
        self._scheduler.add_job(trim_heap, "interval", seconds=HEAP_TRIM_SECONDS, max_instances=1, coalesce=True)
        self._scheduler.start()

    def _safe_resync(self) -> None:
        try:
            self.resync()
        except FleetError as error:
            self._log.warning("Resync failed, will try again: {}", error)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

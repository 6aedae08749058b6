"""Runs a plan's actions through the driver: the only place that calls one.

Each action becomes one driver call and one event with its duration. The first error stops the run;
what was done stays done (every driver step is idempotent, so the next pass picks up from there).
"""

import time
from dataclasses import dataclass, field

from loguru import logger

from drivers import Driver
from reconciler.actions import Action, ApplyNetwork, ApplyResources, Clone, Delete, Start, Stop
from reconciler.metrics import Metrics
from specs import DeleteReceipt, Event, FleetError, NotFound

_DONE = {
    Clone: "Cloned",
    ApplyResources: "ResourcesApplied",
    ApplyNetwork: "NetworkApplied",
    Start: "Started",
    Stop: "Stopped",
    Delete: "Deleted",
}


@dataclass
class Execution:
    events: list[Event] = field(default_factory=list)
    error: FleetError | None = None
    failed: Action | None = None
    receipt: DeleteReceipt | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor:
    def __init__(self, driver: Driver, *, node: str, metrics: Metrics | None = None) -> None:
        self.driver = driver
        self.node = node
        self.metrics = metrics if metrics is not None else Metrics()

    def _call(self, tenant: str, generation: int, action: Action) -> DeleteReceipt | None:
        match action:
            case Clone(template=template):
                self.driver.ensure_template(template)
                self.driver.clone(tenant, template, generation=generation)
            case ApplyResources(resources=resources):
                self.driver.apply_resources(tenant, resources, generation=generation)
            case ApplyNetwork(network=network):
                self.driver.apply_network(tenant, network)
            case Start():
                self.driver.start(tenant)
            case Stop():
                self.driver.stop(tenant)
            case Delete():
                return self.driver.delete(tenant)
        return None

    def run(self, tenant: str, generation: int, actions: list[Action]) -> Execution:
        execution = Execution()
        for action in actions:
            kind = type(action).__name__
            started = time.perf_counter()
            try:
                receipt = self._call(tenant, generation, action)
            except NotFound as error:
                if not isinstance(action, (Delete, Stop)):
                    execution.error, execution.failed = error, action
                    receipt = None
                else:
                    receipt = DeleteReceipt(tenant=tenant, already_absent=("container",))
            except FleetError as error:
                execution.error, execution.failed = error, action
                receipt = None
            seconds = time.perf_counter() - started
            duration_ms = round(seconds * 1000, 3)
            self.metrics.action_duration.labels(action=kind, driver=self.driver.name).observe(seconds)
            if execution.error is not None:
                self.metrics.action_failures.labels(action=kind, driver=self.driver.name).inc()
                execution.events.append(
                    Event(
                        tenant=tenant,
                        node=self.node,
                        type="Warning",
                        reason=f"{kind}Failed",
                        action=kind,
                        message=f"could not {action.describe()}: {execution.error}",
                        duration_ms=duration_ms,
                        generation=generation,
                    )
                )
                logger.bind(tenant=tenant, node=self.node, action=kind, ms=duration_ms).warning(
                    "Failed action: {}", execution.error
                )
                return execution
            details: dict[str, list[str]] = {}
            message = action.describe()
            if receipt is not None:
                execution.receipt = receipt
                details = {"removed": list(receipt.removed), "already_absent": list(receipt.already_absent)}
                message = "deleted and verified gone: " + (", ".join(receipt.removed) or "nothing was left")
            execution.events.append(
                Event(
                    tenant=tenant,
                    node=self.node,
                    reason=_DONE[type(action)],
                    action=kind,
                    message=message,
                    duration_ms=duration_ms,
                    generation=generation,
                    details=details,
                )
            )
            logger.bind(tenant=tenant, node=self.node, action=kind, ms=duration_ms).debug("Ran action")
        return execution

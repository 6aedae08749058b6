"""Runs a plan's actions through the driver: the only place that calls one.

Each action becomes one driver call and one event with its duration. The first error stops the run;
what was done stays done (every driver step is idempotent, so the next pass picks up from there).
"""

import time
from dataclasses import dataclass, field

from loguru import logger

from drivers import Driver
from reconciler.actions import Action, ApplyNetwork, ApplyResources, Clone, Delete, Start, Stop
from specs import DeleteReceipt, Event, FleetError, NotFound, Template

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
    def __init__(self, driver: Driver, *, node: str) -> None:
        self.driver = driver
        self.node = node

    def _call(self, tenant: str, action: Action, template: Template | None) -> DeleteReceipt | None:
        match action:
            case Clone():
                if template is None:
                    raise FleetError(f"no template to clone {tenant} from")
                self.driver.ensure_template(template)
                self.driver.clone(tenant, template)
            case ApplyResources(resources=resources):
                self.driver.apply_resources(tenant, resources)
            case ApplyNetwork(network=network):
                self.driver.apply_network(tenant, network)
            case Start():
                self.driver.start(tenant)
            case Stop():
                self.driver.stop(tenant)
            case Delete():
                return self.driver.delete(tenant)
        return None

    def run(self, tenant: str, generation: int, actions: list[Action], template: Template | None) -> Execution:
        execution = Execution()
        for action in actions:
            kind = type(action).__name__
            started = time.perf_counter()
            try:
                receipt = self._call(tenant, action, template)
            except NotFound as error:
                if not isinstance(action, (Delete, Stop)):
                    execution.error, execution.failed = error, action
                    receipt = None
                else:
                    receipt = DeleteReceipt(tenant=tenant, already_absent=("container",))
            except FleetError as error:
                execution.error, execution.failed = error, action
                receipt = None
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            if execution.error is not None:
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

"""Shared test helpers: waiting on conditions with deadlines, driving a controller synchronously."""

import time
from collections.abc import Callable
from typing import TypeVar

from reconciler.clock import ManualClock
from reconciler.controller import Controller
from specs import Tenant

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def drain(controller: Controller, *, clock: ManualClock | None = None, max_passes: int = 100_000) -> int:
    """Process the queue until nothing is queued or waiting; jump a manual clock over backoff delays."""
    passes = 0
    while passes < max_passes:
        key = controller.queue.get(timeout=0)
        if key is None:
            if clock is not None and controller.queue.waiting():
                clock.advance(3600)
                continue
            return passes
        try:
            controller.process(key)
        finally:
            controller.queue.done(key)
        passes += 1
    raise AssertionError(f"the queue did not drain in {max_passes} passes")


def tenant(name: str, template: str = "base", **spec: object) -> Tenant:
    return Tenant.model_validate({"kind": "Tenant", "metadata": {"name": name}, "spec": {"template": template, **spec}})

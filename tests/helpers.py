"""Shared test helpers: waiting on conditions with deadlines, driving a controller synchronously."""

import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from drivers import Driver
from reconciler.clock import ManualClock
from reconciler.controller import Controller
from specs import Network, Observed, Resources, Template, Tenant

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


def http_get(address: str, port: int = 80, timeout: float = 1.0, path: str = "/") -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return None


def wait_http(address: str, port: int = 80, timeout: float = 10.0) -> bytes:
    return wait_for(lambda: http_get(address, port), timeout=timeout, what=f"http://{address}:{port}/ to answer")


@contextmanager
def tenant_maker(driver: Driver, prefix: str, template: Template) -> Iterator[Callable[..., Observed]]:
    """`make(suffix, resources, ports, start)` provisions a tenant end to end through a real driver (clone,
    resources, network, start); every tenant made is deleted when the block ends."""
    made: list[str] = []

    def make(
        suffix: str, resources: Resources | None = None, ports: tuple[int, ...] = (80,), start: bool = True
    ) -> Observed:
        name = f"{prefix}{suffix}"
        made.append(name)
        driver.clone(name, template)
        driver.apply_resources(name, resources or Resources(cpu="1", memory="128Mi", pids=128, disk="128Mi"))
        driver.apply_network(name, Network(ingress=ports))
        if start:
            driver.start(name)
        observed = driver.inspect(name)
        assert observed is not None
        return observed

    try:
        yield make
    finally:
        for name in made:
            driver.delete(name)

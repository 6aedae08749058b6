from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.fake import FakeDriver
from reconciler.clock import ManualClock
from reconciler.controller import Controller, ControllerConfig
from reconciler.queue import WorkQueue, default_rate_limiter
from state import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield s
    s.close()


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver(node="n1")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_controller(store: Store, driver: FakeDriver, clock: ManualClock) -> Controller:
    queue = WorkQueue(clock=clock, rate_limiter=default_rate_limiter(clock))
    return Controller(store, driver, ControllerConfig(node="n1"), queue=queue)


@pytest.fixture
def controller(store: Store, fake: FakeDriver, clock: ManualClock) -> Controller:
    return make_controller(store, fake, clock)

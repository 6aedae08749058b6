import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.fake import FakeDriver
from reconciler.clock import ManualClock
from reconciler.controller import Controller, ControllerConfig
from reconciler.queue import WorkQueue, default_rate_limiter
from state import Store
from tests.postgres import PostgresServer, missing_reason


def store_engines() -> list[str]:
    """The engines the core store and controller suites run against: both, unless FLEET_TEST_STORES says."""
    return [e.strip() for e in os.environ.get("FLEET_TEST_STORES", "sqlite,postgresql").split(",") if e.strip()]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run the module's `store` tests on SQLite and PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store_engine", store_engines(), indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL 15 server for the session, removed afterwards; skipped (saying why) where the
    server binaries are not installed."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the private server; dropped after the test."""
    database = postgres_server.create_database()
    yield postgres_server.url(database)
    postgres_server.drop_database(database)


@pytest.fixture
def store_engine(request: pytest.FixtureRequest) -> str:
    engine: str = getattr(request, "param", "sqlite")
    return engine


@pytest.fixture
def store(tmp_path: Path, store_engine: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    if store_engine == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    s = Store(url)
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

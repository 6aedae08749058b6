"""A raw SQL writer beside a busy operator on SQLite: with a 5 s busy timeout (what `.timeout 5000` gives the
sqlite3 shell; Python's sqlite3 has it by default) it never fails with "database is locked", because every
write transaction of the operator is short. The load: `fleet up`'s parts (this node's agent and the
scheduler) with thousands of tenants more than the node has room for, so the scheduler writes a status
for each of them at once, which was one transaction of many seconds."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from drivers.fake import FakeDriver
from reconciler.agent import Agent, AgentConfig
from reconciler.scheduler import Scheduler, SchedulerConfig
from state import Store
from tests.helpers import wait_for
from tests.raw_writer import RawWriter, WriteHolds

pytestmark = pytest.mark.slow

TENANTS = 8000
SLOTS = 50


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:  # SQLite only: PostgreSQL writers wait on row locks
    store = Store(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield store
    store.close()


def test_a_writer_with_a_5s_busy_timeout_never_fails_while_the_operator_is_busy(sqlite_store: Store) -> None:
    store = sqlite_store
    holds = WriteHolds(store)
    agent = Agent(store, FakeDriver(node="n1"), AgentConfig(node="n1", max_tenants=SLOTS, poll_seconds=0.05,
                                                            lease_seconds=30, resync_seconds=3600))
    scheduler = Scheduler(store, SchedulerConfig(identity="up/scheduler", interval_seconds=0.05))
    writer = RawWriter(store)
    agent.start()
    scheduler.start()
    try:
        with store.engine.connect() as billing:  # the billing system's own bulk insert: one transaction
            billing.execute(text("INSERT INTO tenants (name, template) VALUES (:name, 'base')"),
                            [{"name": f"t{i:05d}"} for i in range(TENANTS)])
            billing.commit()

        def settled() -> bool:
            with store.engine.connect() as conn:
                rows = dict(conn.execute(text("SELECT phase, count(*) FROM tenant_status GROUP BY phase")).all())
            return rows.get("Running", 0) == SLOTS and rows.get("Pending", 0) >= TENANTS - SLOTS

        wait_for(settled, timeout=240, interval=0.2, what="every tenant Running or told it is Unschedulable")
    finally:
        report = writer.stop()
        scheduler.stop()
        agent.stop()
    assert report.failed == 0, (
        f"the raw writer failed: {report}; the operator held the lock at most {holds.longest_ms:.0f} ms, "
        f"{len(holds.holds)} times, {sum(holds.holds):.1f} s in all"
    )
    assert report.done > 0
    assert holds.longest_ms < 1000, f"the operator held the write lock for {holds.longest_ms:.0f} ms at once"

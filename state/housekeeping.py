"""Housekeeping: events, webhook events, idempotency keys and tombstones are pruned by age.

Why it exists: all four only grow. Each is kept for a retention (defaults in `Retention`) and then
deleted, oldest first, in small transactions (a few hundred rows each) so a raw SQL writer waiting on
SQLite's lock never waits long. What it must never drop:

- anything of a tenant whose delete is not finished: its events (the story of why it is not gone yet) and
  the webhook events that name it;
- a deletion a watcher still needs without saying so: pruning tombstones raises the feed's horizon in the
  same transaction, and a watcher resuming from an older revision is refused (`RevisionCompacted`, 410
  Gone at the API) and lists again, instead of silently missing a deletion.

What it must never do: decide retention (the caller passes it) or touch a desired record.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, select, tuple_

from state.access_schema import IDEMPOTENCY_KEYS, WEBHOOK_EVENTS
from state.housekeeping_schema import WATCH_HORIZON
from state.schema import EVENTS, TENANTS, TOMBSTONES
from state.store import Store


@dataclass(frozen=True)
class Retention:
    """How long each kind of record is kept. The defaults: events for 30 days; webhook events for 30 days
    (a billing system retries an event for up to 3 days, and a replay within retention changes nothing);
    idempotency keys for 24 hours (as Stripe keeps them); tombstones for 7 days (a watcher disconnected
    longer gets 410 Gone and lists again)."""

    events: timedelta = timedelta(days=30)
    webhook_events: timedelta = timedelta(days=30)
    idempotency_keys: timedelta = timedelta(hours=24)
    tombstones: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Pruned:
    """What one pass removed, per kind, and the watch horizon after it."""

    events: int = 0
    webhook_events: int = 0
    idempotency_keys: int = 0
    tombstones: int = 0
    horizon: int = 0

    @property
    def total(self) -> int:
        return self.events + self.webhook_events + self.idempotency_keys + self.tombstones


class Housekeeping:
    """Pruning over a `Store`'s engine. `batch` rows per transaction, at most `max_batches` transactions
    per kind and pass: a large backlog is worked off over several passes, never in one long lock."""

    def __init__(self, store: Store, *, batch: int = 500, max_batches: int = 200) -> None:
        self.store = store
        self.batch = batch
        self.max_batches = max_batches

    def prune(self, retention: Retention, *, now: datetime | None = None) -> Pruned:
        now = now or datetime.now(UTC)
        deleting = select(TENANTS.c.name).where(TENANTS.c.deletion_requested_at.is_not(None))
        events = self._repeat(lambda conn: conn.execute(
            EVENTS.delete().where(EVENTS.c.id.in_(
                select(EVENTS.c.id)
                .where(EVENTS.c.created_at < _cutoff(now, retention.events), EVENTS.c.tenant.not_in(deleting))
                .order_by(EVENTS.c.id)
                .limit(self.batch)
            ))
        ).rowcount)
        webhook_events = self._repeat(lambda conn: conn.execute(
            WEBHOOK_EVENTS.delete().where(WEBHOOK_EVENTS.c.event_id.in_(
                select(WEBHOOK_EVENTS.c.event_id)
                .where(
                    WEBHOOK_EVENTS.c.received_at < _cutoff(now, retention.webhook_events),
                    WEBHOOK_EVENTS.c.tenant.is_(None) | WEBHOOK_EVENTS.c.tenant.not_in(deleting),
                )
                .order_by(WEBHOOK_EVENTS.c.received_at)
                .limit(self.batch)
            ))
        ).rowcount)
        key = tuple_(IDEMPOTENCY_KEYS.c.principal, IDEMPOTENCY_KEYS.c.key)
        idempotency_keys = self._repeat(lambda conn: conn.execute(
            IDEMPOTENCY_KEYS.delete().where(key.in_(
                select(IDEMPOTENCY_KEYS.c.principal, IDEMPOTENCY_KEYS.c.key)
                .where(IDEMPOTENCY_KEYS.c.created_at < _cutoff(now, retention.idempotency_keys))
                .order_by(IDEMPOTENCY_KEYS.c.created_at)
                .limit(self.batch)
            ))
        ).rowcount)
        tombstones = self._repeat(lambda conn: self._prune_tombstones(conn, _cutoff(now, retention.tombstones)))
        with self.store.session.read() as conn:
            horizon = int(conn.execute(select(WATCH_HORIZON.c.revision).where(WATCH_HORIZON.c.id == 1)).scalar() or 0)
        return Pruned(events, webhook_events, idempotency_keys, tombstones, horizon)

    def _prune_tombstones(self, conn: Connection, cutoff: datetime) -> int:
        """The oldest tombstones and the horizon, in one transaction: no reader sees them gone while the
        horizon still lets it resume from before them."""
        oldest = conn.execute(
            select(TOMBSTONES.c.name, TOMBSTONES.c.revision)
            .where(TOMBSTONES.c.deleted_at < cutoff)
            .order_by(TOMBSTONES.c.revision)
            .limit(self.batch)
        ).all()
        if not oldest:
            return 0
        newest = max(int(row.revision) for row in oldest)
        conn.execute(TOMBSTONES.delete().where(
            TOMBSTONES.c.name.in_([row.name for row in oldest]), TOMBSTONES.c.revision <= newest
        ))
        conn.execute(WATCH_HORIZON.update().where(WATCH_HORIZON.c.id == 1).values(
            revision=case((WATCH_HORIZON.c.revision < newest, newest), else_=WATCH_HORIZON.c.revision)
        ))
        return len(oldest)

    def _repeat(self, prune_batch: Callable[[Connection], Any]) -> int:
        """Run one batch per write transaction until a batch is short (nothing older is left)."""
        total = 0
        for _ in range(self.max_batches):
            with self.store.session.write() as conn:
                removed = int(prune_batch(conn))
            total += removed
            if removed < self.batch:
                break
        return total


def _cutoff(now: datetime, age: timedelta) -> datetime:
    """In UTC: SQLite keeps CURRENT_TIMESTAMP as UTC text (and compares the zone-less text SQLAlchemy
    writes for this value); PostgreSQL compares instants."""
    return now.astimezone(UTC) - age


__all__ = ["Housekeeping", "Pruned", "Retention"]

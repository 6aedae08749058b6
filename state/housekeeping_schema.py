"""What housekeeping needs in the schema: the watch feed's horizon, and an index on the age of every
record pruned by age (events, webhook events, idempotency keys, tombstones).

Why apart from `schema.py`: they arrive with one migration and serve one concern, pruning. The horizon is
one row: the newest revision among the tombstones pruned so far. A watcher resuming from an older revision
could miss a deletion, so the feed refuses it (410 Gone at the API) instead of answering with a gap.
What it must never do: hold desired state.
"""

from sqlalchemy import BigInteger, Column, Index, Integer, Table

from state.access_schema import IDEMPOTENCY_KEYS, WEBHOOK_EVENTS
from state.schema import EVENTS, METADATA, TOMBSTONES

WATCH_HORIZON = Table(
    "watch_horizon", METADATA,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False, server_default="0"),
)

# Pruning reads the oldest rows first: each of these makes that an index range, not a table scan.
AGE_INDEXES = (
    Index("ix_events_created_at", EVENTS.c.created_at),
    Index("ix_webhook_events_received_at", WEBHOOK_EVENTS.c.received_at),
    Index("ix_idempotency_keys_created_at", IDEMPOTENCY_KEYS.c.created_at),
    Index("ix_tenant_tombstones_deleted_at", TOMBSTONES.c.deleted_at),
)

"""The access tables: API tokens, idempotency keys, billing webhook events and subscriptions,
plans, and claim signing keys. Core tables on `state.schema.METADATA`: one definition for every engine.

Unique constraints here carry the guarantees the API promises: one row per webhook event id (a replay
changes nothing) and one stored answer per idempotency key. Secrets of API tokens are never stored, only
their SHA-256.
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

from state.schema import METADATA, resource_checks, resource_columns, sleep_after_check, sleep_after_column, timestamp

ROLES = ("billing", "operator", "viewer")

API_TOKENS = Table(
    "api_tokens", METADATA,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    timestamp(),
    Column("revoked_at", DateTime(timezone=True)),
    CheckConstraint("role IN ('billing', 'operator', 'viewer')", name="role_must_be_billing_operator_or_viewer"),
    CheckConstraint("length(name) BETWEEN 1 AND 63", name="token_name_must_be_1_to_63_characters"),
)

IDEMPOTENCY_KEYS = Table(
    "idempotency_keys", METADATA,
    Column("principal", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    timestamp(),
    PrimaryKeyConstraint("principal", "key"),
)

WEBHOOK_EVENTS = Table(
    "webhook_events", METADATA,
    Column("event_id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("tenant", Text),
    Column("outcome", Text, nullable=False),
    timestamp("received_at"),
)

# A subscription binds its tenant from the first plan applied until it is deleted; a row without a plan
# (a subscription Fleet never provisioned) binds nothing. At most one binding per tenant (migration 7).
BINDS_TENANT = "plan IS NOT NULL AND deleted_at IS NULL"
ONE_SUBSCRIPTION_PER_TENANT = "billing_subscriptions_one_per_tenant"

# The last billing state applied per subscription: what makes out-of-order events harmless, and which
# subscription a tenant belongs to (exactly one).
SUBSCRIPTIONS = Table(
    "billing_subscriptions", METADATA,
    Column("subscription_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False, index=True),
    Column("customer", Text),
    Column("plan", Text),
    Column("last_event_created", BigInteger, nullable=False, server_default="0"),
    Column("deleted_at", DateTime(timezone=True)),
)


def attach_partial_indexes() -> None:
    """The partial unique index of SUBSCRIPTIONS, attached by `state.migrations` before it creates tables.
    Not in the table's definition: its per-dialect WHERE loads SQLAlchemy's PostgreSQL dialect, which a
    command that only opens a SQLite store never needs."""
    Index(ONE_SUBSCRIPTION_PER_TENANT, SUBSCRIPTIONS.c.tenant, unique=True, sqlite_where=text(BINDS_TENANT),
          postgresql_where=text(BINDS_TENANT))

PLANS = Table(
    "plans", METADATA,
    Column("id", Text, primary_key=True),
    Column("template", Text, nullable=False),
    *resource_columns(),
    Column("ingress_ports", Text),
    Column("egress", Text),  # migration 12; NULL: the template's
    Column("description", Text, nullable=False, server_default=""),
    timestamp(),
    sleep_after_column(),
    *resource_checks(),
    sleep_after_check(),
)

SIGNING_KEYS = Table(
    "signing_keys", METADATA,
    Column("kid", Text, primary_key=True),
    Column("secret", Text, nullable=False),
    timestamp(),
    Column("retired_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

ACCESS_TABLES = ("api_tokens", "idempotency_keys", "webhook_events", "billing_subscriptions", "plans", "signing_keys")

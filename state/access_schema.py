"""The access tables: API tokens, idempotency keys, billing webhook events and subscriptions,
plans, and claim signing keys. SQLModel classes: one definition for every engine.

Unique constraints here carry the guarantees the API promises: one row per webhook event id (a replay
changes nothing) and one stored answer per idempotency key. Secrets of API tokens are never stored, only
their SHA-256.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Column, DateTime, Index, Integer, PrimaryKeyConstraint, Text, text
from sqlmodel import Field, SQLModel

from state.dialects.sqlite import sqlite_access_checks
from state.schema import resource_checks

_NOW = text("CURRENT_TIMESTAMP")
ROLES = ("billing", "operator", "viewer")


def _created() -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW))


class ApiTokenRow(SQLModel, table=True):
    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('billing', 'operator', 'viewer')", name="role_must_be_billing_operator_or_viewer"),
        CheckConstraint("length(name) BETWEEN 1 AND 63", name="token_name_must_be_1_to_63_characters"),
    )

    name: str = Field(sa_column=Column(Text, primary_key=True))
    role: str = Field(sa_column=Column(Text, nullable=False))
    token_hash: str = Field(sa_column=Column(Text, nullable=False, unique=True))
    created_at: datetime | None = _created()
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class IdempotencyKeyRow(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    __table_args__ = (PrimaryKeyConstraint("principal", "key"),)

    principal: str = Field(sa_column=Column(Text, nullable=False))
    key: str = Field(sa_column=Column(Text, nullable=False))
    request_hash: str = Field(sa_column=Column(Text, nullable=False))
    status_code: int = Field(sa_column=Column(Integer, nullable=False))
    response_body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = _created()


class WebhookEventRow(SQLModel, table=True):
    __tablename__ = "webhook_events"

    event_id: str = Field(sa_column=Column(Text, primary_key=True))
    type: str = Field(sa_column=Column(Text, nullable=False))
    tenant: str | None = Field(default=None, sa_column=Column(Text))
    outcome: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime | None = _created()


# A subscription binds its tenant from the first plan applied until it is deleted; a row without a plan
# (a subscription Fleet never provisioned) binds nothing. At most one binding per tenant (migration 7).
BINDS_TENANT = "plan IS NOT NULL AND deleted_at IS NULL"
ONE_SUBSCRIPTION_PER_TENANT = "billing_subscriptions_one_per_tenant"


class SubscriptionRow(SQLModel, table=True):
    """The last billing state applied per subscription: what makes out-of-order events harmless, and which
    subscription a tenant belongs to (exactly one)."""

    __tablename__ = "billing_subscriptions"
    __table_args__ = (
        Index(ONE_SUBSCRIPTION_PER_TENANT, "tenant", unique=True, sqlite_where=text(BINDS_TENANT),
              postgresql_where=text(BINDS_TENANT)),
    )

    subscription_id: str = Field(sa_column=Column(Text, primary_key=True))
    tenant: str = Field(sa_column=Column(Text, nullable=False, index=True))
    customer: str | None = Field(default=None, sa_column=Column(Text))
    plan: str | None = Field(default=None, sa_column=Column(Text))
    last_event_created: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    deleted_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class PlanRow(SQLModel, table=True):
    __tablename__ = "plans"
    __table_args__ = (
        *resource_checks(),
    )

    id: str = Field(sa_column=Column(Text, primary_key=True))
    template: str = Field(sa_column=Column(Text, nullable=False))
    cpu_millicores: int | None = Field(default=None, sa_column=Column(BigInteger))
    memory_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    disk_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    pids: int | None = Field(default=None, sa_column=Column(BigInteger))
    io_bytes_per_second: int | None = Field(default=None, sa_column=Column(BigInteger))
    ingress_ports: str | None = Field(default=None, sa_column=Column(Text))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime | None = _created()


class SigningKeyRow(SQLModel, table=True):
    __tablename__ = "signing_keys"

    kid: str = Field(sa_column=Column(Text, primary_key=True))
    secret: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime | None = _created()
    retired_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


API_TOKENS = ApiTokenRow.__table__  # type: ignore[attr-defined]
IDEMPOTENCY_KEYS = IdempotencyKeyRow.__table__  # type: ignore[attr-defined]
WEBHOOK_EVENTS = WebhookEventRow.__table__  # type: ignore[attr-defined]
SUBSCRIPTIONS = SubscriptionRow.__table__  # type: ignore[attr-defined]
PLANS = PlanRow.__table__  # type: ignore[attr-defined]
SIGNING_KEYS = SigningKeyRow.__table__  # type: ignore[attr-defined]
ACCESS_TABLES = ("api_tokens", "idempotency_keys", "webhook_events", "billing_subscriptions", "plans", "signing_keys")

for _table_name, _constraint in sqlite_access_checks():
    SQLModel.metadata.tables[_table_name].append_constraint(_constraint)

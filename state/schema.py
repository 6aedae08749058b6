"""The tables, as SQLModel classes: one definition for both engines.

CHECK constraints that SQL can state portably live here; the ones that need a dialect's own functions
(GLOB and json_* in SQLite, regular expressions in PostgreSQL) are attached with `ddl_if` from
`state/dialects/`. Triggers (generation, revision, soft delete, template existence) are per dialect too.
Resource columns are in base units; NULL means "the template's default" (on a template, a NULL
`io_bytes_per_second` means no bandwidth limit).
"""

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, DateTime, Float, Integer, Text, false, text
from sqlmodel import Field, SQLModel

from specs import format_bytes, limits
from state.dialects.postgresql import install_functions, postgresql_checks
from state.dialects.sqlite import sqlite_checks

_NOW = text("CURRENT_TIMESTAMP")


def _range(column: str, low: int, high: int) -> CheckConstraint:
    # The name is the rule: SQLite and PostgreSQL both put it in the error a raw write gets.
    rule = f"{column}_must_be_between_{format_bytes(low)}_and_{format_bytes(high)}"
    if column == "cpu_millicores" or column == "pids":
        rule = f"{column}_must_be_between_{low}_and_{high}"
    return CheckConstraint(f"{column} IS NULL OR ({column} BETWEEN {low} AND {high})", name=rule)


def resource_checks() -> tuple[CheckConstraint, ...]:
    """The range CHECK of every resource column (NULL: the template's default), fresh for each table."""
    return (
        _range("cpu_millicores", limits.CPU_MILLICORES_MIN, limits.CPU_MILLICORES_MAX),
        _range("memory_bytes", limits.MEMORY_BYTES_MIN, limits.MEMORY_BYTES_MAX),
        _range("disk_bytes", limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX),
        _range("pids", limits.PIDS_MIN, limits.PIDS_MAX),
        _range("io_bytes_per_second", limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX),
    )


class TenantRow(SQLModel, table=True):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 63", name="name_must_be_1_to_63_characters"),
        *resource_checks(),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(Text, nullable=False, unique=True))
    labels: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    template: str = Field(sa_column=Column(Text, nullable=False))
    cpu_millicores: int | None = Field(default=None, sa_column=Column(BigInteger))
    memory_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    disk_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    pids: int | None = Field(default=None, sa_column=Column(BigInteger))
    io_bytes_per_second: int | None = Field(default=None, sa_column=Column(BigInteger))  # each way (migration 6)
    ingress_ports: str | None = Field(default=None, sa_column=Column(Text))  # JSON array, e.g. '[80, 443]'
    paused: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    node: str | None = Field(default=None, sa_column=Column(Text))
    generation: int = Field(default=1, sa_column=Column(BigInteger, nullable=False, server_default="1"))
    revision: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0", index=True))
    created_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )
    updated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )
    deletion_requested_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # Set only by the reconciler once the driver confirmed everything gone; lets the row really go.
    finalized: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    # The revision the tenant was created at, stamped by the insert trigger and never changed: its identity,
    # unlike `id` (SQLite reuses a deleted row's id) or the name (migration 8).
    created_revision: int | None = Field(default=None, sa_column=Column(BigInteger))


class TenantStatusRow(SQLModel, table=True):
    __tablename__ = "tenant_status"

    name: str = Field(sa_column=Column(Text, primary_key=True))
    phase: str = Field(sa_column=Column(Text, nullable=False))
    observed_generation: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    node: str | None = Field(default=None, sa_column=Column(Text))
    url: str | None = Field(default=None, sa_column=Column(Text))
    address: str | None = Field(default=None, sa_column=Column(Text))
    template: str | None = Field(default=None, sa_column=Column(Text))
    conditions: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    observed: str | None = Field(default=None, sa_column=Column(Text))  # last Observed, as JSON
    revision: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0", index=True))
    updated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


class TemplateRow(SQLModel, table=True):
    __tablename__ = "templates"
    __table_args__ = (
        *resource_checks(),
    )

    name: str = Field(sa_column=Column(Text, primary_key=True))
    version: str = Field(sa_column=Column(Text, nullable=False))
    cpu_millicores: int = Field(sa_column=Column(BigInteger, nullable=False))
    memory_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    disk_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    pids: int = Field(sa_column=Column(BigInteger, nullable=False))
    io_bytes_per_second: int | None = Field(default=None, sa_column=Column(BigInteger))  # NULL: unlimited
    ingress_ports: str = Field(default="[80]", sa_column=Column(Text, nullable=False, server_default="[80]"))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    created_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


class EventRow(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    tenant: str = Field(sa_column=Column(Text, nullable=False, index=True))
    node: str | None = Field(default=None, sa_column=Column(Text))
    type: str = Field(default="Normal", sa_column=Column(Text, nullable=False, server_default="Normal"))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    action: str | None = Field(default=None, sa_column=Column(Text))
    message: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    duration_ms: float | None = Field(default=None, sa_column=Column(Float))
    generation: int | None = Field(default=None, sa_column=Column(BigInteger))
    details: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    created_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


class TenantTombstoneRow(SQLModel, table=True):
    """The last deletion of each name, stamped with a revision from the same counter as tenants: a watcher
    resuming from an older revision learns that the tenant is gone (migration 4)."""

    __tablename__ = "tenant_tombstones"

    name: str = Field(sa_column=Column(Text, primary_key=True))
    revision: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0", index=True))
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


class RevisionRow(SQLModel, table=True):
    """One row holding the last revision stamped (SQLite; PostgreSQL uses a sequence)."""

    __tablename__ = "fleet_revision"

    id: int = Field(sa_column=Column(Integer, primary_key=True))
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class MigrationRow(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(sa_column=Column(Integer, primary_key=True))
    description: str = Field(sa_column=Column(Text, nullable=False))
    applied_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


TENANTS = TenantRow.__table__  # type: ignore[attr-defined]
STATUS = TenantStatusRow.__table__  # type: ignore[attr-defined]
TEMPLATES = TemplateRow.__table__  # type: ignore[attr-defined]
EVENTS = EventRow.__table__  # type: ignore[attr-defined]
TOMBSTONES = TenantTombstoneRow.__table__  # type: ignore[attr-defined]

for _table_name, _constraint in [*sqlite_checks(), *postgresql_checks()]:
    SQLModel.metadata.tables[_table_name].append_constraint(_constraint)
install_functions(SQLModel.metadata)

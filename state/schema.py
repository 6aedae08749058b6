"""The tables, as SQLAlchemy Core `Table`s on one `MetaData`: one definition for both engines.

Why Core and not SQLModel classes: nothing in Fleet maps rows to objects (every module reads and writes
with Core statements and turns rows into the `specs` models itself), and SQLModel with the ORM beneath it
cost a short-lived command such as `fleet get tenants` about half its run time just to import.

CHECK constraints that SQL can state portably live here; the ones that need a dialect's own functions
(GLOB and json_* in SQLite, regular expressions in PostgreSQL) are attached by `state.migrations` from
`state/dialects/`, the only code that creates tables, so a command that only reads never imports them.
Triggers (generation, revision, soft delete, template existence) are per dialect too. Resource columns are
in base units; NULL means "the template's default" (on a template, a NULL `io_bytes_per_second` means no
bandwidth limit).
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    false,
    text,
)

from specs import format_bytes, limits
from specs.sleep import SLEEP_AFTER_MAX
from state.columns import RESOURCE_COLUMNS

METADATA = MetaData()


def timestamp(name: str = "created_at") -> Column[object]:
    """A timestamp column the database fills in when a row is inserted (CURRENT_TIMESTAMP)."""
    return Column(name, DateTime(timezone=True), nullable=False, server_default=text("CURRENT_TIMESTAMP"))


def _range(column: str, low: int, high: int) -> CheckConstraint:
    # The name is the rule: SQLite and PostgreSQL both put it in the error a raw write gets.
    rule = f"{column}_must_be_between_{format_bytes(low)}_and_{format_bytes(high)}"
    if column == "cpu_millicores" or column == "pids":
        rule = f"{column}_must_be_between_{low}_and_{high}"
    return CheckConstraint(f"{column} IS NULL OR ({column} BETWEEN {low} AND {high})", name=rule)


def resource_columns(*, required: bool = False) -> list[Column[int]]:
    """The resource columns of a table, in base units (`io_bytes_per_second` each way), in the order of
    `RESOURCE_COLUMNS`. NULL is "the template's default"; a template, `required`, has every default but
    io, whose NULL there means no bandwidth limit."""
    return [
        Column(column, BigInteger, nullable=not required or column == RESOURCE_COLUMNS["io"])
        for column in RESOURCE_COLUMNS.values()
    ]


def resource_checks() -> tuple[CheckConstraint, ...]:
    """The range CHECK of every resource column (NULL: the template's default), fresh for each table."""
    return (
        _range("cpu_millicores", limits.CPU_MILLICORES_MIN, limits.CPU_MILLICORES_MAX),
        _range("memory_bytes", limits.MEMORY_BYTES_MIN, limits.MEMORY_BYTES_MAX),
        _range("disk_bytes", limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX),
        _range("pids", limits.PIDS_MIN, limits.PIDS_MAX),
        _range("io_bytes_per_second", limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX),
    )


def sleep_after_column() -> Column[int]:
    """Seconds without a visitor before a tenant sleeps (migration 13): NULL is the template's rule on a
    tenant or a plan, and never on a template; 0 is never."""
    return Column("sleep_after_seconds", BigInteger)


def sleep_after_check() -> CheckConstraint:
    return CheckConstraint(
        f"sleep_after_seconds IS NULL OR (sleep_after_seconds BETWEEN 0 AND {SLEEP_AFTER_MAX})",
        name=f"sleep_after_seconds_must_be_between_0_and_{SLEEP_AFTER_MAX}",
    )


TENANTS = Table(
    "tenants", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    Column("labels", Text, nullable=False, server_default="{}"),
    Column("template", Text, nullable=False),
    *resource_columns(),  # io since migration 6
    Column("ingress_ports", Text),  # JSON array, e.g. '[80, 443]'
    Column("egress", Text),  # canonical JSON rules, e.g. '[{"to": "internet"}]'; NULL: the template's (migration 12)
    Column("paused", Boolean, nullable=False, server_default=false()),
    sleep_after_column(),
    # When the tenant was put to sleep (idle at the gateway, or `fleet sleep`); NULL while awake. Not spec:
    # a write of it is a new revision, never a new generation.
    Column("asleep_since", DateTime(timezone=True)),
    Column("node", Text),
    Column("generation", BigInteger, nullable=False, server_default="1"),
    Column("revision", BigInteger, nullable=False, server_default="0", index=True),
    timestamp(),
    timestamp("updated_at"),
    Column("deletion_requested_at", DateTime(timezone=True)),
    # Set only by the reconciler once the driver confirmed everything gone; lets the row really go.
    Column("finalized", Boolean, nullable=False, server_default=false()),
    # The revision the tenant was created at, stamped by the insert trigger and never changed: its identity,
    # unlike `id` (SQLite reuses a deleted row's id) or the name (migration 8).
    Column("created_revision", BigInteger),
    CheckConstraint("length(name) BETWEEN 1 AND 63", name="name_must_be_1_to_63_characters"),
    *resource_checks(),
    sleep_after_check(),
)

STATUS = Table(
    "tenant_status", METADATA,
    Column("name", Text, primary_key=True),
    Column("phase", Text, nullable=False),
    Column("observed_generation", BigInteger, nullable=False, server_default="0"),
    Column("node", Text),
    Column("url", Text),
    Column("address", Text),
    Column("template", Text),
    Column("conditions", Text, nullable=False, server_default="[]"),
    Column("last_error", Text),
    Column("observed", Text),  # last Observed, as JSON
    Column("revision", BigInteger, nullable=False, server_default="0", index=True),
    timestamp("updated_at"),
)

TEMPLATES = Table(
    "templates", METADATA,
    Column("name", Text, primary_key=True),
    Column("version", Text, nullable=False),
    *resource_columns(required=True),
    Column("ingress_ports", Text, nullable=False, server_default="[80]"),
    Column("egress", Text, nullable=False, server_default="[]"),  # migration 12: none unless set
    Column("description", Text, nullable=False, server_default=""),
    timestamp(),
    sleep_after_column(),
    *resource_checks(),
    sleep_after_check(),
)

EVENTS = Table(
    "events", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", Text, nullable=False, index=True),
    Column("node", Text),
    Column("type", Text, nullable=False, server_default="Normal"),
    Column("reason", Text, nullable=False),
    Column("action", Text),
    Column("message", Text, nullable=False, server_default=""),
    Column("duration_ms", Float),
    Column("generation", BigInteger),
    Column("details", Text, nullable=False, server_default="{}"),
    timestamp(),
)

# The last deletion of each name, stamped with a revision from the same counter as tenants: a watcher
# resuming from an older revision learns that the tenant is gone (migration 4).
TOMBSTONES = Table(
    "tenant_tombstones", METADATA,
    Column("name", Text, primary_key=True),
    Column("revision", BigInteger, nullable=False, server_default="0", index=True),
    timestamp("deleted_at"),
)

# One row holding the last revision stamped (SQLite; PostgreSQL uses a sequence).
REVISION = Table(
    "fleet_revision", METADATA,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

MIGRATIONS_TABLE = Table(
    "schema_migrations", METADATA,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    timestamp("applied_at"),
)

"""Versioned schema migrations, recorded in `schema_migrations` and applied in order, once each.

An equivalent of alembic kept small: each migration is a function of (connection, dialect). A store
newer than this code is refused rather than written to.

The only code that creates tables, so the dialects' own CHECKs (and PostgreSQL's functions they call) are
attached to the tables here, and only once a migration is to run: a command opening a store that is up to
date checks its version with one read (no write lock) and loads neither those rules nor the logger.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from sqlalchemy import CheckConstraint, Connection, Engine, and_, func, inspect, select

from specs import Network, PermanentError, Resources, Template
from state.access_schema import ACCESS_TABLES, ONE_SUBSCRIPTION_PER_TENANT, attach_partial_indexes
from state.columns import ports_value, resource_values
from state.dialects import Dialect
from state.housekeeping_schema import AGE_INDEXES, WATCH_HORIZON
from state.ledger import NODE_SETTINGS
from state.nodes_schema import NODE_TABLES
from state.schema import METADATA, MIGRATIONS_TABLE, REVISION, TEMPLATES, TOMBSTONES

BUILTIN_TEMPLATE = Template(
    name="base",
    version="1",
    description="Built-in: a small Linux userland whose container serves HTTP on port 80",
    resources=Resources.model_validate({"cpu": "500m", "memory": "256Mi", "disk": "1Gi", "pids": 256, "io": "100Mi"}),
    network=Network(ingress=(80,)),
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection, Dialect], None]


def _initial(conn: Connection, dialect: Dialect) -> None:
    tables = [
        METADATA.tables[name] for name in ("tenants", "tenant_status", "templates", "events", "fleet_revision")
    ]
    METADATA.create_all(conn, tables=tables)
    conn.execute(REVISION.insert().values(id=1, value=0))
    dialect.install_triggers(conn)
    conn.execute(
        TEMPLATES.insert().values(
            name=BUILTIN_TEMPLATE.name,
            version=BUILTIN_TEMPLATE.version,
            **resource_values(BUILTIN_TEMPLATE.resources),
            ingress_ports=ports_value(BUILTIN_TEMPLATE.network),
            description=BUILTIN_TEMPLATE.description,
        )
    )


def _access(conn: Connection, dialect: Dialect) -> None:
    """Issue 5: API tokens, idempotency keys, webhook events, billing subscriptions, plans, signing keys."""
    METADATA.create_all(conn, tables=[METADATA.tables[name] for name in ACCESS_TABLES])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tenants, status, templates, events, triggers", _initial),
    Migration(2, "api tokens, idempotency keys, webhook events, plans, signing keys", _access),
)


def _nodes(conn: Connection, dialect: Dialect) -> None:
    """Issue 6: the nodes of a fleet and the leases (scheduler leadership, node heartbeats)."""
    METADATA.create_all(conn, tables=[METADATA.tables[name] for name in NODE_TABLES])


MIGRATIONS = (*MIGRATIONS, Migration(3, "nodes and leases (scheduler, heartbeats)", _nodes))


def _tombstones(conn: Connection, dialect: Dialect) -> None:
    """The watch stream's deletions: one tombstone per finalized name, stamped with a revision."""
    METADATA.create_all(conn, tables=[TOMBSTONES])
    dialect.install_tombstone_triggers(conn)


MIGRATIONS = (*MIGRATIONS, Migration(4, "tenant tombstones (deletions in the watch feed)", _tombstones))


@cache  # once per process: the constraints stay attached to the shared tables
def _attach_dialect_rules() -> None:
    """The dialects' own CHECKs, each with `ddl_if` (only its dialect creates it), the PostgreSQL functions
    they call (created before any table on PostgreSQL), and the partial indexes."""
    from state.dialects.postgresql import install_functions, postgresql_checks
    from state.dialects.sqlite import sqlite_access_checks, sqlite_checks

    for table_name, constraint in [*sqlite_checks(), *sqlite_access_checks(), *postgresql_checks()]:
        METADATA.tables[table_name].append_constraint(constraint)
    install_functions(METADATA)
    attach_partial_indexes()


def _up_to_date(engine: Engine) -> bool:
    """Every migration is applied, as read without the write lock."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(MIGRATIONS_TABLE.name):
            return False
        versions = MIGRATIONS_TABLE.c.version
        count, newest = conn.execute(select(func.count(versions), func.max(versions))).one()
    return bool(count == len(MIGRATIONS) and newest == max(migration.version for migration in MIGRATIONS))


def migrate(engine: Engine, dialect: Dialect) -> int:
    """Bring the schema to the newest version; return it."""
    newest = max(migration.version for migration in MIGRATIONS)
    if _up_to_date(engine):
        return newest  # the common case, every time a command opens a store
    from loguru import logger  # here: a command that only opens an up-to-date store never loads it

    _attach_dialect_rules()
    with engine.connect().execution_options(**dialect.write_options()) as conn, conn.begin():
        dialect.lock_for_migration(conn)
        if not inspect(conn).has_table("schema_migrations"):
            MIGRATIONS_TABLE.create(conn)
        applied = set(conn.execute(select(MIGRATIONS_TABLE.c.version)).scalars())
        if applied and max(applied) > newest:
            raise PermanentError(
                f"the store is at schema version {max(applied)}, newer than this Fleet ({newest}); upgrade Fleet"
            )
        for migration in sorted(MIGRATIONS, key=lambda m: m.version):
            if migration.version in applied:
                continue
            migration.apply(conn, dialect)
            conn.execute(MIGRATIONS_TABLE.insert().values(version=migration.version, description=migration.description))
            logger.info("Applied migration", version=migration.version, description=migration.description)
    return newest


def _memory_pages(conn: Connection, dialect: Dialect) -> None:
    """The kernel rounds memory limits down to pages: a limit that is not whole pages would read back
    different from the spec on every pass and be "repaired" forever."""
    dialect.install_page_rules(conn)


MIGRATIONS = (*MIGRATIONS, Migration(5, "memory limits in whole 4Ki pages", _memory_pages))


def _io_limits(conn: Connection, dialect: Dialect) -> None:
    """Disk bandwidth (`resources.io`): a column on tenants, templates and plans with the range CHECK a raw
    write gets on every engine, a generation bump when it changes, and 100Mi/s for the built-in template."""
    column = "io_bytes_per_second"
    for name in ("tenants", "templates", "plans"):
        if column in {c["name"] for c in inspect(conn).get_columns(name)}:
            continue  # a store created since: migrations 1 and 2 made the table with it
        table = METADATA.tables[name]
        check = next(
            c for c in table.constraints if isinstance(c, CheckConstraint) and str(c.name).startswith(f"{column}_")
        )
        # Portable SQL (nullable, so SQLite can add it with a CHECK), from the table's own definition; the
        # name quoted as CREATE TABLE quotes it ("1Mi": PostgreSQL would fold an unquoted name to "1mi").
        sql_type = table.c[column].type.compile(dialect=conn.dialect)
        rule = conn.dialect.identifier_preparer.quote(str(check.name))
        conn.exec_driver_sql(
            f"ALTER TABLE {name} ADD COLUMN {column} {sql_type} CONSTRAINT {rule} CHECK ({check.sqltext})"
        )
    dialect.reinstall_triggers(conn)  # their list of spec columns now has io
    conn.execute(
        TEMPLATES.update()
        .where(
            and_(
                TEMPLATES.c.name == BUILTIN_TEMPLATE.name,
                TEMPLATES.c.version == BUILTIN_TEMPLATE.version,
                TEMPLATES.c.io_bytes_per_second.is_(None),
            )
        )
        .values(io_bytes_per_second=BUILTIN_TEMPLATE.resources.io)
    )


MIGRATIONS = (*MIGRATIONS, Migration(6, "disk bandwidth limits (resources.io)", _io_limits))


def _one_subscription_per_tenant(conn: Connection, dialect: Dialect) -> None:
    """Issue 10: a tenant belongs to exactly one billing subscription, so no other subscription's events can
    re-plan or delete it. A store that already has two subscriptions bound to one tenant keeps the one with
    the oldest last event (the first to provision it, as far as the store can tell); the others are
    unbound (their plan cleared: they own nothing, and their cancellation deletes nothing), with a warning
    naming them."""
    table = METADATA.tables["billing_subscriptions"]
    index = next(i for i in table.indexes if i.name == ONE_SUBSCRIPTION_PER_TENANT)
    if index.name in {i["name"] for i in inspect(conn).get_indexes("billing_subscriptions")}:
        return  # a store created since: migration 2 made the table with it
    bound = conn.execute(
        select(table.c.subscription_id, table.c.tenant)
        .where(and_(table.c.plan.is_not(None), table.c.deleted_at.is_(None)))
        .order_by(table.c.tenant, table.c.last_event_created, table.c.subscription_id)
    ).all()
    from loguru import logger  # only when this migration runs

    owners: dict[str, str] = {}
    for row in bound:
        if row.tenant not in owners:
            owners[row.tenant] = row.subscription_id
            continue
        conn.execute(table.update().where(table.c.subscription_id == row.subscription_id).values(plan=None))
        logger.warning("Unbound a second subscription from its tenant", tenant=row.tenant,
                       subscription=row.subscription_id, kept=owners[row.tenant])
    index.create(conn)


MIGRATIONS = (*MIGRATIONS, Migration(7, "one billing subscription per tenant", _one_subscription_per_tenant))


def _tenant_identity(conn: Connection, dialect: Dialect) -> None:
    """Issue 10: a tenant's identity beyond its name, so a claim minted for a tenant is refused by a tenant
    created again under that name. `created_revision` is the revision of the tenant's insert, stamped by
    the insert trigger and kept by every update; existing tenants get their current revision (unique too)."""
    if "created_revision" not in {c["name"] for c in inspect(conn).get_columns("tenants")}:
        conn.exec_driver_sql("ALTER TABLE tenants ADD COLUMN created_revision BIGINT")  # a store created since has it
    dialect.reinstall_triggers(conn)  # the insert trigger stamps it, the update trigger keeps it
    conn.exec_driver_sql("UPDATE tenants SET created_revision = revision WHERE created_revision IS NULL")


MIGRATIONS = (*MIGRATIONS, Migration(8, "tenant identity (created_revision)", _tenant_identity))


def _housekeeping(conn: Connection, dialect: Dialect) -> None:
    """Issue 10: records pruned by age get an index on their age, and the watch feed a horizon (the newest
    revision among pruned tombstones; a watcher resuming from before it is told to list again)."""
    METADATA.create_all(conn, tables=[WATCH_HORIZON])
    if conn.execute(select(WATCH_HORIZON.c.id).where(WATCH_HORIZON.c.id == 1)).first() is None:
        conn.execute(WATCH_HORIZON.insert().values(id=1, revision=0))
    for index in AGE_INDEXES:
        index.create(conn, checkfirst=True)  # a store created since has them from its tables' creation


MIGRATIONS = (*MIGRATIONS, Migration(9, "pruning by age: age indexes and the watch horizon", _housekeeping))


def _node_settings(conn: Connection, dialect: Dialect) -> None:
    """Issue 13: operators' settings per node (the fleet ledger's flat monthly price), in `state.ledger`."""
    METADATA.create_all(conn, tables=[NODE_SETTINGS])


MIGRATIONS = (*MIGRATIONS, Migration(10, "node settings (monthly price, for the fleet ledger)", _node_settings))


def _disk_shared(conn: Connection, dialect: Dialect) -> None:
    """Issue 13: what each node's tenants share with their templates by copy-on-write, as its agent reports
    it (NULL where the driver does not measure it). A store created since has the column from migration 3."""
    if "disk_shared_bytes" not in {c["name"] for c in inspect(conn).get_columns("nodes")}:
        conn.exec_driver_sql("ALTER TABLE nodes ADD COLUMN disk_shared_bytes BIGINT")


MIGRATIONS = (*MIGRATIONS, Migration(11, "disk shared by copy-on-write, per node", _disk_shared))


def _egress(conn: Connection, dialect: Dialect) -> None:
    """Issue 14: `spec.network.egress` on tenants, plans (NULL: the template's) and templates (none, '[]', by
    default: what every tenant had before), with the CHECK a raw write gets on every engine and, through
    the triggers, a check of each rule and a generation bump when it changes. A store created since has
    the column from its first migrations."""
    if dialect.name == "postgresql":
        from state.dialects.postgresql import EGRESS_CHECK
    else:
        from state.dialects.sqlite import EGRESS_CHECK
    rule = conn.dialect.identifier_preparer.quote("egress_must_be_a_json_array_of_rules")
    for name, extra in (("tenants", ""), ("templates", " NOT NULL DEFAULT '[]'"), ("plans", "")):
        if "egress" in {c["name"] for c in inspect(conn).get_columns(name)}:
            continue
        conn.exec_driver_sql(
            f"ALTER TABLE {name} ADD COLUMN egress TEXT{extra} CONSTRAINT {rule} CHECK ({EGRESS_CHECK})"
        )
    dialect.reinstall_triggers(conn)  # their list of spec columns now has egress, and each rule is checked


MIGRATIONS = (*MIGRATIONS, Migration(12, "egress by policy (spec.network.egress)", _egress))


def _sleep(conn: Connection, dialect: Dialect) -> None:
    """Issue 14: `sleep.after` on tenants, templates and plans (whole seconds, with the range CHECK a raw
    write gets) and `asleep_since` on tenants. A store created since has them from its first migrations."""
    for name in ("tenants", "templates", "plans"):
        columns = {c["name"] for c in inspect(conn).get_columns(name)}
        table = METADATA.tables[name]
        if "sleep_after_seconds" not in columns:
            check = next(c for c in table.constraints
                         if isinstance(c, CheckConstraint) and str(c.name).startswith("sleep_after_seconds_"))
            rule = conn.dialect.identifier_preparer.quote(str(check.name))
            conn.exec_driver_sql(
                f"ALTER TABLE {name} ADD COLUMN sleep_after_seconds BIGINT CONSTRAINT {rule} CHECK ({check.sqltext})"
            )
        if name == "tenants" and "asleep_since" not in columns:
            sql_type = table.c.asleep_since.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE tenants ADD COLUMN asleep_since {sql_type}")
    dialect.reinstall_triggers(conn)  # their list of spec columns now has sleep_after_seconds


MIGRATIONS = (*MIGRATIONS, Migration(13, "idle tenants sleep (sleep.after, asleep_since)", _sleep))

"""SQLite: the embedded store of a single machine. WAL, immediate write transactions, and triggers.

Triggers do what a raw `INSERT` or `UPDATE` from a billing system must also get: a revision stamp from
one global counter on every write, a generation bump when the spec changes, a soft delete instead of a
lost one, and a refusal of unknown templates and bad port lists.
"""

import re
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    ColumnElement,
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    func,
    inspect,
    make_url,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from specs import limits

if TYPE_CHECKING:  # imported where a listener is made: a command that only reads never waits on one
    from state.dialects.sqlite_listener import InotifyListener

NAME_CHECK = "{col} NOT GLOB '*[^a-z0-9-]*' AND {col} NOT GLOB '-*' AND {col} NOT GLOB '*-'"

# spec.network.egress (migration 12): a JSON array of at most EGRESS_RULES_MAX rules, NULL the template's.
EGRESS_CHECK = (
    f"egress IS NULL OR (json_valid(egress) AND json_type(egress) = 'array'"
    f" AND json_array_length(egress) <= {limits.EGRESS_RULES_MAX})"
)
# Each rule {"to": an IPv4 CIDR or "internet", "ports": [1-65535, ...]} (optional); the drivers parse `to` again.
_BAD_EGRESS = (
    "NEW.egress IS NOT NULL AND json_valid(NEW.egress) AND json_type(NEW.egress) = 'array' AND EXISTS ("
    "SELECT 1 FROM json_each(NEW.egress) AS r WHERE r.type != 'object'"
    " OR json_type(r.value, '$.to') IS NOT 'text'"
    " OR (json_extract(r.value, '$.to') != 'internet'"
    "     AND json_extract(r.value, '$.to') NOT GLOB '[0-9]*.[0-9]*.[0-9]*.[0-9]*')"
    " OR EXISTS (SELECT 1 FROM json_each(r.value) AS k WHERE k.key NOT IN ('to', 'ports'))"
    " OR (json_type(r.value, '$.ports') IS NOT NULL AND json_type(r.value, '$.ports') != 'null' AND ("
    "     json_type(r.value, '$.ports') != 'array'"
    f"     OR json_array_length(r.value, '$.ports') NOT BETWEEN 1 AND {limits.PORTS_MAX}"
    "     OR EXISTS (SELECT 1 FROM json_each(r.value, '$.ports') AS p"
    "                 WHERE p.type != 'integer' OR p.value < 1 OR p.value > 65535))))"
)
_EGRESS_RULE = 'egress: each rule must be {"to": an IPv4 CIDR or "internet", "ports": [1-65535, ...] or absent}'

# (table, constraint name, SQL). Names say the rule: SQLite puts them in the error message.
CHECKS: list[tuple[str, str, str]] = [
    ("tenants", "name_must_be_a_dns_label", NAME_CHECK.format(col="name")),
    ("tenants", "template_must_be_a_dns_label", NAME_CHECK.format(col="template")),
    ("tenants", "labels_must_be_a_json_object", "json_valid(labels) AND json_type(labels) = 'object'"),
    (
        "tenants",
        "ingress_ports_must_be_a_json_array",
        f"ingress_ports IS NULL OR (json_valid(ingress_ports) AND json_type(ingress_ports) = 'array'"
        f" AND json_array_length(ingress_ports) <= {limits.PORTS_MAX})",
    ),
    ("tenants", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
    ("templates", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
    ("tenants", "paused_must_be_0_or_1", "paused IN (0, 1)"),
    ("templates", "template_name_must_be_a_dns_label", NAME_CHECK.format(col="name")),
]

# A change to any of these is a spec change: a new generation (and refused while deleting).
_SPEC_COLUMNS = (
    "template", "cpu_millicores", "memory_bytes", "disk_bytes", "pids", "io_bytes_per_second", "ingress_ports",
    "paused", "sleep_after_seconds", "egress",
)
_SPEC_CHANGED = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _SPEC_COLUMNS)


def _with_present_columns(conn: Connection, statement: str) -> str:
    """`statement` comparing only the spec columns the tenants table has yet: a migration that reinstalls
    the triggers runs before the later migrations add their columns."""
    present = {c["name"] for c in inspect(conn).get_columns("tenants")}
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _SPEC_COLUMNS if c in present)
    return statement.replace(_SPEC_CHANGED, changed)

_BAD_PORTS = (
    "NEW.ingress_ports IS NOT NULL AND json_valid(NEW.ingress_ports) AND EXISTS (SELECT 1 FROM"
    " json_each(NEW.ingress_ports) WHERE type != 'integer' OR value < 1 OR value > 65535)"
)

TRIGGERS = [
    # Stamp revision (and generation 1) on insert; the first revision is the tenant's identity for good.
    """CREATE TRIGGER IF NOT EXISTS tenants_stamp_insert AFTER INSERT ON tenants BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenants SET revision = (SELECT value FROM fleet_revision WHERE id = 1), generation = 1,
                created_revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE id = NEW.id;
       END""",
    # Every write gets a new revision; a spec change also a new generation. The inner UPDATE changes
    # revision, so the WHEN keeps it from stamping itself again.
    f"""CREATE TRIGGER IF NOT EXISTS tenants_stamp_update AFTER UPDATE ON tenants
         WHEN NEW.revision IS OLD.revision BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenants SET revision = (SELECT value FROM fleet_revision WHERE id = 1),
                generation = OLD.generation + (CASE WHEN {_SPEC_CHANGED} THEN 1 ELSE 0 END),
                updated_at = CURRENT_TIMESTAMP, created_revision = COALESCE(OLD.created_revision, OLD.revision)
          WHERE id = NEW.id;
       END""",
    # A DELETE from anyone but the reconciler becomes a delete request, so no delete is ever lost.
    """CREATE TRIGGER IF NOT EXISTS tenants_soft_delete BEFORE DELETE ON tenants WHEN NOT OLD.finalized BEGIN
         UPDATE tenants SET deletion_requested_at = COALESCE(OLD.deletion_requested_at, CURRENT_TIMESTAMP)
          WHERE id = OLD.id;
         SELECT RAISE(IGNORE);
       END""",
    """CREATE TRIGGER IF NOT EXISTS tenants_delete_is_final BEFORE UPDATE ON tenants
         WHEN OLD.deletion_requested_at IS NOT NULL AND NEW.deletion_requested_at IS NULL BEGIN
         SELECT RAISE(ABORT, 'deletion_requested_at: a requested delete cannot be taken back');
       END""",
    f"""CREATE TRIGGER IF NOT EXISTS tenants_no_spec_change_while_deleting BEFORE UPDATE ON tenants
         WHEN OLD.deletion_requested_at IS NOT NULL AND ({_SPEC_CHANGED}) BEGIN
         SELECT RAISE(ABORT, 'name: the tenant is being deleted; wait for the delete, then create it again');
       END""",
    """CREATE TRIGGER IF NOT EXISTS tenants_template_known_insert BEFORE INSERT ON tenants
         WHEN NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) BEGIN
         SELECT RAISE(ABORT, 'template: unknown template; see fleet template list');
       END""",
    """CREATE TRIGGER IF NOT EXISTS tenants_template_known_update BEFORE UPDATE OF template ON tenants
         WHEN NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) BEGIN
         SELECT RAISE(ABORT, 'template: unknown template; see fleet template list');
       END""",
    f"""CREATE TRIGGER IF NOT EXISTS tenants_ports_insert BEFORE INSERT ON tenants WHEN {_BAD_PORTS} BEGIN
         SELECT RAISE(ABORT, 'ingress_ports: ports must be whole numbers from 1 to 65535');
       END""",
    f"""CREATE TRIGGER IF NOT EXISTS tenants_ports_update BEFORE UPDATE OF ingress_ports ON tenants
         WHEN {_BAD_PORTS} BEGIN
         SELECT RAISE(ABORT, 'ingress_ports: ports must be whole numbers from 1 to 65535');
       END""",
    f"""CREATE TRIGGER IF NOT EXISTS tenants_egress_insert BEFORE INSERT ON tenants WHEN {_BAD_EGRESS} BEGIN
         SELECT RAISE(ABORT, '{_EGRESS_RULE}');
       END""",
    f"""CREATE TRIGGER IF NOT EXISTS tenants_egress_update BEFORE UPDATE OF egress ON tenants WHEN {_BAD_EGRESS} BEGIN
         SELECT RAISE(ABORT, '{_EGRESS_RULE}');
       END""",
    """CREATE TRIGGER IF NOT EXISTS status_stamp_insert AFTER INSERT ON tenant_status BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_status SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END""",
    """CREATE TRIGGER IF NOT EXISTS status_stamp_update AFTER UPDATE ON tenant_status
         WHEN NEW.revision IS OLD.revision BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_status SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END""",
    """CREATE TRIGGER IF NOT EXISTS events_append_only BEFORE UPDATE ON events BEGIN
         SELECT RAISE(ABORT, 'events are append-only');
       END""",
]


# Migration 4: a tombstone takes the next revision, like any write the watch feed follows.
TOMBSTONE_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS tombstones_stamp AFTER INSERT ON tenant_tombstones BEGIN
         UPDATE fleet_revision SET value = value + 1 WHERE id = 1;
         UPDATE tenant_tombstones SET revision = (SELECT value FROM fleet_revision WHERE id = 1)
          WHERE name = NEW.name;
       END""",
]


def sqlite_checks() -> list[tuple[str, CheckConstraint]]:
    return [(table, CheckConstraint(sql, name=name).ddl_if(dialect="sqlite")) for table, name, sql in CHECKS]


class SQLiteDialect:
    name = "sqlite"

    def __init__(self) -> None:
        # One writer at a time anyway (BEGIN IMMEDIATE); queueing in-process wakes the next writer at once
        # instead of after a busy-handler sleep. Reentrant: a write may read through the store meanwhile.
        self._writer = threading.RLock()

    def create_engine(self, url: str) -> Engine:
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the driver so writers can BEGIN IMMEDIATE (no upgrade
            # deadlocks between two writers that both read first).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def install_triggers(self, conn: Connection) -> None:
        for statement in TRIGGERS:
            conn.exec_driver_sql(_with_present_columns(conn, statement))

    def install_tombstone_triggers(self, conn: Connection) -> None:
        for statement in TOMBSTONE_TRIGGERS:
            conn.exec_driver_sql(statement)

    def reinstall_triggers(self, conn: Connection) -> None:
        # CREATE TRIGGER IF NOT EXISTS would keep a trigger comparing the old spec columns: drop them first.
        for statement in TRIGGERS:
            name = re.search(r"CREATE TRIGGER IF NOT EXISTS (\w+)", statement)
            assert name is not None
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name.group(1)}")
        self.install_triggers(conn)

    def install_page_rules(self, conn: Connection) -> None:
        # SQLite cannot add a CHECK to an existing table; triggers give raw SQL the same refusal.
        for table in ("tenants", "templates"):
            for when, suffix in (("INSERT", "insert"), ("UPDATE OF memory_bytes", "update")):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_memory_pages_{suffix} BEFORE {when} ON {table}"
                    f" WHEN NEW.memory_bytes % {limits.MEMORY_PAGE} != 0 BEGIN"
                    f" SELECT RAISE(ABORT, 'memory_bytes: must be a whole number of 4Ki pages'); END"
                )

    def write_options(self) -> dict[str, object]:
        return {"sqlite_begin": "IMMEDIATE"}

    def write_lock(self) -> AbstractContextManager[object]:
        return self._writer

    def lock_for_migration(self, conn: Connection) -> None:
        """Nothing to do: a write transaction (BEGIN IMMEDIATE) already excludes other writers."""

    def current_revision_sql(self) -> str:
        return "SELECT value FROM fleet_revision WHERE id = 1"

    def epoch_now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def insert(self, table: Table) -> Any:
        return sqlite_insert(table)

    def greatest(self, first: ColumnElement[Any], second: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.max(first, second)  # SQLite's max() of two or more arguments is scalar

    def change_listener(self, url: str) -> "SleepListener | InotifyListener":
        """inotify on the database file's directory: a commit from any process wakes the waiter at once."""
        from state.dialects.sqlite_listener import InotifyListener

        database = make_url(url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return SleepListener()
        return InotifyListener(Path(database).resolve())


class SleepListener:
    """For an in-memory database (nothing to watch): waiting is sleeping, and the revision feed is polled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def wait(self, timeout: float) -> bool:
        self._event.wait(timeout)
        return False

    def close(self) -> None:
        self._event.set()


# Issue 5: CHECKs of the access tables (tokens, plans, signing keys), kept apart from CHECKS because
# those tables are defined in state/access_schema.py, after state/schema.py attached the ones above.
ACCESS_CHECKS: list[tuple[str, str, str]] = [
    ("plans", "template_must_be_a_dns_label", NAME_CHECK.format(col="template")),
    ("plans", "plan_id_must_be_a_billing_id", "id NOT GLOB '*[^A-Za-z0-9_.:-]*' AND length(id) BETWEEN 1 AND 128"),
    (
        "plans",
        "ingress_ports_must_be_a_json_array",
        f"ingress_ports IS NULL OR (json_valid(ingress_ports) AND json_type(ingress_ports) = 'array'"
        f" AND json_array_length(ingress_ports) <= {limits.PORTS_MAX})",
    ),
    ("plans", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
    ("api_tokens", "token_name_must_be_a_dns_label", NAME_CHECK.format(col="name")),
]


def sqlite_access_checks() -> list[tuple[str, CheckConstraint]]:
    return [(table, CheckConstraint(sql, name=name).ddl_if(dialect="sqlite")) for table, name, sql in ACCESS_CHECKS]

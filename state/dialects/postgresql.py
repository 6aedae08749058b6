"""PostgreSQL: the coordination store of a fleet. The same tables and the same contract as SQLite.

Why this module exists: a raw `INSERT`, `UPDATE` or `DELETE` from a billing system must get exactly what
it gets on SQLite (CHECKs that name the rule, a revision stamp on every write, a generation bump on a spec
change, a soft delete, a refusal of unknown templates and bad ports, append-only events), so all of it
is PL/pgSQL here, next to the engine settings, LISTEN/NOTIFY and the connection-loss retry.

Revision order. PostgreSQL lets concurrent transactions commit in another order than they took their
revisions, and a feed reader following `revision > last_seen` would then skip a row committed late with a
smaller revision. Every statement that writes `tenants` or `tenant_status` therefore first takes one
transaction-level advisory lock (a BEFORE ... FOR EACH STATEMENT trigger, so it is taken before any row
lock and two writers cannot deadlock on it), and the lock is released only at commit: revisions are taken
and made visible in one order. Writes to the feed tables are serialised, as they are on SQLite.

What it must never do: write rows itself (the store does), or let a libpq error escape untranslated.
"""

import contextlib
import re
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DDL,
    CheckConstraint,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    create_engine,
    event,
    func,
    inspect,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import make_url

from specs import limits

if TYPE_CHECKING:  # psycopg is imported where a connection is made: a SQLite store never loads it
    import psycopg

# The key of the advisory lock that orders revisions ("fleet" in ASCII).
REVISION_LOCK = 0x666C656574
# The key of the advisory lock that serialises migrations between processes starting together.
MIGRATION_LOCK = 0x666C656575
CHANNEL = "fleet_changes"

NAME_CHECK = "{col} ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'"

# spec.network.egress (migration 12): a JSON array of at most EGRESS_RULES_MAX rules, NULL the template's.
EGRESS_CHECK = (
    "egress IS NULL OR (CASE WHEN coalesce(fleet_json_type(egress), '') = 'array'"
    f" THEN jsonb_array_length(egress::jsonb) <= {limits.EGRESS_RULES_MAX} ELSE false END)"
)
# Each rule {"to": an IPv4 CIDR or "internet", "ports": [1-65535, ...]} (optional); the drivers parse `to`
# again. CASE keeps each test to the JSON types it can be asked of.
_BAD_EGRESS = (  # NEW through to_jsonb: see _SPEC_CHANGED
    "coalesce(fleet_json_type(to_jsonb(NEW)->>'egress'), '') = 'array' AND EXISTS ("
    " SELECT 1 FROM jsonb_array_elements((to_jsonb(NEW)->>'egress')::jsonb) AS r WHERE CASE"
    "  WHEN jsonb_typeof(r) <> 'object' THEN true"
    "  WHEN jsonb_typeof(r->'to') IS DISTINCT FROM 'string' THEN true"
    "  WHEN (r->>'to') <> 'internet' AND (r->>'to') !~ '^[0-9]{1,3}([.][0-9]{1,3}){3}(/[0-9]{1,2})?$' THEN true"
    "  WHEN EXISTS (SELECT 1 FROM jsonb_object_keys(r) AS k WHERE k NOT IN ('to', 'ports')) THEN true"
    "  WHEN r->'ports' IS NULL OR jsonb_typeof(r->'ports') = 'null' THEN false"
    "  WHEN jsonb_typeof(r->'ports') <> 'array' THEN true"
    f"  WHEN jsonb_array_length(r->'ports') NOT BETWEEN 1 AND {limits.PORTS_MAX} THEN true"
    "  ELSE EXISTS (SELECT 1 FROM jsonb_array_elements(r->'ports') AS port"
    "   WHERE jsonb_typeof(port) <> 'number' OR port::text !~ '^[0-9]+$'"
    "      OR port::text::numeric < 1 OR port::text::numeric > 65535) END)"
)

# (table, constraint name, SQL): the same names as SQLite's, so a raw write gets the same rule back.
CHECKS: list[tuple[str, str, str]] = [
    ("tenants", "name_must_be_a_dns_label", NAME_CHECK.format(col="name")),
    ("tenants", "template_must_be_a_dns_label", NAME_CHECK.format(col="template")),
    ("tenants", "labels_must_be_a_json_object", "coalesce(fleet_json_type(labels), '') = 'object'"),
    (
        "tenants",
        "ingress_ports_must_be_a_json_array",
        "ingress_ports IS NULL OR (CASE WHEN coalesce(fleet_json_type(ingress_ports), '') = 'array'"
        f" THEN jsonb_array_length(ingress_ports::jsonb) <= {limits.PORTS_MAX} ELSE false END)",
    ),
    ("templates", "template_name_must_be_a_dns_label", NAME_CHECK.format(col="name")),
    ("tenants", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
    ("templates", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
    ("plans", "egress_must_be_a_json_array_of_rules", EGRESS_CHECK),
]

# Created before the tables (their CHECKs call it): the JSON type of a text, NULL when it is not JSON,
# so a CHECK fails with its own name instead of a cast error.
FUNCTIONS = """
CREATE OR REPLACE FUNCTION fleet_json_type(value text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN jsonb_typeof(value::jsonb);
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$;
"""

# A change to any of these is a spec change: a new generation (and refused while deleting).
_SPEC_COLUMNS = (
    "template", "cpu_millicores", "memory_bytes", "disk_bytes", "pids", "io_bytes_per_second", "ingress_ports",
    "paused", "sleep_after_seconds", "egress",
)
# A marker in the trigger text: `_with_present_columns` puts in the comparison of the columns the table has
# when the trigger is installed (a migration reinstalls them before later ones add their columns).
_SPEC_CHANGED = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _SPEC_COLUMNS)


def _with_present_columns(conn: Connection, statement: str) -> str:
    """`statement` comparing only the spec columns the tenants table has yet: a migration that reinstalls
    the triggers runs before the later migrations add their columns."""
    present = {c["name"] for c in inspect(conn).get_columns("tenants")}
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _SPEC_COLUMNS if c in present)
    return statement.replace(_SPEC_CHANGED, changed)

TRIGGERS = [
    "CREATE SEQUENCE IF NOT EXISTS fleet_revision_seq",
    # Taken before any row lock of the statement, held until commit: revisions commit in order.
    f"""CREATE OR REPLACE FUNCTION fleet_revision_lock() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_advisory_xact_lock({REVISION_LOCK});
      RETURN NULL;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION fleet_tenants_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF (TG_OP = 'INSERT' OR NEW.template IS DISTINCT FROM OLD.template)
         AND NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) THEN
        RAISE EXCEPTION 'template: unknown template; see fleet template list' USING ERRCODE = 'check_violation';
      END IF;
      IF (TG_OP = 'INSERT' OR NEW.ingress_ports IS DISTINCT FROM OLD.ingress_ports)
         AND NEW.ingress_ports IS NOT NULL AND fleet_json_type(NEW.ingress_ports) = 'array' AND EXISTS (
          SELECT 1 FROM jsonb_array_elements(NEW.ingress_ports::jsonb) AS port
           WHERE jsonb_typeof(port) <> 'number' OR port::text !~ '^[0-9]+$'
              OR port::text::numeric < 1 OR port::text::numeric > 65535) THEN
        RAISE EXCEPTION 'ingress_ports: ports must be whole numbers from 1 to 65535'
          USING ERRCODE = 'check_violation';
      END IF;
      IF (TG_OP = 'INSERT' OR to_jsonb(NEW)->'egress' IS DISTINCT FROM to_jsonb(OLD)->'egress') AND {_BAD_EGRESS} THEN
        RAISE EXCEPTION 'egress: each rule must be {{"to": an IPv4 CIDR or "internet", "ports": [1-65535, ...]'
          ' or absent}}'
          USING ERRCODE = 'check_violation';
      END IF;
      IF TG_OP = 'INSERT' THEN
        NEW.generation := 1;
      ELSE
        IF OLD.deletion_requested_at IS NOT NULL AND NEW.deletion_requested_at IS NULL THEN
          RAISE EXCEPTION 'deletion_requested_at: a requested delete cannot be taken back'
            USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.deletion_requested_at IS NOT NULL AND ({_SPEC_CHANGED}) THEN
          RAISE EXCEPTION 'name: the tenant is being deleted; wait for the delete, then create it again'
            USING ERRCODE = 'check_violation';
        END IF;
        NEW.generation := OLD.generation + (CASE WHEN {_SPEC_CHANGED} THEN 1 ELSE 0 END);
        NEW.updated_at := CURRENT_TIMESTAMP;
        NEW.created_revision := COALESCE(OLD.created_revision, OLD.revision);
      END IF;
      NEW.revision := nextval('fleet_revision_seq');
      IF TG_OP = 'INSERT' THEN
        NEW.created_revision := NEW.revision;  -- the tenant's identity for good (claims are bound to it)
      END IF;
      RETURN NEW;
    END $$""",
    # A DELETE from anyone but the reconciler becomes a delete request, so no delete is ever lost.
    """CREATE OR REPLACE FUNCTION fleet_tenants_soft_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF OLD.finalized THEN
        RETURN OLD;
      END IF;
      UPDATE tenants SET deletion_requested_at = COALESCE(OLD.deletion_requested_at, CURRENT_TIMESTAMP)
       WHERE id = OLD.id;
      RETURN NULL;
    END $$""",
    """CREATE OR REPLACE FUNCTION fleet_status_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      NEW.revision := nextval('fleet_revision_seq');
      RETURN NEW;
    END $$""",
    """CREATE OR REPLACE FUNCTION fleet_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'integrity_constraint_violation';
    END $$""",
    f"""CREATE OR REPLACE FUNCTION fleet_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
      RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS a_tenants_revision_lock ON tenants",
    """CREATE TRIGGER a_tenants_revision_lock BEFORE INSERT OR UPDATE OR DELETE ON tenants
         FOR EACH STATEMENT EXECUTE FUNCTION fleet_revision_lock()""",
    "DROP TRIGGER IF EXISTS a_status_revision_lock ON tenant_status",
    """CREATE TRIGGER a_status_revision_lock BEFORE INSERT OR UPDATE OR DELETE ON tenant_status
         FOR EACH STATEMENT EXECUTE FUNCTION fleet_revision_lock()""",
    "DROP TRIGGER IF EXISTS tenants_before_write ON tenants",
    """CREATE TRIGGER tenants_before_write BEFORE INSERT OR UPDATE ON tenants
         FOR EACH ROW EXECUTE FUNCTION fleet_tenants_before_write()""",
    "DROP TRIGGER IF EXISTS tenants_soft_delete ON tenants",
    """CREATE TRIGGER tenants_soft_delete BEFORE DELETE ON tenants
         FOR EACH ROW EXECUTE FUNCTION fleet_tenants_soft_delete()""",
    "DROP TRIGGER IF EXISTS status_stamp ON tenant_status",
    """CREATE TRIGGER status_stamp BEFORE INSERT OR UPDATE ON tenant_status
         FOR EACH ROW EXECUTE FUNCTION fleet_status_stamp()""",
    "DROP TRIGGER IF EXISTS events_append_only ON events",
    """CREATE TRIGGER events_append_only BEFORE UPDATE ON events
         FOR EACH ROW EXECUTE FUNCTION fleet_events_append_only()""",
    "DROP TRIGGER IF EXISTS tenants_notify ON tenants",
    """CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
         FOR EACH STATEMENT EXECUTE FUNCTION fleet_notify()""",
]


# Migration 4: a tombstone takes the next revision under the revision lock, like tenants and statuses.
TOMBSTONE_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION fleet_tombstone_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      NEW.revision := nextval('fleet_revision_seq');
      RETURN NEW;
    END $$""",
    "DROP TRIGGER IF EXISTS a_tombstones_revision_lock ON tenant_tombstones",
    """CREATE TRIGGER a_tombstones_revision_lock BEFORE INSERT OR UPDATE ON tenant_tombstones
         FOR EACH STATEMENT EXECUTE FUNCTION fleet_revision_lock()""",
    "DROP TRIGGER IF EXISTS tombstones_stamp ON tenant_tombstones",
    """CREATE TRIGGER tombstones_stamp BEFORE INSERT OR UPDATE ON tenant_tombstones
         FOR EACH ROW EXECUTE FUNCTION fleet_tombstone_stamp()""",
]


def postgresql_checks() -> list[tuple[str, CheckConstraint]]:
    return [(table, CheckConstraint(sql, name=name).ddl_if(dialect="postgresql")) for table, name, sql in CHECKS]


def install_functions(metadata: MetaData) -> None:
    """Create the functions CHECKs call before any table of `metadata` is created on PostgreSQL."""
    event.listen(metadata, "before_create", DDL(FUNCTIONS).execute_if(dialect="postgresql"))  # type: ignore[no-untyped-call]


def libpq_url(url: str) -> str:
    """The URL libpq understands, from either spelling Fleet accepts."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class PostgreSQLDialect:
    name = "postgresql"

    def __init__(self, *, connect_retry_seconds: float = 5.0) -> None:
        self.connect_retry_seconds = connect_retry_seconds

    def create_engine(self, url: str) -> Engine:
        import psycopg
        from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

        conninfo = libpq_url(url)
        retry_seconds = self.connect_retry_seconds

        # A server restarting refuses connections for a moment: retry briefly, then let the caller's
        # own backoff (a TransientError) take over. Never fatal to an agent or the scheduler.
        @retry(
            retry=retry_if_exception_type(psycopg.OperationalError),
            stop=stop_after_delay(retry_seconds),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        def _connect() -> Any:
            return psycopg.connect(conninfo, connect_timeout=5, application_name="fleet")

        # pool_pre_ping finds connections a restart killed before they are used.
        return create_engine(
            "postgresql+psycopg://", creator=_connect, pool_size=8, max_overflow=8, pool_pre_ping=True,
            pool_recycle=1800,
        )

    def install_triggers(self, conn: Connection) -> None:
        conn.exec_driver_sql(FUNCTIONS)
        for statement in TRIGGERS:
            conn.exec_driver_sql(_with_present_columns(conn, statement))

    def install_tombstone_triggers(self, conn: Connection) -> None:
        for statement in TOMBSTONE_TRIGGERS:
            conn.exec_driver_sql(statement)

    def reinstall_triggers(self, conn: Connection) -> None:
        """Every function is CREATE OR REPLACE and every trigger dropped first: installing again replaces."""
        self.install_triggers(conn)

    def install_page_rules(self, conn: Connection) -> None:
        for table in ("tenants", "templates"):
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD CONSTRAINT memory_bytes_must_be_whole_4Ki_pages"
                f" CHECK (memory_bytes IS NULL OR mod(memory_bytes, {limits.MEMORY_PAGE}) = 0)"
            )

    def write_options(self) -> dict[str, object]:
        return {}

    def write_lock(self) -> AbstractContextManager[object]:
        """Nothing to hold: PostgreSQL writers wait on row locks, and the revision lock orders commits."""
        return contextlib.nullcontext()

    def lock_for_migration(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")

    def current_revision_sql(self) -> str:
        return "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM fleet_revision_seq"

    def epoch_now_sql(self) -> str:
        return "extract(epoch from clock_timestamp())::double precision"

    def insert(self, table: Table) -> Any:
        return postgresql_insert(table)

    def greatest(self, first: ColumnElement[Any], second: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.greatest(first, second)

    def change_listener(self, url: str) -> "ChangeListener":
        return ChangeListener(libpq_url(url))


class ChangeListener:
    """LISTEN on one dedicated connection; `wait` returns when a tenant was written or time ran out.

    Only a wake-up: the revision feed decides what changed, so a lost notification (a restart, a dropped
    connection) only delays work until the next poll."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> "psycopg.Connection[Any]":
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            self._conn.execute(f"LISTEN {CHANNEL}")
        return self._conn

    def wait(self, timeout: float) -> bool:
        import time

        import psycopg

        try:
            conn = self._connection()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as error:
            from loguru import logger  # here: a command that only opens the store never loads it

            logger.debug("Lost the LISTEN connection, will reconnect: {}", error)
            self.close()
            time.sleep(min(timeout, 0.5))
            return False

    def close(self) -> None:
        import psycopg

        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

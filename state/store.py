"""The store: the one object the rest of Fleet holds to reach desired state, status, templates and events.

A thin facade: each concept lives in its own module (`tenant_writes`, `tenant_reads`, `feed`, `status`,
`events`, `templates`) over one `Session`, the transaction seam every `state/` module shares. Reads of one
tenant and the writes of one reconcile are each one transaction. What it must never do: hold SQL of its
own beyond delegating, or touch a host.
"""

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection, Engine

from specs import Event, Observed, Template, Tenant, TenantStatus
from state.dialects import ChangeListener, Dialect, dialect_for
from state.events import append_events, read_events
from state.feed import RevisionFeed
from state.migrations import migrate
from state.records import ApplyOutcome, ApplyResult, Change, DesiredRecord, Precondition, TenantPage
from state.session import Session
from state.status import read_observed, status_parameters, write_statuses
from state.templates import get_template, list_templates, upsert_template
from state.tenant_reads import TenantReads
from state.tenant_writes import TenantWrites


class Store:
    """One store, one engine. Safe to share between threads (each call takes its own connection)."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.dialect: Dialect = dialect_for(url)
        self.engine: Engine = self.dialect.create_engine(url)
        if migrate_schema:
            migrate(self.engine, self.dialect)
        self.session = Session(self.engine, self.dialect)
        self._reads = TenantReads(self.session)
        self._writes = TenantWrites(self.session)
        self._feed = RevisionFeed(self.session, self.dialect)

    def close(self) -> None:
        self.engine.dispose()

    def listen(self) -> ChangeListener:
        """Something to wait on until tenants are written: LISTEN/NOTIFY on PostgreSQL, a sleep on SQLite.
        Only a wake-up; the revision feed says what changed."""
        return self.dialect.change_listener(self.url)

    # -- tenants: desired state --------------------------------------------------------------------
    def apply_tenants(self, tenants: Sequence[Tenant], *, dry_run: bool = False) -> list[ApplyResult]:
        """Create or update tenants' desired state, all or none. With dry_run: the same checks, no write.

        Each result carries the tenant as the reconciler will see it (defaults resolved) and as stored."""
        return self._writes.apply_tenants(tenants, dry_run=dry_run)

    def apply_tenant(
        self, tenant: Tenant, *, dry_run: bool = False, precondition: Precondition | None = None
    ) -> ApplyResult:
        """With a `precondition`, an update of an existing tenant only (a compare-and-set): `StaleWrite`
        when it was changed since it was read, `NotFound` when it is gone."""
        return self._writes.apply_tenant(tenant, dry_run=dry_run, precondition=precondition)

    def create_tenant(self, tenant: Tenant, *, dry_run: bool = False) -> ApplyResult:
        """Create one tenant, or raise `AlreadyExists` when the name is taken (even by a tenant being
        deleted). The check, the write and the read-back are one transaction, so two creates of one name
        never both succeed. (The API batches concurrent creates into one `create_tenants_each`.)"""
        return self._writes.create_tenant(tenant, dry_run=dry_run)

    def create_tenants_each(self, tenants: Sequence[Tenant]) -> list[ApplyResult | Exception]:
        """Create each tenant that can be, in one transaction; answer each with its result or its error."""
        return self._writes.create_tenants_each(tenants)

    def set_paused(self, name: str, paused: bool) -> int:
        return self._writes.set_paused(name, paused)

    def sleep_candidates(self) -> list[tuple[str, int]]:
        """(name, sleep.after in seconds) of each Running, awake tenant that has a sleep rule."""
        return self._reads.sleep_candidates()

    def set_asleep(self, name: str, asleep: bool, event: Event | None = None) -> bool:
        """Sleep (stop the container, keep all else) or wake a tenant; the reconciler does the rest. True when
        this call changed it (and `event` was recorded with it)."""
        return self._writes.set_asleep(name, asleep, event)

    def request_delete(self, name: str) -> bool:
        """Mark for deletion (the reconciler finishes it). False when there is no such tenant."""
        return self._writes.request_delete(name)

    # -- inside a write transaction another state/ module holds (its check and these writes commit as one)
    def apply_tenant_in(self, conn: Connection, tenant: Tenant) -> ApplyOutcome:
        """`apply_tenant` of one tenant on `conn`, in the caller's write transaction."""
        return self._writes.apply_tenant_in(conn, tenant)

    def request_delete_in(self, conn: Connection, name: str) -> bool:
        """`request_delete` on `conn`, in the caller's write transaction."""
        return self._writes.request_delete_in(conn, name)

    def append_events_in(self, conn: Connection, events: Sequence[Event]) -> None:
        """`append_events` on `conn`, in the caller's write transaction."""
        append_events(conn, events)

    def finalize_delete(self, name: str, events: Sequence[Event] = (), *, only_unbound: bool = False) -> bool:
        """Remove the row for good; only after the driver confirmed everything gone. With `only_unbound`,
        only while no node is bound (nothing was ever made on a host): a compare-and-set against a binding.
        True when the row went (with `only_unbound`, nothing is written unless it did)."""
        return self._writes.finalize_delete(name, events, only_unbound=only_unbound)

    def bind(self, name: str, node: str) -> bool:
        """Compare-and-set binding: only an unbound tenant is bound. True if this call bound it."""
        return self._writes.bind(name, node)

    # -- tenants: reading --------------------------------------------------------------------------
    def get_tenant(self, name: str) -> Tenant | None:
        return self._reads.get_tenant(name)

    def list_tenants(
        self, *, labels: dict[str, str] | None = None, phase: str | None = None, limit: int = 0, after: str = ""
    ) -> TenantPage:
        return self._reads.list_tenants(labels=labels, phase=phase, limit=limit, after=after)

    def desired(self, name: str) -> DesiredRecord | None:
        return self._reads.desired(name)

    def iter_desired(self, *, node: str | None = None, chunk: int = 1000) -> Iterator[DesiredRecord]:
        """Every tenant (bound to `node`, or unbound, when given), streamed: what a resync compares in one
        pass without holding them all. Statuses come without conditions (phase and observed generation)."""
        return self._reads.iter_desired(node=node, chunk=chunk)

    def counts_by_phase(self) -> dict[str, int]:
        return self._reads.counts_by_phase()

    # -- the change feed ---------------------------------------------------------------------------
    def changes_since(self, revision: int, *, limit: int = 10_000) -> list[Change]:
        """Tenants whose desired state was written after `revision`, oldest first: the change feed."""
        return self._feed.changes_since(revision, limit=limit)

    def deletions_since(self, revision: int, *, limit: int = 500) -> list[Change]:
        """Tenants finalized (gone for good) after `revision`, oldest first: the deletions of the feed."""
        return self._feed.deletions_since(revision, limit=limit)

    def current_revision(self) -> int:
        return self._feed.current_revision()

    # -- status and events -------------------------------------------------------------------------
    def record(
        self, name: str, status: TenantStatus | None, observed: Observed | None, events: Sequence[Event]
    ) -> None:
        """One reconcile's outcome in one transaction. `status` None leaves the status as it was."""
        with self.session.write() as conn:
            if status is not None:
                write_statuses(conn, [status_parameters(name, status, observed)])
            append_events(conn, events)

    def last_observed(self, name: str) -> Observed | None:
        with self.session.read() as conn:
            return read_observed(conn, name)

    def append_events(self, events: Sequence[Event]) -> None:
        with self.session.write() as conn:
            append_events(conn, events)

    def events(self, *, tenant: str | None = None, after_id: int = 0, limit: int = 100) -> list[Event]:
        """The newest `limit` events after `after_id`, oldest first."""
        return read_events(self.session, tenant=tenant, after_id=after_id, limit=limit)

    # -- templates ---------------------------------------------------------------------------------
    def upsert_template(self, template: Template) -> None:
        upsert_template(self.session, template)

    def get_template(self, name: str) -> Template | None:
        return get_template(self.session, name)

    def list_templates(self) -> list[Template]:
        return list_templates(self.session)

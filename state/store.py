"""The store: the only code that speaks SQL.

Desired state (tenants), what the reconciler reported (tenant_status), templates and the append-only
event log. Reads of one tenant and the writes of one reconcile are each one transaction. Triggers stamp
revision and generation, so the raw SQL of a billing system gets the same guarantees as this code.
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError

from specs import (
    Condition,
    Event,
    FleetError,
    Metadata,
    Network,
    NotFound,
    Observed,
    Phase,
    ResolvedSpec,
    Resources,
    Template,
    Tenant,
    TenantSpec,
    TenantStatus,
)
from state.dialects import ChangeListener, Dialect, dialect_for
from state.errors import AlreadyExists, Conflict, InvalidRecord, StaleWrite, UnknownReference, translate
from state.group_commit import GroupCommit
from state.migrations import migrate
from state.records import ApplyOutcome, ApplyResult, Change, DesiredRecord, Precondition, TenantPage
from state.schema import EVENTS, STATUS, TEMPLATES, TENANTS, TOMBSTONES

# Portable upsert (SQLite >= 3.24 and PostgreSQL): a status only for a tenant that still exists, so a
# status never outlives its row.
_UPSERT_STATUS = text(
    """
    INSERT INTO tenant_status (name, phase, observed_generation, node, url, address, template, conditions,
                               last_error, observed, updated_at)
    SELECT :name, :phase, :observed_generation, :node, :url, :address, :template, :conditions,
           :last_error, :observed, CURRENT_TIMESTAMP
     WHERE EXISTS (SELECT 1 FROM tenants WHERE name = :name)
    ON CONFLICT (name) DO UPDATE SET
        phase = excluded.phase, observed_generation = excluded.observed_generation, node = excluded.node,
        url = excluded.url, address = excluded.address, template = excluded.template,
        conditions = excluded.conditions, last_error = excluded.last_error, observed = excluded.observed,
        updated_at = excluded.updated_at
    """
)

# A status as `_status_from_row` reads it, joined to any tenant query.
STATUS_COLUMNS = (
    STATUS.c.phase.label("s_phase"),
    STATUS.c.observed_generation.label("s_observed_generation"),
    STATUS.c.node.label("s_node"),
    STATUS.c.url.label("s_url"),
    STATUS.c.address.label("s_address"),
    STATUS.c.template.label("s_template"),
    STATUS.c.conditions.label("s_conditions"),
    STATUS.c.last_error.label("s_last_error"),
    STATUS.c.updated_at.label("s_updated_at"),
)


def status_parameters(name: str, status: TenantStatus, observed: Observed | None) -> dict[str, Any]:
    """The bound values of `_UPSERT_STATUS` for one tenant."""
    return {
        "name": name,
        "phase": status.phase.value,
        "observed_generation": status.observed_generation,
        "node": status.node,
        "url": status.url,
        "address": status.address,
        "template": status.template,
        "conditions": json.dumps([c.model_dump(mode="json") for c in status.conditions]),
        "last_error": status.last_error,
        "observed": None if observed is None else observed.model_dump_json(),
    }


_SPEC_COLUMNS = (
    "template", "cpu_millicores", "memory_bytes", "disk_bytes", "pids", "io_bytes_per_second", "ingress_ports", "paused"
)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _ports(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(sorted(set(json.loads(text))))


def _spec_values(tenant: Tenant) -> dict[str, Any]:
    spec = tenant.spec
    return {
        "template": spec.template,
        "cpu_millicores": spec.resources.cpu,
        "memory_bytes": spec.resources.memory,
        "disk_bytes": spec.resources.disk,
        "pids": spec.resources.pids,
        "io_bytes_per_second": spec.resources.io,
        "ingress_ports": None if spec.network.ingress is None else json.dumps(list(spec.network.ingress)),
        "paused": spec.paused,
    }


def _template_from_row(row: Any) -> Template:
    return Template.model_construct(
        name=row.name,
        version=row.version,
        resources=Resources.model_construct(
            cpu=row.cpu_millicores, memory=row.memory_bytes, disk=row.disk_bytes, pids=row.pids,
            io=row.io_bytes_per_second,
        ),
        network=Network.model_construct(ingress=_ports(row.ingress_ports)),
        description=row.description,
    )


def _status_from_row(row: Any, *, conditions: bool = True) -> TenantStatus | None:
    """A status from a joined row. Without `conditions` it skips parsing them: a resync over thousands of
    tenants needs only phase and observed generation."""
    if row.s_phase is None:
        return None
    if not conditions:
        return TenantStatus.model_construct(
            phase=Phase(row.s_phase), observed_generation=row.s_observed_generation, node=row.s_node,
            conditions=(), last_error=row.s_last_error,
        )
    return TenantStatus(
        phase=Phase(row.s_phase),
        observed_generation=row.s_observed_generation,
        node=row.s_node,
        url=row.s_url,
        address=row.s_address,
        template=row.s_template,
        conditions=tuple(Condition.model_validate(c) for c in json.loads(row.s_conditions)),
        last_error=row.s_last_error,
        updated_at=_utc(row.s_updated_at),
    )


class Store:
    """One store, one engine. Safe to share between threads (each call takes its own connection)."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.dialect: Dialect = dialect_for(url)
        self.engine: Engine = self.dialect.create_engine(url)
        if migrate_schema:
            migrate(self.engine, self.dialect)
        # Built once: a reconcile runs these thousands of times a second, and building a statement
        # costs more than running it.
        self._by_name = self._joined().where(TENANTS.c.name == bindparam("name"))
        self._bind = (
            TENANTS.update()
            .where(and_(TENANTS.c.name == bindparam("b_name"), TENANTS.c.node.is_(None)))
            .values(node=bindparam("b_node"))
        )
        self._changes = (
            select(TENANTS.c.name, TENANTS.c.revision)
            .where(TENANTS.c.revision > bindparam("revision"))
            .order_by(TENANTS.c.revision)
            .limit(bindparam("limit"))
        )
        self._insert_events = EVENTS.insert()
        self._template_exists = select(TEMPLATES.c.name).where(TEMPLATES.c.name == bindparam("template"))
        # A create's two checks in one statement: is the template known, is the name taken.
        self._create_checks = select(
            self._template_exists.scalar_subquery().label("template"),
            select(TENANTS.c.id).where(TENANTS.c.name == bindparam("name")).scalar_subquery().label("existing"),
        )
        self._current = select(TENANTS).where(TENANTS.c.name == bindparam("name"))
        self._insert_tenant = TENANTS.insert()
        self._observed = select(STATUS.c.observed).where(STATUS.c.name == bindparam("name"))
        self._templates_in = select(TEMPLATES.c.name).where(TEMPLATES.c.name.in_(bindparam("names", expanding=True)))
        self._tenants_in = select(TENANTS.c.name).where(TENANTS.c.name.in_(bindparam("names", expanding=True)))
        self._by_names = self._joined().where(TENANTS.c.name.in_(bindparam("names", expanding=True)))
        self._creates: GroupCommit[Tenant, ApplyResult] = GroupCommit(self.create_tenants_each)

    def close(self) -> None:
        self.engine.dispose()

    def listen(self) -> ChangeListener:
        """Something to wait on until tenants are written: LISTEN/NOTIFY on PostgreSQL, a sleep on SQLite.
        Only a wake-up; the revision feed says what changed."""
        return self.dialect.change_listener(self.url)

    # -- transactions ------------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as error:
            raise translate(error) from error

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with (
                self.dialect.write_lock(),
                self.engine.connect().execution_options(**self.dialect.write_options()) as conn,
                conn.begin(),
            ):
                yield conn
        except DBAPIError as error:
            raise translate(error) from error

    # -- tenants: desired state --------------------------------------------------------------------
    def apply_tenants(self, tenants: Sequence[Tenant], *, dry_run: bool = False) -> list[ApplyResult]:
        """Create or update tenants' desired state, all or none. With dry_run: the same checks, no write.

        Each result carries the tenant as the reconciler will see it (defaults resolved) and as stored."""
        return self._apply_all(tenants, dry_run=dry_run, create_only=False)

    def apply_tenant(
        self, tenant: Tenant, *, dry_run: bool = False, precondition: Precondition | None = None
    ) -> ApplyResult:
        """With a `precondition`, an update of an existing tenant only (a compare-and-set): `StaleWrite`
        when it was changed since it was read, `NotFound` when it is gone."""
        if precondition is None:
            return self.apply_tenants([tenant], dry_run=dry_run)[0]
        return self._apply_all([tenant], dry_run=dry_run, create_only=False, precondition=precondition)[0]

    def create_tenant(self, tenant: Tenant, *, dry_run: bool = False) -> ApplyResult:
        """Create one tenant, or raise `AlreadyExists` when the name is taken (even by a tenant being
        deleted). The check, the write and the read-back are one transaction, so two creates of one name
        never both succeed. Creates from concurrent threads share that transaction (group commit)."""
        if dry_run:
            return self._apply_all([tenant], dry_run=True, create_only=True)[0]
        return self._creates.submit(tenant)

    def create_tenants_each(self, tenants: Sequence[Tenant]) -> list[ApplyResult | Exception]:
        """Create each tenant that can be, in one transaction; answer each with its result or its error.
        Checks are one query for the batch, inserts one statement, the read-back one query. Should the
        database still refuse an insert, each tenant is retried alone so only the bad one fails."""
        answers: list[ApplyResult | Exception | None] = [None] * len(tenants)
        names = [t.metadata.name for t in tenants]
        created: dict[str, Any] = {}
        try:
            with (
                self.dialect.write_lock(),
                self.engine.connect().execution_options(**self.dialect.write_options()) as conn,
                conn.begin(),
            ):
                known = set(conn.execute(self._templates_in, {"names": sorted({t.spec.template for t in tenants})})
                            .scalars())
                taken = set(conn.execute(self._tenants_in, {"names": names}).scalars())
                rows: list[dict[str, Any]] = []
                for index, tenant in enumerate(tenants):
                    name = tenant.metadata.name
                    if tenant.spec.template not in known:
                        answers[index] = UnknownReference(
                            "spec.template", f"unknown template {tenant.spec.template!r}; see fleet template list")
                    elif name in taken:
                        answers[index] = AlreadyExists(f"metadata.name: tenant {name} already exists")
                    else:
                        taken.add(name)
                        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
                        rows.append({"name": name, "labels": labels, **_spec_values(tenant)})
                if rows:
                    conn.execute(self._insert_tenant, rows)
                    inserted = {"names": [row["name"] for row in rows]}
                    created = {row.name: row for row in conn.execute(self._by_names, inserted)}
        except DBAPIError:
            return [self._create_alone(tenant) for tenant in tenants]
        for index, name in enumerate(names):
            if answers[index] is None:
                row = created[name]
                answers[index] = ApplyResult(
                    name, ApplyOutcome.CREATED, row.generation, self._desired_from_row(row), self._tenant_from_row(row)
                )
        return [answer for answer in answers if answer is not None]

    def _create_alone(self, tenant: Tenant) -> ApplyResult | Exception:
        try:
            return self._apply_all([tenant], dry_run=False, create_only=True)[0]
        except FleetError as error:
            return error

    def _apply_all(
        self, tenants: Sequence[Tenant], *, dry_run: bool, create_only: bool, precondition: Precondition | None = None
    ) -> list[ApplyResult]:
        # Rows are read inside the transaction and turned into models after it: the write lock is held for
        # the SQL only.
        written: list[tuple[ApplyOutcome, Any, str | None]] = []
        try:
            with (
                self.dialect.write_lock(),
                self.engine.connect().execution_options(**self.dialect.write_options()) as conn,
            ):
                transaction = conn.begin()
                try:
                    for tenant in tenants:
                        values = _spec_values(tenant)
                        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
                        key = {"name": tenant.metadata.name}
                        if create_only:
                            outcome = self._create_in(conn, tenant.metadata.name, labels, values)
                        else:
                            outcome = self._apply_in(conn, tenant.metadata.name, labels, values, precondition)
                        row = conn.execute(self._by_name, key).one()
                        # A new row has no status yet (a status is only written for an existing tenant,
                        # and a finalized one's is deleted with it).
                        observed = None if outcome == ApplyOutcome.CREATED else conn.execute(
                            self._observed, key).scalar_one_or_none()
                        written.append((outcome, row, observed))
                except BaseException:
                    transaction.rollback()
                    raise
                if dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()
        except DBAPIError as error:
            raise translate(error) from error
        return [
            ApplyResult(
                row.name, outcome, row.generation, self._desired_from_row(row), self._tenant_from_row(row),
                None if observed is None else Observed.model_validate_json(observed),
            )
            for outcome, row, observed in written
        ]

    def _create_in(self, conn: Connection, name: str, labels: str, values: dict[str, Any]) -> ApplyOutcome:
        checks = conn.execute(self._create_checks, {"template": values["template"], "name": name}).one()
        if checks.template is None:
            raise UnknownReference("spec.template",
                                   f"unknown template {values['template']!r}; see fleet template list")
        if checks.existing is not None:
            raise AlreadyExists(f"metadata.name: tenant {name} already exists")
        conn.execute(self._insert_tenant, {"name": name, "labels": labels, **values})
        return ApplyOutcome.CREATED

    def _apply_in(
        self, conn: Connection, name: str, labels: str, values: dict[str, Any], precondition: Precondition | None = None
    ) -> ApplyOutcome:
        if conn.execute(self._template_exists, {"template": values["template"]}).first() is None:
            raise UnknownReference("spec.template",
                                   f"unknown template {values['template']!r}; see fleet template list")
        current = conn.execute(self._current, {"name": name}).first()
        if current is None and precondition is not None:
            raise NotFound(f"metadata.name: tenant {name} not found")
        if current is None:
            conn.execute(self._insert_tenant, {"name": name, "labels": labels, **values})
            return ApplyOutcome.CREATED
        if current.deletion_requested_at is not None:
            raise Conflict(f"metadata.name: tenant {name} is being deleted; wait for it to go, then create it again")
        if precondition is not None:
            _check(precondition, name, current)
        unchanged = current.labels == labels and all(getattr(current, c) == v for c, v in values.items())
        if unchanged:
            return ApplyOutcome.UNCHANGED
        update = TENANTS.update().where(TENANTS.c.name == name)
        if precondition is not None:
            # PostgreSQL: another writer may have changed the row since it was read above; the revision
            # moves on every write, so the update is a compare-and-set against that read.
            update = update.where(TENANTS.c.revision == current.revision)
        if conn.execute(update.values(labels=labels, **values)).rowcount == 0:
            raise StaleWrite(f"metadata.generation: tenant {name} was changed meanwhile; read it again and reapply "
                             "the change", current_generation=current.generation)
        return ApplyOutcome.CONFIGURED

    def set_paused(self, name: str, paused: bool) -> int:
        with self._write() as conn:
            result = conn.execute(TENANTS.update().where(TENANTS.c.name == name).values(paused=paused))
            if result.rowcount == 0:
                raise NotFound(f"tenant {name} not found")
            return int(conn.execute(select(TENANTS.c.generation).where(TENANTS.c.name == name)).scalar_one())

    def request_delete(self, name: str) -> bool:
        """Mark for deletion (the reconciler finishes it). False when there is no such tenant."""
        with self._write() as conn:
            return self.request_delete_in(conn, name)

    # -- inside a write transaction another state/ module holds (its check and these writes commit as one)
    def apply_tenant_in(self, conn: Connection, tenant: Tenant) -> ApplyOutcome:
        """`apply_tenant` of one tenant on `conn`, in the caller's write transaction."""
        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
        return self._apply_in(conn, tenant.metadata.name, labels, _spec_values(tenant))

    def request_delete_in(self, conn: Connection, name: str) -> bool:
        """`request_delete` on `conn`, in the caller's write transaction."""
        result = conn.execute(
            TENANTS.update()
            .where(and_(TENANTS.c.name == name, TENANTS.c.deletion_requested_at.is_(None)))
            .values(deletion_requested_at=func.current_timestamp())
        )
        if result.rowcount:
            return True
        return conn.execute(select(TENANTS.c.id).where(TENANTS.c.name == name)).first() is not None

    def append_events_in(self, conn: Connection, events: Sequence[Event]) -> None:
        """`append_events` on `conn`, in the caller's write transaction."""
        self._append_events(conn, events)

    def finalize_delete(self, name: str, events: Sequence[Event] = (), *, only_unbound: bool = False) -> bool:
        """Remove the row for good; only after the driver confirmed everything gone. With `only_unbound`,
        only while no node is bound (nothing was ever made on a host): a compare-and-set against a binding.
        True when the row went (with `only_unbound`, nothing is written unless it did)."""
        finalizing = and_(TENANTS.c.name == name, TENANTS.c.deletion_requested_at.is_not(None))
        if only_unbound:
            finalizing = and_(finalizing, TENANTS.c.node.is_(None))
        with self._write() as conn:
            conn.execute(TENANTS.update().where(finalizing).values(finalized=True))
            gone = conn.execute(
                TENANTS.delete().where(and_(TENANTS.c.name == name, TENANTS.c.finalized.is_(True)))
            ).rowcount
            if only_unbound and not gone:
                return False  # bound meanwhile (or not being deleted): its node's agent finishes it
            conn.execute(STATUS.delete().where(STATUS.c.name == name))
            if gone:
                # One tombstone per name (the last deletion), stamped with a revision by a trigger.
                conn.execute(TOMBSTONES.delete().where(TOMBSTONES.c.name == name))
                conn.execute(TOMBSTONES.insert().values(name=name))
            self._append_events(conn, events)
        return bool(gone)

    def bind(self, name: str, node: str) -> bool:
        """Compare-and-set binding: only an unbound tenant is bound. True if this call bound it."""
        with self._write() as conn:
            return bool(conn.execute(self._bind, {"b_name": name, "b_node": node}).rowcount)

    # -- tenants: reading --------------------------------------------------------------------------
    def _joined(self) -> Any:
        return (
            select(
                TENANTS,
                TEMPLATES.c.version.label("tpl_version"),
                TEMPLATES.c.cpu_millicores.label("tpl_cpu"),
                TEMPLATES.c.memory_bytes.label("tpl_memory"),
                TEMPLATES.c.disk_bytes.label("tpl_disk"),
                TEMPLATES.c.pids.label("tpl_pids"),
                TEMPLATES.c.io_bytes_per_second.label("tpl_io"),
                TEMPLATES.c.ingress_ports.label("tpl_ports"),
                TEMPLATES.c.description.label("tpl_description"),
                *STATUS_COLUMNS,
                STATUS.c.revision.label("s_revision"),
            )
            .select_from(TENANTS)
            .outerjoin(TEMPLATES, TEMPLATES.c.name == TENANTS.c.template)
            .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
        )

    @staticmethod
    def _tenant_from_row(row: Any) -> Tenant:
        spec = TenantSpec.model_construct(
            template=row.template,
            resources=Resources.model_construct(
                cpu=row.cpu_millicores, memory=row.memory_bytes, disk=row.disk_bytes, pids=row.pids,
                io=row.io_bytes_per_second,
            ),
            network=Network.model_construct(ingress=_ports(row.ingress_ports)),
            paused=bool(row.paused),
        )
        metadata = Metadata.model_construct(
            name=row.name,
            labels=json.loads(row.labels),
            generation=row.generation,
            revision=max(row.revision, row.s_revision or 0),
            created_at=_utc(row.created_at),
            deletion_requested_at=_utc(row.deletion_requested_at),
        )
        return Tenant.model_construct(
            api_version="fleet/v1", kind="Tenant", metadata=metadata, spec=spec, status=_status_from_row(row)
        )

    @staticmethod
    def _desired_from_row(
        row: Any, *, conditions: bool = True, templates: dict[tuple[str, str], Template] | None = None
    ) -> DesiredRecord:
        """`templates` shares one Template (and its default Resources and Network) between the rows of one
        pass: ten thousand tenants of one template then cost one template object, not ten thousand."""
        status = _status_from_row(row, conditions=conditions)
        if row.tpl_version is None:
            return DesiredRecord(row.name, row.revision, row.node, None, None, status, row.template,
                                 created_revision=row.created_revision)
        key = (row.template, row.tpl_version)
        template = templates.get(key) if templates is not None else None
        if template is None:
            template = Template.model_construct(
                name=row.template,
                version=row.tpl_version,
                resources=Resources.model_construct(
                    cpu=row.tpl_cpu, memory=row.tpl_memory, disk=row.tpl_disk, pids=row.tpl_pids, io=row.tpl_io
                ),
                network=Network.model_construct(ingress=_ports(row.tpl_ports)),
                description=row.tpl_description,
            )
            if templates is not None:
                templates[key] = template
        own = (row.cpu_millicores, row.memory_bytes, row.disk_bytes, row.pids, row.io_bytes_per_second)
        resources = template.resources
        if any(value is not None for value in own):
            resources = Resources.model_construct(
                cpu=row.cpu_millicores if row.cpu_millicores is not None else row.tpl_cpu,
                memory=row.memory_bytes if row.memory_bytes is not None else row.tpl_memory,
                disk=row.disk_bytes if row.disk_bytes is not None else row.tpl_disk,
                pids=row.pids if row.pids is not None else row.tpl_pids,
                io=row.io_bytes_per_second if row.io_bytes_per_second is not None else row.tpl_io,
            )
        network = template.network
        if row.ingress_ports is not None:
            network = Network.model_construct(ingress=_ports(row.ingress_ports))
        spec = ResolvedSpec.model_construct(
            name=row.name,
            generation=row.generation,
            template=row.template,
            template_version=row.tpl_version,
            resources=resources,
            network=network,
            paused=bool(row.paused),
            deleting=row.deletion_requested_at is not None,
        )
        return DesiredRecord(row.name, row.revision, row.node, spec, template, status,
                             created_revision=row.created_revision)

    def get_tenant(self, name: str) -> Tenant | None:
        with self._read() as conn:
            row = conn.execute(self._by_name, {"name": name}).first()
        return None if row is None else self._tenant_from_row(row)

    def list_tenants(
        self, *, labels: dict[str, str] | None = None, phase: str | None = None, limit: int = 0, after: str = ""
    ) -> TenantPage:
        query = self._joined().where(TENANTS.c.name > after).order_by(TENANTS.c.name)
        if phase:
            query = (
                query.where(STATUS.c.phase == phase)
                if phase != "Pending"
                else query.where((STATUS.c.phase == phase) | STATUS.c.phase.is_(None))
            )
        with self._read() as conn:
            rows = conn.execute(query).all()
        items = [self._tenant_from_row(row) for row in rows]
        if labels:
            items = [t for t in items if all(t.metadata.labels.get(k) == v for k, v in labels.items())]
        if limit and len(items) > limit:
            return TenantPage(items[:limit], items[limit - 1].metadata.name)
        return TenantPage(items, None)

    def desired(self, name: str) -> DesiredRecord | None:
        with self._read() as conn:
            row = conn.execute(self._by_name, {"name": name}).first()
        return None if row is None else self._desired_from_row(row)

    def iter_desired(self, *, node: str | None = None, chunk: int = 1000) -> Iterator[DesiredRecord]:
        """Every tenant (bound to `node`, or unbound, when given), streamed: what a resync compares in one
        pass without holding them all. Statuses come without conditions (phase and observed generation)."""
        query = self._joined()
        if node is not None:
            query = query.where((TENANTS.c.node == node) | TENANTS.c.node.is_(None))
        templates: dict[tuple[str, str], Template] = {}
        with self._read() as conn:
            for row in conn.execution_options(yield_per=chunk).execute(query):
                yield self._desired_from_row(row, conditions=False, templates=templates)

    def changes_since(self, revision: int, *, limit: int = 10_000) -> list[Change]:
        """Tenants whose desired state was written after `revision`, oldest first: the change feed."""
        with self._read() as conn:
            rows = conn.execute(self._changes, {"revision": revision, "limit": limit}).all()
        return [Change(row.name, row.revision) for row in rows]

    def deletions_since(self, revision: int, *, limit: int = 500) -> list[Change]:
        """Tenants finalized (gone for good) after `revision`, oldest first: the deletions of the feed."""
        with self._read() as conn:
            rows = conn.execute(
                select(TOMBSTONES.c.name, TOMBSTONES.c.revision)
                .where(TOMBSTONES.c.revision > revision)
                .order_by(TOMBSTONES.c.revision)
                .limit(limit)
            ).all()
        return [Change(row.name, row.revision) for row in rows]

    def current_revision(self) -> int:
        with self._read() as conn:
            return int(conn.exec_driver_sql(self.dialect.current_revision_sql()).scalar_one())

    # -- status and events -------------------------------------------------------------------------
    def record(
        self, name: str, status: TenantStatus | None, observed: Observed | None, events: Sequence[Event]
    ) -> None:
        """One reconcile's outcome in one transaction. `status` None leaves the status as it was."""
        with self._write() as conn:
            if status is not None:
                conn.execute(_UPSERT_STATUS, status_parameters(name, status, observed))
            self._append_events(conn, events)

    def last_observed(self, name: str) -> Observed | None:
        with self._read() as conn:
            text = conn.execute(select(STATUS.c.observed).where(STATUS.c.name == name)).scalar_one_or_none()
        return None if text is None else Observed.model_validate_json(text)

    def _append_events(self, conn: Connection, events: Sequence[Event]) -> None:
        if not events:
            return
        conn.execute(
            self._insert_events,
            [
                {
                    "tenant": e.tenant,
                    "node": e.node,
                    "type": e.type,
                    "reason": e.reason,
                    "action": e.action,
                    "message": e.message,
                    "duration_ms": e.duration_ms,
                    "generation": e.generation,
                    "details": json.dumps(e.details),
                }
                for e in events
            ],
        )

    def append_events(self, events: Sequence[Event]) -> None:
        with self._write() as conn:
            self._append_events(conn, events)

    def events(self, *, tenant: str | None = None, after_id: int = 0, limit: int = 100) -> list[Event]:
        """The newest `limit` events after `after_id`, oldest first."""
        query = select(EVENTS).where(EVENTS.c.id > after_id).order_by(EVENTS.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(EVENTS.c.tenant == tenant)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                id=row.id,
                tenant=row.tenant,
                node=row.node,
                type=row.type,
                reason=row.reason,
                action=row.action,
                message=row.message,
                duration_ms=row.duration_ms,
                generation=row.generation,
                created_at=_utc(row.created_at),
                details=json.loads(row.details),
            )
            for row in reversed(rows)
        ]

    # -- templates ---------------------------------------------------------------------------------
    def upsert_template(self, template: Template) -> None:
        values = {
            "version": template.version,
            "cpu_millicores": template.resources.cpu,
            "memory_bytes": template.resources.memory,
            "disk_bytes": template.resources.disk,
            "pids": template.resources.pids,
            "io_bytes_per_second": template.resources.io,  # None: no bandwidth limit
            "ingress_ports": json.dumps(list(template.network.ingress or ())),
            "description": template.description,
        }
        # io is optional: a template without it leaves its tenants' bandwidth unlimited.
        missing = [k for k in ("cpu", "memory", "disk", "pids") if getattr(template.resources, k) is None]
        if missing:
            raise InvalidRecord(f"resources.{missing[0]}", "a template must set every resource default")
        with self._write() as conn:
            updated = conn.execute(TEMPLATES.update().where(TEMPLATES.c.name == template.name).values(**values))
            if updated.rowcount == 0:
                conn.execute(TEMPLATES.insert().values(name=template.name, **values))

    def get_template(self, name: str) -> Template | None:
        with self._read() as conn:
            row = conn.execute(select(TEMPLATES).where(TEMPLATES.c.name == name)).first()
        return None if row is None else _template_from_row(row)

    def list_templates(self) -> list[Template]:
        with self._read() as conn:
            rows = conn.execute(select(TEMPLATES).order_by(TEMPLATES.c.name)).all()
        return [_template_from_row(row) for row in rows]

    def counts_by_phase(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(
                select(func.coalesce(STATUS.c.phase, "Pending"), func.count())
                .select_from(TENANTS)
                .outerjoin(STATUS, STATUS.c.name == TENANTS.c.name)
                .group_by(func.coalesce(STATUS.c.phase, "Pending"))
            ).all()
        return {phase: count for phase, count in rows}


def _check(precondition: Precondition, name: str, current: Any) -> None:
    """The stored row is still what the caller read: the same generation (and labels, when given)."""
    labels_changed = precondition.labels is not None and json.loads(current.labels) != precondition.labels
    if current.generation != precondition.generation or labels_changed:
        changed = f"generation {current.generation}, not {precondition.generation}" if (
            current.generation != precondition.generation) else "new labels"
        raise StaleWrite(f"metadata.generation: tenant {name} was changed meanwhile ({changed}); read it again "
                         "and reapply the change", current_generation=current.generation)


def utcnow() -> datetime:
    return datetime.now(UTC)

"""Writing tenants' desired state: apply, create (one or a batch), pause, delete, finalize, bind.

Each call is one write transaction: checks, writes and the read-back commit together, so two creates of
one name never both succeed and a compare-and-set (a precondition, a binding) cannot be interleaved.
Triggers stamp revision and generation, so raw SQL gets the same guarantees as this code. The `*_in`
methods run inside a write transaction another `state/` module holds.
"""

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from specs import Event, FleetError, NotFound, Observed, Tenant
from state.columns import egress_value, ports_value, resource_values, sleep_value
from state.errors import AlreadyExists, Conflict, StaleWrite, UnknownReference, translate
from state.events import append_events
from state.records import ApplyOutcome, ApplyResult, Precondition
from state.schema import STATUS, TEMPLATES, TENANTS, TOMBSTONES
from state.session import Session
from state.tenant_reads import BY_NAME, BY_NAMES, desired_from_row, tenant_from_row

_BIND = (
    TENANTS.update()
    .where(and_(TENANTS.c.name == bindparam("b_name"), TENANTS.c.node.is_(None)))
    .values(node=bindparam("b_node"))
)
_TEMPLATE_EXISTS = select(TEMPLATES.c.name).where(TEMPLATES.c.name == bindparam("template"))
# A create's two checks in one statement: is the template known, is the name taken.
_CREATE_CHECKS = select(
    _TEMPLATE_EXISTS.scalar_subquery().label("template"),
    select(TENANTS.c.id).where(TENANTS.c.name == bindparam("name")).scalar_subquery().label("existing"),
)
_CURRENT = select(TENANTS).where(TENANTS.c.name == bindparam("name"))
_INSERT_TENANT = TENANTS.insert()
_OBSERVED = select(STATUS.c.observed).where(STATUS.c.name == bindparam("name"))
_TEMPLATES_IN = select(TEMPLATES.c.name).where(TEMPLATES.c.name.in_(bindparam("names", expanding=True)))
_TENANTS_IN = select(TENANTS.c.name).where(TENANTS.c.name.in_(bindparam("names", expanding=True)))


def spec_values(tenant: Tenant) -> dict[str, Any]:
    """The spec columns of a tenant's row (None: the template's default applies)."""
    spec = tenant.spec
    return {
        "template": spec.template,
        **resource_values(spec.resources),
        "ingress_ports": ports_value(spec.network),
        "egress": egress_value(spec.network),
        "paused": spec.paused,
        "sleep_after_seconds": sleep_value(spec.sleep),
    }


def _unknown_template(template: str) -> UnknownReference:
    return UnknownReference("spec.template", f"unknown template {template!r}; see fleet template list")


class TenantWrites:
    """Writes of tenants over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def apply_tenants(self, tenants: Sequence[Tenant], *, dry_run: bool = False) -> list[ApplyResult]:
        return self._apply_all(tenants, dry_run=dry_run, create_only=False)

    def apply_tenant(
        self, tenant: Tenant, *, dry_run: bool = False, precondition: Precondition | None = None
    ) -> ApplyResult:
        return self._apply_all([tenant], dry_run=dry_run, create_only=False, precondition=precondition)[0]

    def create_tenant(self, tenant: Tenant, *, dry_run: bool = False) -> ApplyResult:
        if dry_run:
            return self._apply_all([tenant], dry_run=True, create_only=True)[0]
        answer = self.create_tenants_each([tenant])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def create_tenants_each(self, tenants: Sequence[Tenant]) -> list[ApplyResult | Exception]:
        """Create each tenant that can be, in one transaction; answer each with its result or its error.
        Checks are one query for the batch, inserts one statement, the read-back one query. Should the
        database still refuse an insert, each tenant is retried alone so only the bad one fails."""
        answers: list[ApplyResult | Exception | None] = [None] * len(tenants)
        names = [t.metadata.name for t in tenants]
        created: dict[str, Any] = {}
        try:
            with self.session.writing() as conn, conn.begin():
                known = set(conn.execute(_TEMPLATES_IN, {"names": sorted({t.spec.template for t in tenants})})
                            .scalars())
                taken = set(conn.execute(_TENANTS_IN, {"names": names}).scalars())
                rows: list[dict[str, Any]] = []
                for index, tenant in enumerate(tenants):
                    name = tenant.metadata.name
                    if tenant.spec.template not in known:
                        answers[index] = _unknown_template(tenant.spec.template)
                    elif name in taken:
                        answers[index] = AlreadyExists(f"metadata.name: tenant {name} already exists")
                    else:
                        taken.add(name)
                        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
                        rows.append({"name": name, "labels": labels, **spec_values(tenant)})
                if rows:
                    conn.execute(_INSERT_TENANT, rows)
                    inserted = {"names": [row["name"] for row in rows]}
                    created = {row.name: row for row in conn.execute(BY_NAMES, inserted)}
        except DBAPIError:
            return [self._create_alone(tenant) for tenant in tenants]
        for index, name in enumerate(names):
            if answers[index] is None:
                row = created[name]
                answers[index] = ApplyResult(
                    name, ApplyOutcome.CREATED, row.generation, desired_from_row(row), tenant_from_row(row)
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
            with self.session.writing() as conn:
                transaction = conn.begin()
                try:
                    for tenant in tenants:
                        values = spec_values(tenant)
                        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
                        key = {"name": tenant.metadata.name}
                        if create_only:
                            outcome = self._create_in(conn, tenant.metadata.name, labels, values)
                        else:
                            outcome = self._apply_in(conn, tenant.metadata.name, labels, values, precondition)
                        row = conn.execute(BY_NAME, key).one()
                        # A new row has no status yet (a status is only written for an existing tenant,
                        # and a finalized one's is deleted with it).
                        observed = None if outcome == ApplyOutcome.CREATED else conn.execute(
                            _OBSERVED, key).scalar_one_or_none()
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
                row.name, outcome, row.generation, desired_from_row(row), tenant_from_row(row),
                None if observed is None else Observed.model_validate_json(observed),
            )
            for outcome, row, observed in written
        ]

    @staticmethod
    def _create_in(conn: Connection, name: str, labels: str, values: dict[str, Any]) -> ApplyOutcome:
        checks = conn.execute(_CREATE_CHECKS, {"template": values["template"], "name": name}).one()
        if checks.template is None:
            raise _unknown_template(values["template"])
        if checks.existing is not None:
            raise AlreadyExists(f"metadata.name: tenant {name} already exists")
        conn.execute(_INSERT_TENANT, {"name": name, "labels": labels, **values})
        return ApplyOutcome.CREATED

    @staticmethod
    def _apply_in(
        conn: Connection, name: str, labels: str, values: dict[str, Any], precondition: Precondition | None = None
    ) -> ApplyOutcome:
        if conn.execute(_TEMPLATE_EXISTS, {"template": values["template"]}).first() is None:
            raise _unknown_template(values["template"])
        current = conn.execute(_CURRENT, {"name": name}).first()
        if current is None and precondition is not None:
            raise NotFound(f"metadata.name: tenant {name} not found")
        if current is None:
            conn.execute(_INSERT_TENANT, {"name": name, "labels": labels, **values})
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
        with self.session.write() as conn:
            result = conn.execute(TENANTS.update().where(TENANTS.c.name == name).values(paused=paused))
            if result.rowcount == 0:
                raise NotFound(f"tenant {name} not found")
            return int(conn.execute(select(TENANTS.c.generation).where(TENANTS.c.name == name)).scalar_one())

    def set_asleep(self, name: str, asleep: bool, event: Event | None = None) -> bool:
        """Put a tenant to sleep (stamp `asleep_since`) or wake it (clear it), with `event`. True when this
        call changed it; False when it already was so, or is being deleted (a sleep); NotFound when absent.
        A compare-and-set: of two gateways waking one tenant, one writes and the other finds it awake."""
        condition = and_(TENANTS.c.name == name, TENANTS.c.asleep_since.is_(None) if asleep
                         else TENANTS.c.asleep_since.is_not(None))
        if asleep:
            condition = and_(condition, TENANTS.c.deletion_requested_at.is_(None))
        with self.session.write() as conn:
            changed = conn.execute(TENANTS.update().where(condition).values(
                asleep_since=func.current_timestamp() if asleep else None)).rowcount
            if changed and event is not None:
                append_events(conn, [event])
            if not changed and conn.execute(select(TENANTS.c.id).where(TENANTS.c.name == name)).first() is None:
                raise NotFound(f"tenant {name} not found")
            return bool(changed)

    def request_delete(self, name: str) -> bool:
        with self.session.write() as conn:
            return self.request_delete_in(conn, name)

    def apply_tenant_in(self, conn: Connection, tenant: Tenant) -> ApplyOutcome:
        labels = json.dumps(tenant.metadata.labels, sort_keys=True)
        return self._apply_in(conn, tenant.metadata.name, labels, spec_values(tenant))

    @staticmethod
    def request_delete_in(conn: Connection, name: str) -> bool:
        result = conn.execute(
            TENANTS.update()
            .where(and_(TENANTS.c.name == name, TENANTS.c.deletion_requested_at.is_(None)))
            .values(deletion_requested_at=func.current_timestamp())
        )
        if result.rowcount:
            return True
        return conn.execute(select(TENANTS.c.id).where(TENANTS.c.name == name)).first() is not None

    def finalize_delete(self, name: str, events: Sequence[Event] = (), *, only_unbound: bool = False) -> bool:
        finalizing = and_(TENANTS.c.name == name, TENANTS.c.deletion_requested_at.is_not(None))
        if only_unbound:
            finalizing = and_(finalizing, TENANTS.c.node.is_(None))
        with self.session.write() as conn:
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
            append_events(conn, events)
        return bool(gone)

    def bind(self, name: str, node: str) -> bool:
        with self.session.write() as conn:
            return bool(conn.execute(_BIND, {"b_name": name, "b_node": node}).rowcount)


def _check(precondition: Precondition, name: str, current: Any) -> None:
    """The stored row is still what the caller read: the same generation (and labels, when given)."""
    labels_changed = precondition.labels is not None and json.loads(current.labels) != precondition.labels
    if current.generation != precondition.generation or labels_changed:
        changed = f"generation {current.generation}, not {precondition.generation}" if (
            current.generation != precondition.generation) else "new labels"
        raise StaleWrite(f"metadata.generation: tenant {name} was changed meanwhile ({changed}); read it again "
                         "and reapply the change", current_generation=current.generation)

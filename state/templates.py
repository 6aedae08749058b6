"""Templates: the images tenants are cloned from, with the resource defaults a tenant inherits.

A template row holds every resource default (a tenant's own value overrides one); only `io` may be unset
(no bandwidth limit). Reads and writes of the `templates` table live here and nowhere else.
"""

from typing import Any

from sqlalchemy import select

from specs import Sleep, Template
from state.columns import egress_value, network_from_column, ports_value, resource_values, resources_from_row
from state.errors import InvalidRecord
from state.schema import TEMPLATES
from state.session import Session


def template_from_row(row: Any) -> Template:
    return Template.model_construct(
        name=row.name,
        version=row.version,
        resources=resources_from_row(row),
        network=network_from_column(row.ingress_ports, row.egress),
        description=row.description,
        sleep=Sleep.from_column(row.sleep_after_seconds),
    )


def upsert_template(session: Session, template: Template) -> None:
    values = {
        "version": template.version,
        **resource_values(template.resources),  # io None: no bandwidth limit
        "ingress_ports": ports_value(template.network, empty_when_unset=True),
        "egress": egress_value(template.network, empty_when_unset=True),  # unset: none
        "description": template.description,
        "sleep_after_seconds": template.sleep.after,  # NULL: never
    }
    # io is optional: a template without it leaves its tenants' bandwidth unlimited.
    missing = [k for k in ("cpu", "memory", "disk", "pids") if getattr(template.resources, k) is None]
    if missing:
        raise InvalidRecord(f"resources.{missing[0]}", "a template must set every resource default")
    with session.write() as conn:
        updated = conn.execute(TEMPLATES.update().where(TEMPLATES.c.name == template.name).values(**values))
        if updated.rowcount == 0:
            conn.execute(TEMPLATES.insert().values(name=template.name, **values))


def get_template(session: Session, name: str) -> Template | None:
    with session.read() as conn:
        row = conn.execute(select(TEMPLATES).where(TEMPLATES.c.name == name)).first()
    return None if row is None else template_from_row(row)


def list_templates(session: Session) -> list[Template]:
    with session.read() as conn:
        rows = conn.execute(select(TEMPLATES).order_by(TEMPLATES.c.name)).all()
    return [template_from_row(row) for row in rows]

"""Plans: what a billing subscription provisions, a template with resource and network overrides.

Plans are stored with the same resource and port columns as tenants and templates (`state.columns`).
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from specs import NotFound
from specs.billing_plan import Plan
from state.access_schema import PLANS
from state.columns import (
    egress_value,
    network_from_column,
    ports_value,
    resource_values,
    resources_from_row,
    sleep_from_column,
    sleep_value,
)
from state.errors import UnknownReference
from state.schema import TEMPLATES
from state.session import Session


def plan_from_row(row: Any) -> Plan:
    return Plan.model_construct(
        kind="Plan",
        id=row.id,
        template=row.template,
        resources=resources_from_row(row),
        network=network_from_column(row.ingress_ports, row.egress),
        description=row.description,
        sleep=sleep_from_column(row.sleep_after_seconds),
    )


class Plans:
    """Plans over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def apply_plans(self, plans: Sequence[Plan]) -> None:
        """Create or replace plans, all or none. A plan naming an unknown template is refused."""
        with self.session.write() as conn:
            for plan in plans:
                if conn.execute(select(TEMPLATES.c.name).where(TEMPLATES.c.name == plan.template)).first() is None:
                    raise UnknownReference("template",
                                           f"unknown template {plan.template!r}; see fleet template list")
                values = {
                    "template": plan.template,
                    **resource_values(plan.resources),
                    "ingress_ports": ports_value(plan.network),
                    "egress": egress_value(plan.network),
                    "description": plan.description,
                    "sleep_after_seconds": sleep_value(plan.sleep),
                }
                if conn.execute(PLANS.update().where(PLANS.c.id == plan.id).values(**values)).rowcount == 0:
                    conn.execute(PLANS.insert().values(id=plan.id, **values))

    def get_plan(self, plan_id: str) -> Plan | None:
        with self.session.read() as conn:
            row = conn.execute(select(PLANS).where(PLANS.c.id == plan_id)).first()
        return None if row is None else plan_from_row(row)

    def list_plans(self) -> list[Plan]:
        with self.session.read() as conn:
            rows = conn.execute(select(PLANS).order_by(PLANS.c.id)).all()
        return [plan_from_row(row) for row in rows]

    def delete_plan(self, plan_id: str) -> None:
        with self.session.write() as conn:
            if conn.execute(PLANS.delete().where(PLANS.c.id == plan_id)).rowcount == 0:
                raise NotFound(f"plan {plan_id} not found")


"""The fleet ledger's settings: each node's flat monthly price, set by an operator (`fleet node configure
NODE --monthly-price 450`), and read by the dashboard, which divides it by the tenants on the node.

Why its own table (migration 10) rather than a column of `nodes`: a price is an operator's setting, not
something an agent reports, so it can be set before the node first registers (or for the node of a
single `fleet up`, which never registers), and an agent's registration never overwrites it. Prices are
whole cents (minor units of the billing currency), never floats. What it must never do: compute costs
(the dashboard does, from these prices and the tenant counts).
"""

from sqlalchemy import BigInteger, CheckConstraint, Column, Table, Text, func, select

from state.schema import METADATA, timestamp
from state.session import Session

MAX_MONTHLY_PRICE_CENTS = 10**12  # ten billion a month: a typo, not a node

NODE_SETTINGS = Table(
    "node_settings", METADATA,
    Column("node", Text, primary_key=True),
    Column("monthly_price_cents", BigInteger),  # NULL: not priced
    timestamp("updated_at"),
    CheckConstraint("length(node) BETWEEN 1 AND 63", name="node_setting_name_must_be_1_to_63_characters"),
    CheckConstraint(
        f"monthly_price_cents IS NULL OR monthly_price_cents BETWEEN 0 AND {MAX_MONTHLY_PRICE_CENTS}",
        name="monthly_price_cents_must_be_between_0_and_10e12",
    ),
)


class NodeSettings:
    """Node settings over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def set_monthly_price(self, node: str, cents: int | None) -> None:
        """Set (or, with None, clear) `node`'s flat monthly price in cents. The node need not be registered."""
        values = {"monthly_price_cents": cents, "updated_at": func.current_timestamp()}
        with self.session.write() as conn:
            if not conn.execute(NODE_SETTINGS.update().where(NODE_SETTINGS.c.node == node).values(**values)).rowcount:
                conn.execute(NODE_SETTINGS.insert().values(node=node, **values))

    def monthly_prices(self) -> dict[str, int]:
        """Every priced node's monthly price in cents, by node name."""
        with self.session.read() as conn:
            rows = conn.execute(
                select(NODE_SETTINGS.c.node, NODE_SETTINGS.c.monthly_price_cents).where(
                    NODE_SETTINGS.c.monthly_price_cents.is_not(None)
                )
            ).all()
        return {row.node: int(row.monthly_price_cents) for row in rows}


__all__ = ["MAX_MONTHLY_PRICE_CENTS", "NODE_SETTINGS", "NodeSettings"]

"""The tables of a fleet: nodes (what each agent registered) and leases (who holds what, until when).

Why apart from `schema.py`: they arrive with migration 3 and only a fleet needs them. Lease times are
seconds since the epoch on the database's clock (`Dialect.epoch_now_sql`), never a process's clock, so two
machines with skewed clocks still agree on who holds a lease. What it must never do: hold desired state.
"""

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, Float, Integer, Table, Text, false

from state.schema import METADATA, timestamp


def _count(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default="0")


def _text(name: str, default: str) -> Column[str]:
    return Column(name, Text, nullable=False, server_default=default)


NODES = Table(
    "nodes", METADATA,
    Column("name", Text, primary_key=True),
    _text("labels", "{}"),
    _text("driver", ""),
    _text("driver_info", "{}"),
    *(_count(name) for name in ("cpu_millicores", "memory_bytes", "disk_bytes", "max_tenants", "alloc_cpu_millicores",
                                "alloc_memory_bytes", "alloc_disk_bytes", "alloc_tenants")),
    _text("templates", "[]"),
    _count("ksm_pages_shared"),
    _count("ksm_pages_sharing"),
    Column("disk_shared_bytes", BigInteger),  # NULL: the node's driver does not measure it (migration 11)
    Column("cordoned", Boolean, nullable=False, server_default=false()),
    Column("ready", Boolean, nullable=False, server_default=false()),
    _text("not_ready_reason", ""),
    Column("heartbeat_at", Float, nullable=False, server_default="0"),
    timestamp("registered_at"),
    CheckConstraint("length(name) BETWEEN 1 AND 63", name="node_name_must_be_1_to_63_characters"),
    CheckConstraint("alloc_tenants >= 0", name="alloc_tenants_must_not_be_negative"),
)

LEASES = Table(
    "leases", METADATA,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("transitions", Integer, nullable=False, server_default="0"),
)

NODE_TABLES = ("nodes", "leases")

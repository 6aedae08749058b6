"""The tables of a fleet: nodes (what each agent registered) and leases (who holds what, until when).

Why apart from `schema.py`: they arrive with migration 3 and only a fleet needs them. Lease times are
seconds since the epoch on the database's clock (`Dialect.epoch_now_sql`), never a process's clock, so two
machines with skewed clocks still agree on who holds a lease. What it must never do: hold desired state.
"""

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, DateTime, Float, Integer, Text, false, text
from sqlmodel import Field, SQLModel

_NOW = text("CURRENT_TIMESTAMP")


class NodeRow(SQLModel, table=True):
    __tablename__ = "nodes"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 63", name="node_name_must_be_1_to_63_characters"),
        CheckConstraint("alloc_tenants >= 0", name="alloc_tenants_must_not_be_negative"),
    )

    name: str = Field(sa_column=Column(Text, primary_key=True))
    labels: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    driver: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    driver_info: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    cpu_millicores: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    memory_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    disk_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    max_tenants: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    alloc_cpu_millicores: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    alloc_memory_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    alloc_disk_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    alloc_tenants: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    templates: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))
    ksm_pages_shared: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    ksm_pages_sharing: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cordoned: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    ready: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    not_ready_reason: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    heartbeat_at: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))
    registered_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=False, server_default=_NOW)
    )


class LeaseRow(SQLModel, table=True):
    __tablename__ = "leases"

    name: str = Field(sa_column=Column(Text, primary_key=True))
    holder: str = Field(sa_column=Column(Text, nullable=False))
    renewed_at: float = Field(sa_column=Column(Float, nullable=False))
    expires_at: float = Field(sa_column=Column(Float, nullable=False))
    transitions: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))


NODES = NodeRow.__table__  # type: ignore[attr-defined]
LEASES = LeaseRow.__table__  # type: ignore[attr-defined]
NODE_TABLES = ("nodes", "leases")

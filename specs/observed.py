"""What a driver reads back from its host: observations, capabilities, capacity, delete receipts."""

from pydantic import BaseModel, ConfigDict, Field

from specs.tenant import Network, Resources


class Observed(BaseModel):
    """A tenant's container as the host shows it right now (never from a cache, so drift is seen)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    template: str | None = None  # name@version it was cloned from
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    running: bool = False
    address: str | None = None
    pid: int | None = None
    problems: tuple[str, ...] = ()  # half-made parts the driver noticed, e.g. "veth missing"
    # Set when the running container must be restarted to get what the driver now enforces (e.g. it was
    # started by an older version without a user namespace); the planner then stops and starts it.
    restart_reason: str | None = None
    # The spec generation whose template and resources the driver last wrote, where the host keeps it (LXD:
    # `user.fleet.generation`); None where it does not. For people and audits: the plan never reads it.
    generation: int | None = None


class DriverInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str = ""
    capabilities: tuple[str, ...] = ()
    tools: dict[str, str] = Field(default_factory=dict)
    storage: str = ""  # where tenants' files live on this node, for people (e.g. "pool /var/lib/fleet/pool")


class NodeCapacity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_millicores: int
    memory_bytes: int
    disk_bytes: int
    max_tenants: int = 300
    ksm_pages_shared: int = 0
    ksm_pages_sharing: int = 0
    # Template bytes the node's tenants refer to without a copy of their own (copy-on-write): for each
    # template, its size times the tenants cloned from it. An upper bound: what a tenant has since
    # rewritten of its template is still counted, as no quota mode says per extent who still shares it
    # (docs/nspawn-storage.md). None: the driver cannot measure it (it is not shown as 0).
    disk_shared_bytes: int | None = Field(
        default=None, ge=0, description="Template bytes the node's tenants share by copy-on-write (each template's "
        "size times its clones; an upper bound); null where the driver does not measure it")


class DeleteReceipt(BaseModel):
    """Everything a delete removed, each item verified gone, so the user can see what was taken."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    removed: tuple[str, ...] = ()
    already_absent: tuple[str, ...] = ()

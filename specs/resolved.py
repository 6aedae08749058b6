"""The desired state the reconciler plans from: a tenant's spec with every default filled in from its
template, and that template itself, so the plan's `Clone` carries what the driver clones from.

Apart from `specs/tenant.py` because it holds a `Template`, whose module builds on that one.
"""

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from specs.template import Template
from specs.tenant import Name, Network, Resources


class ResolvedSpec(BaseModel):
    """Desired state with every default filled in: what the planner compares with the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    generation: int
    template: Template  # the one the tenant names, as stored (its version is the one a clone is made from)
    resources: Resources
    network: Network
    paused: bool = False
    deleting: bool = False
    sleep_after: int | None = None  # seconds without a visitor before the gateway puts it to sleep; None: never
    # When it was put to sleep (idle at the gateway, or `fleet sleep`): its container is to be stopped, all
    # else kept. None while awake.
    asleep_since: datetime | None = None

    @property
    def asleep(self) -> bool:
        return self.asleep_since is not None

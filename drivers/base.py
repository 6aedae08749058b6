"""The contract every driver keeps.

Every method is idempotent and safe to call again after a crash half-way through: it finishes or undoes
the half. Errors leave a driver only as `specs.errors` types.
"""

import builtins
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from drivers.exec_process import ExecProcess, ExecRequest
from specs import (
    DeleteReceipt,
    DriverInfo,
    Network,
    NodeCapacity,
    Observed,
    Resources,
    Template,
    TemplateSource,
    Usage,
)


@runtime_checkable
class Driver(Protocol):
    name: str

    def info(self) -> DriverInfo: ...

    def capacity(self) -> NodeCapacity: ...

    def list(self) -> list[Observed]:
        """Only what this operator owns (carries its marker)."""
        ...

    def inspect(self, tenant: str) -> Observed | None: ...

    def usage(self, tenants: Sequence[str] | None = None) -> builtins.list[Usage]:
        """What each tenant uses now, read from the host (CPU seconds, memory now and at peak, exclusive
        disk bytes, network bytes in and out): of `tenants` (those of them this node has; the others are
        left out), or of every tenant it owns when None. Cheap enough to call on every metrics scrape."""
        ...

    def ensure_template(self, template: Template) -> None: ...

    def make_template(
        self, template: Template, source: TemplateSource, progress: Callable[[str], None] = lambda line: None
    ) -> bool:
        """Import (`rootfs`, `tarball`) or build (`busybox`, `debootstrap`) a template on this node, read-only
        and ready to clone. Idempotent: a template of that ref already here is left as it is (False)."""
        ...

    def clone(self, tenant: str, template: Template, *, generation: int | None = None) -> None:
        """`generation`: the spec generation this is done for; a driver whose host keeps per-tenant
        metadata records it (LXD: `user.fleet.generation`) and reports it in `Observed.generation`."""
        ...

    def apply_resources(self, tenant: str, resources: Resources, *, generation: int | None = None) -> None: ...

    def apply_network(self, tenant: str, network: Network) -> None: ...

    def start(self, tenant: str) -> None: ...

    def stop(self, tenant: str) -> None: ...

    def exec(self, tenant: str, request: ExecRequest) -> ExecProcess:
        """Start `request.command` inside the tenant's running container as the tenant's root (its user
        namespace, cgroups, limits, capabilities and seccomp filters, never the host's), with its streams
        (or a terminal) held by the returned process. PermanentError (reason NotRunning) when the
        container does not run; a driver that cannot exec raises PermanentError (reason Unsupported)."""
        ...

    def delete(self, tenant: str) -> DeleteReceipt:
        """Remove everything the tenant had, verify it is gone, and say what was removed."""
        ...

    def close(self) -> None: ...

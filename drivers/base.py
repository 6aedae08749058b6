"""The contract every driver keeps.

Every method is idempotent and safe to call again after a crash half-way through: it finishes or undoes
the half. Errors leave a driver only as `specs.errors` types.
"""

from typing import Protocol, runtime_checkable

from specs import DeleteReceipt, DriverInfo, Network, NodeCapacity, Observed, Resources, Template


@runtime_checkable
class Driver(Protocol):
    name: str

    def info(self) -> DriverInfo: ...

    def capacity(self) -> NodeCapacity: ...

    def list(self) -> list[Observed]:
        """Only what this operator owns (carries its marker)."""
        ...

    def inspect(self, tenant: str) -> Observed | None: ...

    def ensure_template(self, template: Template) -> None: ...

    def clone(self, tenant: str, template: Template) -> None: ...

    def apply_resources(self, tenant: str, resources: Resources) -> None: ...

    def apply_network(self, tenant: str, network: Network) -> None: ...

    def start(self, tenant: str) -> None: ...

    def stop(self, tenant: str) -> None: ...

    def delete(self, tenant: str) -> DeleteReceipt:
        """Remove everything the tenant had, verify it is gone, and say what was removed."""
        ...

    def close(self) -> None: ...

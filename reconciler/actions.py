"""The steps a reconcile can take, as frozen values. The executor maps each to one driver call."""

from dataclasses import dataclass

from specs import Network, Resources, Template
from specs.tenant import egress_summary


@dataclass(frozen=True)
class Clone:
    template: Template  # resolved when the desired state was read: the executor clones exactly this one

    def describe(self) -> str:
        return f"clone from template {self.template.ref}"


@dataclass(frozen=True)
class ApplyResources:
    resources: Resources

    def describe(self) -> str:
        shown = self.resources.display()  # every default filled in: only io may be None (no limit)
        return "apply resources " + " ".join(f"{k}={'unlimited' if v is None else v}" for k, v in shown.items())


@dataclass(frozen=True)
class ApplyNetwork:
    network: Network

    def describe(self) -> str:
        ports = ",".join(str(p) for p in self.network.ingress or ()) or "none"
        if not self.network.egress:  # none (or unset: none)
            return f"apply network (ingress ports {ports})"
        return f"apply network (ingress ports {ports}; egress {egress_summary(self.network.egress)})"


@dataclass(frozen=True)
class Start:
    def describe(self) -> str:
        return "start the container"


@dataclass(frozen=True)
class Stop:
    def describe(self) -> str:
        return "stop the container"


@dataclass(frozen=True)
class Delete:
    def describe(self) -> str:
        return "delete everything the tenant has"


Action = Clone | ApplyResources | ApplyNetwork | Start | Stop | Delete

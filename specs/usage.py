"""What a tenant uses right now, as its node's host reports it: CPU time, memory, disk, network.

Read from the host on every request (never stored), so it is as fresh as the kernel's own counters. The
counters (`cpu_seconds`, network bytes) only grow while the container's cgroup and veth exist; they start
again from zero when those are made anew (a re-provision), as Prometheus counters may.
"""

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """One tenant's usage on its node. "In" and "out" are seen from the tenant: `network_in_bytes` is what
    it received, `network_out_bytes` what it sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(description="The tenant's name")
    running: bool = Field(default=False, description="Whether its container has a process now")
    cpu_seconds: float = Field(default=0.0, ge=0, description="CPU time used, in seconds (a counter)")
    memory_bytes: int = Field(default=0, ge=0, description="Memory in use now, in bytes (page cache included)")
    memory_peak_bytes: int = Field(default=0, ge=0, description="The most memory it has used, in bytes")
    disk_bytes: int = Field(default=0, ge=0, description="Exclusive disk bytes: what its own writes hold (the "
                            "quota's measure; blocks shared with its template are not counted)")
    network_in_bytes: int = Field(default=0, ge=0, description="Bytes received by the tenant (a counter)")
    network_out_bytes: int = Field(default=0, ge=0, description="Bytes sent by the tenant (a counter)")

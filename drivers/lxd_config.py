"""Fleet's resources as LXD instance keys, and back: pure functions, no I/O.

Why a module of its own: what Fleet writes must read back as exactly the same `Resources` (else the
planner sees drift forever), and LXD accepts several spellings of one value ("64MiB", "67108864"), so the
two directions live side by side and a unit test holds them to a round trip. CPU is written only in
LXD's hard form, `limits.cpu.allowance = Xms/Yms` (a CFS quota): the percent form gives soft shares, not
a ceiling. Memory is hard (`limits.memory.enforce = hard`), disk is the root device's `size`, disk
bandwidth the root device's `limits.read` / `limits.write`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from specs import Resources

MARKER = "user.fleet.managed"
ROLE = "user.fleet.role"  # "tenant" or "template"
TENANT = "user.fleet.tenant"
TEMPLATE = "user.fleet.template"  # name@version a tenant was cloned from, or a template instance holds
GENERATION = "user.fleet.generation"
ROOT_DEVICE = "root"
NIC_DEVICE = "eth0"

_UNITS = {
    "": 1, "B": 1,
    "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "EB": 10**18,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50, "EiB": 1 << 60,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kMGTPE]i?B|B)?\s*$")
_ALLOWANCE = re.compile(r"^\s*(\d+)ms\s*/\s*(\d+)ms\s*$")


def parse_size(text: str | None) -> int | None:
    """An LXD byte size ("64MiB", "67108864", "1GB") in bytes; None when unset or not a size (e.g. "50%")."""
    if not text:
        return None
    match = _SIZE.match(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def cpu_allowance(millicores: int) -> str:
    """The hard CFS quota for `millicores`: a 100 ms period where whole milliseconds express it exactly,
    else a 1 s period (LXD takes only whole milliseconds)."""
    if millicores % 10 == 0:
        return f"{millicores // 10}ms/100ms"
    return f"{millicores}ms/1000ms"


def parse_cpu_allowance(text: str | None) -> int | None:
    """Millicores of a hard allowance; None when unset or in the soft percent form (no ceiling at all)."""
    match = _ALLOWANCE.match(text or "")
    if match is None:
        return None
    quota, period = int(match.group(1)), int(match.group(2))
    return round(quota * 1000 / period) if period else None


def resource_config(resources: Resources) -> dict[str, str | None]:
    """Instance config keys for `resources`; None removes a key (LXD's PATCH semantics for unset limits)."""
    return {
        "limits.cpu.allowance": cpu_allowance(resources.cpu) if resources.cpu is not None else None,
        "limits.memory": str(resources.memory) if resources.memory is not None else None,
        "limits.memory.enforce": "hard" if resources.memory is not None else None,
        "limits.memory.swap": "false" if resources.memory is not None else None,
        "limits.processes": str(resources.pids) if resources.pids is not None else None,
    }


def root_device(pool: str, resources: Resources) -> dict[str, str]:
    device = {"type": "disk", "path": "/", "pool": pool}
    if resources.disk is not None:
        device["size"] = str(resources.disk)
    if resources.io is not None:
        device["limits.read"] = str(resources.io)
        device["limits.write"] = str(resources.io)
    return device


def observed_resources(config: Mapping[str, str], devices: Mapping[str, Mapping[str, str]]) -> Resources:
    """What the instance's keys say its limits are (read from LXD each time, so a hand edit shows)."""
    root = devices.get(ROOT_DEVICE, {})
    pids = config.get("limits.processes")
    read, write = parse_size(root.get("limits.read")), parse_size(root.get("limits.write"))
    memory = parse_size(config.get("limits.memory"))
    if config.get("limits.memory.enforce", "hard") != "hard":
        memory = None  # a soft limit is no ceiling: report it as drift
    return Resources.model_construct(
        cpu=parse_cpu_allowance(config.get("limits.cpu.allowance")),
        memory=memory,
        disk=parse_size(root.get("size")),
        pids=int(pids) if pids and pids.isdigit() else None,
        io=read if read == write else None,
    )

"""Whether this host can run the LXD driver, and Fleet's storage pool on a freshly installed LXD.

`host_problems` answers in one line per problem, each naming the fix (the CLI prints them and exits).
`ensure_storage_pool` makes Fleet's btrfs pool (LXD makes the loop image) when it is absent, marked
`user.fleet.managed=true`; a pool of that name without the marker is used as it is, never changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from loguru import logger

from drivers.lxd_api import LxdClient, default_socket, start_hint
from drivers.lxd_config import MARKER
from specs import CheckStatus, FleetError, HostCheck, NotFound, PermanentError

DEFAULT_POOL = "fleet"
DEFAULT_NETWORK = "fleetbr0"


def host_problems(*, socket: Path | None = None, storage_pool: str = DEFAULT_POOL, **_: Any) -> list[str]:
    """What keeps the LXD driver from running here, each with how to fix it; empty when it can."""
    path = Path(socket) if socket is not None else default_socket()
    if os.geteuid() != 0:
        return ["not root: the LXD driver configures tenant networks in their namespaces; run Fleet as root"]
    if not path.exists():
        if shutil.which("lxd") is None and shutil.which("incusd") is None:
            return [f"LXD is not installed (no socket {path}): `apt-get install -y lxd dnsmasq-base`, then "
                    f"{start_hint(path).removeprefix('start it with ')}"]
        return [f"the LXD socket {path} is missing: the daemon is not running; {start_hint(path)}"]
    client = LxdClient(path, timeout=5.0)
    try:
        try:
            server = client.server()
        except FleetError as error:
            return [f"the LXD daemon does not answer on {path}: {start_hint(path)} ({error})"]
        problems = []
        environment = server.get("environment") or {}
        drivers = {str(d.get("Name")) for d in environment.get("storage_supported_drivers") or []}
        try:
            pool = client.get(f"/1.0/storage-pools/{storage_pool}").metadata
        except NotFound:
            pool = None
        if pool is None and drivers and "btrfs" not in drivers:
            problems.append(f"storage pool {storage_pool!r} is absent and LXD cannot make a btrfs one: "
                            "`apt-get install -y btrfs-progs`, restart lxd (or create the pool yourself)")
        if shutil.which("dnsmasq") is None:
            problems.append("LXD needs dnsmasq to create Fleet's bridge: `apt-get install -y dnsmasq-base`")
        return problems
    finally:
        client.close()


def host_checks(*, socket: Path | None = None, storage_pool: str = DEFAULT_POOL, **_: Any) -> list[HostCheck]:
    """`fleet doctor --driver lxd`: the daemon and what Fleet needs of it, each problem with its fix."""
    path = Path(socket) if socket is not None else default_socket()
    problems = host_problems(socket=path, storage_pool=storage_pool)
    if problems:
        return [HostCheck(name="lxd", status=CheckStatus.FAILED, detail=problem.split(":")[0], fix=problem)
                for problem in problems]
    client = LxdClient(path, timeout=5.0)
    try:
        environment = client.server().get("environment") or {}
        pool = "present" if client.exists(f"/1.0/storage-pools/{storage_pool}") else "absent: Fleet makes it"
    finally:
        client.close()
    return [
        HostCheck(name="lxd daemon", status=CheckStatus.OK,
                  detail=f"LXD {environment.get('server_version', '?')} on {path}, firewall "
                         f"{environment.get('firewall', '?')}"),
        HostCheck(name="storage pool", status=CheckStatus.OK, detail=f"{storage_pool}: {pool}"),
    ]


def ensure_storage_pool(client: LxdClient, name: str, size: int) -> bool:
    """Fleet's pool, created (btrfs on a loop image of `size` bytes) when absent; True if made now."""
    try:
        pool = client.get(f"/1.0/storage-pools/{name}").metadata
    except NotFound:
        pool = None
    if pool is not None:
        if pool.get("status") not in (None, "Created"):
            raise PermanentError(f"storage pool {name} is {pool.get('status')}: repair it with lxc storage",
                                 reason="PoolBroken")
        return False
    client.request("POST", "/1.0/storage-pools", json={
        "name": name, "driver": "btrfs", "description": "Fleet: tenant storage (managed by Fleet)",
        "config": {"size": f"{size // (1 << 20)}MiB", MARKER: "true"}})
    logger.bind(pool=name, size=size).info("Created LXD storage pool")
    return True


def pool_space(client: LxdClient, name: str) -> tuple[int, int]:
    """(total, used) bytes of the pool, as LXD reports them."""
    space = (client.get(f"/1.0/storage-pools/{name}/resources").metadata or {}).get("space") or {}
    return int(space.get("total") or 0), int(space.get("used") or 0)

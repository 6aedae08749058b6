"""Removing what a real-driver test's node left: every tenant of a prefix, through Fleet's own driver
(processes, cgroups, network, firewall, subvolumes), then the loop-backed pool itself."""

import shutil
from pathlib import Path

from tests.helpers import wait_for
from tests.integration.conftest import teardown_loop_pool


def host_parts(data_dir: Path, prefix: str) -> dict[str, set[str]]:
    """Every tenant part the host shows, by kind, for tenants whose names start with `prefix`."""
    from drivers import nspawn_cgroups, nspawn_network
    from drivers.nspawn_process import Processes

    state = data_dir / "state"
    pool = data_dir / "pool" / "tenants"
    entries = {p.name for p in pool.iterdir()} if pool.is_dir() else set()
    parts = {
        "subvolumes": {e for e in entries if not e.startswith(".")},
        # half-made clones (.tmp-NAME) and nspawn's lock files (.#NAME.lck), by the tenant they belong to
        "pool leftovers": {
            e.removeprefix(".tmp-").removeprefix(".#").removesuffix(".lck") for e in entries if e.startswith(".")
        },
        "cgroups": set(nspawn_cgroups.detect().list_tenants()),
        "networks": set(nspawn_network.Networks(state).list_tenants()),
        "processes": set(Processes(state).running_tenants()),
    }
    return {kind: {name for name in names if name.startswith(prefix)} for kind, names in parts.items()}


def sweep_node(data_dir: Path, *, prefix: str, address_range: str, image_size: int = 2 << 30) -> None:
    if (data_dir / "pool.img").exists():
        from drivers.nspawn import NspawnDriver
        from specs import TransientError

        driver = NspawnDriver(data_dir, image_size=image_size, address_range=address_range)

        def deleted(name: str) -> bool:
            try:
                driver.delete(name)
            except TransientError:  # the btrfs cleaner still holds a qgroup: ask again
                return False
            return True

        names = set(driver.pool.list_tenants()) | set().union(*host_parts(data_dir, prefix).values())
        for name in sorted(n for n in names if n.startswith(prefix)):
            wait_for(lambda name=name: deleted(name), timeout=30, what=f"sweeping {name}")  # type: ignore[misc]
        driver.close()
    from drivers import nspawn_firewall, nspawn_network

    nspawn_network.remove_range_route(address_range)
    nspawn_firewall.Firewall().remove_table_if_unused()
    teardown_loop_pool(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)

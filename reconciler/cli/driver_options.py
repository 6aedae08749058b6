"""Choosing and opening the driver for commands that act on this node (up, node, template)."""

from dataclasses import dataclass
from pathlib import Path

from drivers import Driver, available_drivers, create_driver, host_problems
from specs import PermanentError, parse_bytes


@dataclass(frozen=True)
class DriverOptions:
    name: str = "auto"
    data_dir: Path = Path("/var/lib/fleet")
    pool: Path | None = None
    pool_size: str = "20Gi"
    address_range: str = "10.213.0.0/16"
    node: str = "local"
    lxd_socket: Path | None = None  # the LXD (or Incus) API socket; None: LXD's, else Incus's default path
    egress_interface: str | None = None  # nspawn: where tenants' egress leaves (None: the default route's)


EGRESS_INTERFACE_HELP = (
    "nspawn: the interface tenants' egress (spec.network.egress) leaves the node through, masqueraded. Default: "
    "the interface of the IPv4 default route, looked up when a tenant first needs egress."
)
LXD_SOCKET_HELP = (
    "The LXD API socket for --driver lxd (default /var/lib/lxd/unix.socket, else Incus's /var/lib/incus/unix.socket;"
    " Incus speaks the same API but is untested: it has no package for the Debian release Fleet is tested on)."
)


def real_driver_problems(pool: Path | None) -> list[str]:
    """What keeps the real driver from running here, each with how to fix it; empty when it can."""
    return host_problems("nspawn", pool_path=pool)


def open_driver(options: DriverOptions) -> tuple[Driver, str]:
    """The driver to run and a line saying what it is. 'auto' is the real driver; where the host cannot
    run it, the error says exactly what is missing (the fake driver runs only when asked for)."""
    name = options.name
    if name == "auto":
        problems = real_driver_problems(options.pool)
        if problems:
            raise PermanentError(
                "the real driver (nspawn) cannot run on this host: "
                + "; ".join(problems)
                + ". Fix that, or run with --driver fake to simulate containers in memory.",
                reason="HostUnsupported",
            )
        name = "nspawn"
    if name not in available_drivers():
        choices = ", ".join(available_drivers())
        raise PermanentError(f"--driver: unknown driver {name!r}; choose one of: auto, {choices}")
    if name == "fake":
        described = "fake (in memory: containers are simulated and vanish when fleet up stops)"
        return create_driver("fake", node=options.node), described
    try:
        size = parse_bytes(options.pool_size)
    except ValueError as error:
        raise PermanentError(f"--pool-size: {error}") from error
    if name == "lxd":
        # The LXD driver keeps tenants in LXD's own storage pool (made on a loop image of --pool-size when
        # absent); --pool names a btrfs filesystem for nspawn and means nothing here.
        if options.pool is not None:
            raise PermanentError("--pool is for the nspawn driver; LXD keeps tenants in its storage pool 'fleet'")
        if options.egress_interface is not None:
            raise PermanentError("--egress-interface is for the nspawn driver; on lxd, tenants' egress leaves by the "
                                 "node's routing table (docs/lxd.md, Egress)")
        problems = host_problems("lxd", socket=options.lxd_socket)
        if problems:
            raise PermanentError("the lxd driver cannot run: " + "; ".join(problems), reason="HostUnsupported")
        driver = create_driver(
            "lxd", socket=options.lxd_socket, pool_size=size, address_range=options.address_range, node=options.node
        )
        info = driver.info()
        return driver, f"lxd ({info.version}, {info.storage})"
    driver = create_driver(
        name,
        data_dir=options.data_dir,
        pool_path=options.pool,
        image_size=size,
        address_range=options.address_range,
        node=options.node,
        **({"egress_interface": options.egress_interface} if options.egress_interface is not None else {}),
    )
    info = driver.info()
    where = f", {info.storage}" if info.storage else ""
    return driver, f"{name} ({info.version}{where})"

"""Verbs on templates: list what tenants can be cloned from, import or build new ones on this node."""

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from drivers import Driver
from reconciler.cli.driver_options import LXD_SOCKET_HELP, DriverOptions, open_driver
from reconciler.cli.render import table
from reconciler.cli.settings import Settings, this_node
from reconciler.documents import BadInput, describe_validation
from specs import Template, TemplateSource, format_bytes, format_cpu, format_duration
from specs.tenant import egress_summary

app = typer.Typer(help="Templates tenants are cloned from.", no_args_is_help=True)

_POOL = typer.Option(None, "--pool", help="The btrfs pool (default: DATA_DIR/pool.img, as fleet up uses).")
_DRIVER = typer.Option("nspawn", "--driver", help="The node's driver: nspawn or lxd.")
_LXD_SOCKET = typer.Option(None, "--lxd-socket", help=LXD_SOCKET_HELP)


def _template(
    ref: str, cpu: str, memory: str, disk: str, pids: int, io: str | None, ports: list[int], description: str,
    sleep_after: str = "never", egress: list[str] | None = None,
) -> Template:
    name, _, version = ref.partition("@")
    if not version:
        raise BadInput(f"NAME@VERSION: {ref!r} has no version; write it like web@1")
    document: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": description,
        "resources": {"cpu": cpu, "memory": memory, "disk": disk, "pids": pids, "io": io},
        "network": {"ingress": ports, "egress": _egress(egress or ["none"])},
        "sleep": {"after": sleep_after},
    }
    try:
        return Template.model_validate(document)
    except ValidationError as error:
        raise BadInput(describe_validation(error)) from error


def _egress(values: list[str]) -> Any:
    """`--egress` values: none, internet, or TO[:PORT,PORT...] with TO a CIDR or internet, one rule each."""
    if values in (["none"], ["internet"]):
        return values[0]
    rules: list[dict[str, Any]] = []
    for value in values:
        to, _, ports = value.partition(":")
        if not ports:
            rules.append({"to": to})
            continue
        try:
            rules.append({"to": to, "ports": [int(port) for port in ports.split(",")]})
        except ValueError as error:
            raise BadInput(f"--egress: {value!r}: ports must be numbers, like 203.0.113.0/24:443,8443") from error
    return rules


def _node_driver(settings: Settings, pool: Path | None, driver_name: str = "nspawn",
                 lxd_socket: Path | None = None) -> Driver:
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    driver, _ = open_driver(
        DriverOptions(name=driver_name, data_dir=data_dir, pool=pool, node=this_node(), lxd_socket=lxd_socket)
    )
    return driver


@app.command("list")
def list_templates(ctx: typer.Context) -> None:
    """The templates tenants can name in spec.template, with their defaults."""
    settings: Settings = ctx.obj
    store = settings.open_store()
    rows = [
        [
            t.name,
            t.version,
            format_cpu(t.resources.cpu or 0),
            format_bytes(t.resources.memory or 0),
            format_bytes(t.resources.disk or 0),
            t.resources.pids,
            format_bytes(t.resources.io) if t.resources.io is not None else "unlimited",
            ",".join(str(p) for p in t.network.ingress or ()),
            egress_summary(t.network.egress),
            format_duration(t.sleep.after),
            t.description,
        ]
        for t in store.list_templates()
    ]
    typer.echo(table(["NAME", "VERSION", "CPU", "MEMORY", "DISK", "PIDS", "IO", "PORTS", "EGRESS", "SLEEP AFTER",
                      "DESCRIPTION"], rows))


def _defaults() -> dict[str, Any]:
    return {
        "cpu": typer.Option("500m", "--cpu", help="Default CPU of its tenants."),
        "memory": typer.Option("256Mi", "--memory"),
        "disk": typer.Option("1Gi", "--disk"),
        "pids": typer.Option(256, "--pids"),
        "io": typer.Option(
            None, "--io", help="Default disk bandwidth, bytes per second each way (e.g. 100Mi); unset: unlimited."
        ),
        "ports": typer.Option([80], "--port", help="Default ingress port (repeat for several)."),
        "description": typer.Option("", "--description"),
        "egress": typer.Option(["none"], "--egress", help="Default egress of its tenants: none, internet, or "
                               "TO[:PORT,...] with TO a CIDR or internet (repeat for several rules)."),
        "sleep_after": typer.Option("never", "--sleep-after",
                                    help="Default idle time before its tenants sleep (15m, 2h), or never."),
    }


_D = _defaults()


@app.command("import")
def import_template(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@VERSION, e.g. web@1"),
    rootfs: Path | None = typer.Option(None, "--rootfs", help="A directory holding the root filesystem."),
    tarball: Path | None = typer.Option(None, "--tarball", help="A tar archive of the root filesystem."),
    cpu: str = _D["cpu"],
    memory: str = _D["memory"],
    disk: str = _D["disk"],
    pids: int = _D["pids"],
    io: str | None = _D["io"],
    ports: list[int] = _D["ports"],
    description: str = _D["description"],
    sleep_after: str = _D["sleep_after"],
    egress: list[str] = _D["egress"],
    pool: Path | None = _POOL,
    driver_name: str = _DRIVER,
    lxd_socket: Path | None = _LXD_SOCKET,
) -> None:
    """Import a root filesystem as a read-only template on this node and record it in the store.

    The tree must have /usr and an executable /fleet/init (the container's entry point)."""
    if (rootfs is None) == (tarball is None):
        raise BadInput("--rootfs or --tarball: give exactly one")
    template = _template(ref, cpu, memory, disk, pids, io, ports, description, sleep_after, egress)
    settings: Settings = ctx.obj
    store = settings.open_store(create=True)
    source = TemplateSource(kind="rootfs", path=rootfs) if rootfs else TemplateSource(kind="tarball", path=tarball)
    driver = _node_driver(settings, pool, driver_name, lxd_socket)
    from reconciler.cli.progress import progress

    try:
        # A spinner on a terminal (an import copies a whole tree); a script sees what it always saw.
        with progress(f"Importing template {template.ref}", plain_steps=False) as step:
            made = driver.make_template(template, source, step)
    finally:
        driver.close()
    store.upsert_template(template)
    typer.echo(f"template/{template.ref} {'imported' if made else 'already on this node (left as it is)'}")


@app.command("build")
def build_template(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@VERSION, e.g. tiny@1"),
    busybox: bool = typer.Option(False, "--busybox", help="A tiny busybox userland serving HTTP on port 80."),
    debootstrap: str | None = typer.Option(None, "--debootstrap", help="A Debian suite, e.g. bookworm."),
    cpu: str = _D["cpu"],
    memory: str = _D["memory"],
    disk: str = _D["disk"],
    pids: int = _D["pids"],
    io: str | None = _D["io"],
    ports: list[int] = _D["ports"],
    description: str = _D["description"],
    sleep_after: str = _D["sleep_after"],
    egress: list[str] = _D["egress"],
    pool: Path | None = _POOL,
    driver_name: str = _DRIVER,
    lxd_socket: Path | None = _LXD_SOCKET,
) -> None:
    """Build a template on this node (with progress) and record it in the store."""
    if busybox == (debootstrap is not None):
        raise BadInput("--busybox or --debootstrap SUITE: give exactly one")
    template = _template(ref, cpu, memory, disk, pids, io, ports, description, sleep_after, egress)
    settings: Settings = ctx.obj
    store = settings.open_store(create=True)
    driver = _node_driver(settings, pool, driver_name, lxd_socket)
    from reconciler.cli.progress import progress

    source = TemplateSource(kind="busybox") if busybox else TemplateSource(kind="debootstrap", suite=debootstrap)
    try:
        with progress(f"Building template {template.ref}") as step:  # the step lines, under a spinner on a tty
            made = driver.make_template(template, source, step)
    finally:
        driver.close()
    store.upsert_template(template)
    typer.echo(f"template/{template.ref} {'built' if made else 'already on this node (left as it is)'}")

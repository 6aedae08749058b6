"""Templates for the LXD driver: an imported image turned into a stopped template instance with a snapshot.

A template `name@version` is the instance `fleet-tpl-<hash of the ref>` (LXD instance names allow no '@'
or '.'), marked `user.fleet.managed=true`, `user.fleet.role=template`, `user.fleet.template=<ref>`, with
its snapshot `ready`. Tenants are created with a `copy` source from that snapshot: on btrfs a snapshot of
a subvolume, copy-on-write. The snapshot is the commit: a template instance without it is a half-made
build (a crash between steps) and the next build deletes it and starts again. The image it was made from
is a means only; it is deleted once the template instance holds the tree (Fleet's images carry the
property `fleet_ref`, so leftovers of a crash are found and removed too).

No image server is reachable here, so images are built locally: a tarball with `metadata.yaml` and the
tree under `rootfs/`, uploaded with `POST /1.0/images`. Fleet's template contract (from nspawn) holds:
the tree has `/usr`, and `/fleet/init` runs the tenant's service in the foreground; instances run it as
their init (`lxc.init.cmd`), so a tree's own /sbin/init is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from drivers.lxd_api import LxdClient
from drivers.lxd_config import MARKER, ROLE, TEMPLATE
from drivers.template_tree import INIT_PATH, fill_busybox, fill_debootstrap
from specs import NotFound, PermanentError, Template, TemplateSource, TransientError

SNAPSHOT = "ready"
BUILTIN_NAMES = frozenset({"base"})


def instance_name(ref: str) -> str:
    return "fleet-tpl-" + hashlib.sha256(ref.encode()).hexdigest()[:16]


def snapshot_source(ref: str) -> str:
    return f"{instance_name(ref)}/{SNAPSHOT}"


def find(client: LxdClient, ref: str) -> bool:
    """Whether the committed template for `ref` is here: its snapshot, which carries the template
    instance's marks (one request: this is asked before every clone)."""
    try:
        snapshot = client.get(f"/1.0/instances/{instance_name(ref)}/snapshots/{SNAPSHOT}").metadata or {}
    except NotFound:
        return False
    config = snapshot.get("config") or {}
    return bool(config.get(MARKER) == "true" and config.get(TEMPLATE) == ref)


def make(client: LxdClient, template: Template, source: TemplateSource, pool: str,
         progress: Callable[[str], None] = lambda line: None) -> bool:
    """Import or build `template` from `source`; False when it is already here (left as it is)."""
    ref = template.ref
    if find(client, ref):
        _delete_images_of(client, ref)  # a build killed after its snapshot, before it deleted its image
        return False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleet-lxd-image-") as scratch:
        image = Path(scratch) / "image.tar"
        with tarfile.open(image, "w") as archive:
            _add_metadata(archive, template)
            if source.kind == "busybox":
                _add_tree(archive, _busybox_tree(Path(scratch) / "tree", template, progress))
            elif source.kind == "rootfs" and source.path is not None:
                if not source.path.is_dir():
                    raise PermanentError(f"rootfs {source.path} is not a directory", reason="BadTemplate")
                _add_tree(archive, source.path)
            elif source.kind == "tarball" and source.path is not None:
                _add_tarball(archive, source.path)
            elif source.kind == "debootstrap" and source.suite is not None:
                _add_tree(archive, _debootstrap_tree(Path(scratch) / "tree", template, source.suite, progress))
            else:
                raise PermanentError(f"cannot make a template from {source.describe()}", reason="BadTemplate")
        _check_contract(image, ref)
        progress(f"importing {image.stat().st_size >> 10} KiB into LXD")
        _remove_leftovers(client, ref)
        fingerprint = _import(client, image)
    try:
        progress(f"creating template instance {instance_name(ref)}")
        client.request("POST", "/1.0/instances", json={
            "name": instance_name(ref), "type": "container", "profiles": [],
            "description": f"Fleet template {ref}",
            "source": {"type": "image", "fingerprint": fingerprint},
            "config": {MARKER: "true", ROLE: "template", TEMPLATE: ref},
            "devices": {"root": {"type": "disk", "path": "/", "pool": pool}},
        })
        client.request("POST", f"/1.0/instances/{instance_name(ref)}/snapshots", json={"name": SNAPSHOT})
    finally:
        _delete_image(client, fingerprint)
    ms = round((time.perf_counter() - started) * 1000, 1)
    logger.bind(template=ref, instance=instance_name(ref), ms=ms).info("Built template")
    progress(f"template {ref} ready")
    return True


def _remove_leftovers(client: LxdClient, ref: str) -> None:
    """What a crashed build of `ref` left: a template instance without its snapshot, Fleet's image of it."""
    leftover = client.instance(instance_name(ref))
    if leftover is not None:
        if leftover.config.get(MARKER) != "true":
            raise PermanentError(f"instance {leftover.name} exists but is not Fleet's", reason="NotOwned")
        if client.exists(f"/1.0/instances/{leftover.name}/snapshots/{SNAPSHOT}"):
            # Committed after all (read again just now): never delete a template tenants are cloned from.
            raise TransientError(f"template {ref} appeared while it was being made; the next pass uses it")
        client.request("DELETE", f"/1.0/instances/{leftover.name}")
    _delete_images_of(client, ref)


def _delete_images_of(client: LxdClient, ref: str) -> None:
    for image in client.get("/1.0/images", recursion=1).metadata or []:
        if (image.get("properties") or {}).get("fleet_ref") == ref:
            _delete_image(client, str(image["fingerprint"]))


def _import(client: LxdClient, image: Path) -> str:
    data = image.read_bytes()
    fingerprint = hashlib.sha256(data).hexdigest()  # LXD's fingerprint of a unified tarball
    with contextlib.suppress(NotFound):  # the same tree imported before and left behind by a crash
        client.get(f"/1.0/images/{fingerprint}")
        return fingerprint
    reply = client.request("POST", "/1.0/images", content=data, headers={"Content-Type": "application/octet-stream"})
    return str((reply.metadata or {}).get("fingerprint") or fingerprint)


def _delete_image(client: LxdClient, fingerprint: str) -> None:
    with contextlib.suppress(NotFound):
        client.request("DELETE", f"/1.0/images/{fingerprint}")


# -- building the image tarball ---------------------------------------------------------------------
def _add_metadata(archive: tarfile.TarFile, template: Template) -> None:
    text = (f"architecture: {os.uname().machine}\ncreation_date: {int(time.time())}\nproperties:\n"
            f"  description: Fleet template {template.ref}\n  os: fleet\n  fleet_ref: \"{template.ref}\"\n")
    member = tarfile.TarInfo("metadata.yaml")
    member.size, member.mtime = len(text.encode()), int(time.time())
    archive.addfile(member, io.BytesIO(text.encode()))


def _add_tree(archive: tarfile.TarFile, tree: Path) -> None:
    archive.add(str(tree), arcname="rootfs", recursive=True)


def _add_tarball(archive: tarfile.TarFile, tarball: Path) -> None:
    """Copy every member of a rootfs tarball under rootfs/, refusing members that would leave the tree."""
    if not tarball.is_file():
        raise PermanentError(f"tarball {tarball} does not exist", reason="BadTemplate")
    try:
        with tarfile.open(tarball) as source:
            for member in source:
                name = os.path.normpath(member.name.lstrip("/")).removeprefix("./")
                if name.startswith("..") or (member.islnk() and os.path.normpath(member.linkname).startswith("..")):
                    raise PermanentError(f"{tarball}: member {member.name!r} leaves the tree", reason="BadTemplate")
                member.name = "rootfs" if name in ("", ".") else f"rootfs/{name}"
                if member.islnk():
                    member.linkname = "rootfs/" + os.path.normpath(member.linkname.lstrip("/")).removeprefix("./")
                archive.addfile(member, source.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, OSError) as error:
        raise PermanentError(f"cannot read {tarball}: {error}", reason="BadTemplate") from error


def _check_contract(image: Path, ref: str) -> None:
    with tarfile.open(image) as archive:
        names = set(archive.getnames())
    if "rootfs/usr" not in names:
        raise PermanentError(f"template {ref} has no /usr", reason="BadTemplate")
    if "rootfs" + INIT_PATH not in names:
        logger.bind(template=ref).warning("Imported template without /fleet/init: its instances will not start")


def _busybox_tree(tree: Path, template: Template, progress: Callable[[str], None]) -> Path:
    tree.mkdir(parents=True, exist_ok=True)
    fill_busybox(tree, template, progress)
    return tree


def _debootstrap_tree(tree: Path, template: Template, suite: str, progress: Callable[[str], None]) -> Path:
    fill_debootstrap(tree, template, suite, progress)
    return tree

"""Templates for the nspawn driver: read-only root filesystems that tenants are cloned from.

A template is the read-only subvolume `templates/<name>@<version>` plus `templates/<name>@<version>.json`
holding its `specs.Template` (defaults for resources and ingress ports, description). Every build is made
under `templates/.tmp-<ref>`, checked, made read-only, its metadata written, then renamed into place: the
rename is the commit, so a crash leaves only a `.tmp-` leftover that the next build deletes.

The template contract (what the runtime half relies on):

- the tree has `/usr` (systemd-nspawn refuses a tree without it) and `/bin/sh`;
- `INIT_PATH` (`/fleet/init`) is an executable that runs the tenant's service in the foreground; the
  runtime starts it with `systemd-nspawn --register=no --keep-unit -D <tenant> --as-pid2 /fleet/init`.
  The built-in template's init serves `/srv/www` with `busybox httpd -f -p 80` (port from
  `FLEET_HTTP_PORT`, default 80) and first writes the container's hostname into the page;
- a tree imported without `/fleet/init` is accepted with a warning; the runtime must then run
  `/bin/sh -c 'exec httpd -f -p 80 -h /srv/www'` itself (and that needs an httpd in the tree).

This module never lets a template name or version reach a shell (tools get argument lists), never writes
outside the pool (every path is checked to resolve under `pool.root`), and never changes a template once it
is committed: a new version is a new template.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from drivers.nspawn_pool import TEMP_PREFIX, TENANT_XATTR, Pool, validate_ref
from drivers.template_tree import INIT_PATH, fill_busybox, fill_debootstrap, static_busybox
from specs import PermanentError, Template

BUILTIN_NAMES = frozenset({"base"})  # templates ensure_builtin can build from nothing but the host's busybox


# -- reading -----------------------------------------------------------------------------------------


def read_template(pool: Pool, ref: str) -> Template | None:
    if not pool.has_template(ref):
        return None
    try:
        return Template.model_validate_json(pool.template_metadata_path(ref).read_text())
    except (OSError, ValueError) as error:
        raise PermanentError(f"template {ref}'s metadata is unreadable: {error}", reason="TemplateBroken") from error


def list_templates(pool: Pool) -> list[Template]:
    templates = []
    for metadata in sorted(pool.templates_dir.glob("*.json")):
        ref = metadata.name.removesuffix(".json")
        if ref.startswith("."):
            continue
        with contextlib.suppress(PermanentError):
            template = read_template(pool, validate_ref(ref))
            if template is not None:
                templates.append(template)
    return templates


# -- building ----------------------------------------------------------------------------------------


def _build(
    pool: Pool,
    template: Template,
    fill: Callable[[Path], None],
    progress: Callable[[str], None],
    *,
    require_init: bool,
) -> bool:
    """Make templates/.tmp-<ref>, fill it, check the contract, make it read-only, commit it. False if present."""
    ref = template.ref
    if pool.has_template(ref):
        return False
    start = time.perf_counter()
    final = pool.template_path(ref)
    if os.path.lexists(final):
        # Fleet writes the metadata before renaming the subvolume into place, so this is not Fleet's.
        raise PermanentError(f"{final} exists without metadata: not Fleet's, remove it by hand", reason="NotOwned")
    building = pool.inside(pool.templates_dir / f"{TEMP_PREFIX}{ref}")
    pool.remove_subvolume(building)
    progress(f"creating {pool.templates_dir.name}/{building.name}")
    btrfs.create_subvolume(pool.templates_dir, building.name)
    fill(building)
    _check_contract(building, ref, require_init=require_init)
    with contextlib.suppress(OSError):  # a copied tree must not pass for a tenant
        os.removexattr(building, TENANT_XATTR, follow_symlinks=False)
    progress("making it read-only")
    btrfs.set_read_only(building)
    metadata = pool.template_metadata_path(ref)
    staged = metadata.with_name(f"{TEMP_PREFIX}{metadata.name}")
    staged.write_text(template.model_dump_json(indent=2) + "\n")
    os.rename(staged, metadata)  # metadata before the subvolume: a committed subvolume always has it
    os.rename(building, final)
    logger.bind(template=ref, ms=round((time.perf_counter() - start) * 1000, 1)).info("Built template")
    progress(f"template {ref} ready")
    return True


def _check_contract(tree: Path, ref: str, *, require_init: bool) -> None:
    if not (tree / "usr").is_dir():
        raise PermanentError(f"template {ref} has no /usr: systemd-nspawn refuses such a tree", reason="BadTemplate")
    init = tree / INIT_PATH.lstrip("/")
    has_init = os.path.lexists(init)
    if require_init and not has_init:
        raise PermanentError(f"template {ref} has no {INIT_PATH}", reason="BadTemplate")
    if not has_init:
        logger.bind(template=ref).warning("Imported template without /fleet/init: the runtime must start httpd")


def import_rootfs(pool: Pool, template: Template, rootfs: Path) -> bool:
    """Copy a root filesystem directory in (reflinks where the source is on the same btrfs)."""
    source = rootfs.resolve()
    if not source.is_dir():
        raise PermanentError(f"rootfs {rootfs} is not a directory", reason="BadTemplate")

    def fill(tree: Path) -> None:
        btrfs.run_cli(
            ["cp", "-a", "--reflink=auto", "--no-target-directory", f"{source}/.", str(tree)],
            f"copy {source} into template {template.ref}",
            timeout=3600,
        )

    return _build(pool, template, fill, lambda _: None, require_init=False)


def import_tarball(pool: Pool, template: Template, tarball: Path) -> bool:
    """Extract a root filesystem tarball (any compression tarfile reads); members may not escape the tree."""
    if not tarball.is_file():
        raise PermanentError(f"tarball {tarball} does not exist", reason="BadTemplate")

    def fill(tree: Path) -> None:
        try:
            with tarfile.open(tarball) as archive:
                # The "tar" filter refuses absolute member paths and any member that would land outside
                # the tree (through "..", or a symlink extracted earlier); it keeps devices and owners.
                archive.extractall(tree, numeric_owner=True, filter="tar")
        except (tarfile.TarError, OSError) as error:
            raise PermanentError(f"cannot extract {tarball}: {error}", reason="BadTemplate") from error

    return _build(pool, template, fill, lambda _: None, require_init=False)


def build_busybox(pool: Pool, template: Template, progress: Callable[[str], None] = lambda s: None) -> bool:
    """The built-in template: a static busybox, its applets as symlinks, a web page and /fleet/init."""
    static_busybox()  # refused before a subvolume is made

    def fill(tree: Path) -> None:
        fill_busybox(tree, template, progress)

    return _build(pool, template, fill, progress, require_init=True)


def build_debootstrap(
    pool: Pool, template: Template, suite: str, progress: Callable[[str], None] = lambda s: None
) -> bool:
    """A Debian template with debootstrap (minbase), plus /fleet/init and a static busybox for its httpd."""

    def fill(tree: Path) -> None:
        fill_debootstrap(tree, template, suite, progress)

    return _build(pool, template, fill, progress, require_init=True)


def ensure_builtin(pool: Pool, template: Template) -> bool:
    """Build a built-in template (busybox) if it is missing. True if it was built now."""
    if pool.has_template(template.ref):
        return False
    if template.name not in BUILTIN_NAMES:
        raise PermanentError(
            f"template {template.ref} is not in the pool and is not built in ({', '.join(sorted(BUILTIN_NAMES))}):"
            " import it first",
            reason="TemplateMissing",
        )
    build_busybox(pool, template)
    return True


def delete_template(pool: Pool, ref: str) -> None:
    """Delete a template and its metadata. Refused while a tenant (or a clone in progress) came from it."""
    validate_ref(ref)
    users = [tenant for tenant in pool.list_tenants() if pool.template_of(tenant) == ref]
    users += [
        entry.name
        for entry in os.scandir(pool.tenants_dir)
        if entry.name.startswith(TEMP_PREFIX) and _cloned_from(Path(entry.path)) == ref
    ]
    if users:
        raise PermanentError(
            f"template {ref} is in use by tenants: {', '.join(sorted(users))}; delete them first", reason="InUse"
        )
    removed = pool.remove_subvolume(pool.template_path(ref))
    metadata = pool.template_metadata_path(ref)
    if metadata.exists():
        metadata.unlink()  # after the subvolume: metadata without a subvolume is not a template
        removed.append(f"file templates/{metadata.name}")
    if removed:
        logger.bind(template=ref, removed=removed).info("Deleted template")


# -- helpers -----------------------------------------------------------------------------------------


def _cloned_from(path: Path) -> str | None:
    try:
        marker = json.loads(os.getxattr(path, TENANT_XATTR, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    template = marker.get("template") if isinstance(marker, dict) else None
    return template if isinstance(template, str) else None

"""The nspawn driver's btrfs pool: where templates live and tenants are cloned, quota'd and deleted.

Layout (all under `Pool.root`, a btrfs filesystem or a directory on one):

    .fleet-owned                 marker: this tree is Fleet's; nothing outside it is ever touched
    .fleet-deleting/             tombstones: subvolumes deleted whose qgroups the cleaner still holds
    templates/<name>@<version>   read-only subvolume (see nspawn_templates)
    templates/<name>@<version>.json   its specs.Template
    tenants/<tenant>             writable snapshot of a template, owned by Fleet through an xattr marker
    tenants/.tmp-<tenant>        a clone being made; never a tenant, deleted on sight

A clone is snapshot -> the tenant's level-1 qgroup with the limit -> marker -> rename, so a crash at any
point leaves either a `.tmp-` leftover (deleted by the next clone or `cleanup_half_made`) or a complete
tenant. The marker (a trusted.* xattr, which a tenant's root cannot write) names the tenant, its template
and its user namespace range (`nspawn_userns`), allocated under the pool lock so no two tenants share one.

Disk quota: a level-1 qgroup per tenant that nested subvolumes cannot leave (`nspawn_quota`). Quotas are
btrfs simple quotas (squota) where the kernel has them: classic qgroups make every snapshot ~10x slower
and do not enrol nested subvolumes (docs/nspawn-storage.md).

The pool is mounted nosuid,nodev (`nspawn_image`): nothing a tenant writes as its root may become a
set-uid program or a device node on the host. Deletes: `nspawn_removal`.

This module must never delete or change anything that does not carry Fleet's marker (an unmarked
directory under tenants/ is refused, not removed), never build a path outside the pool from a name, and
never let a name reach a shell. Names arrive validated (DNS labels, template refs) and are checked again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_files, nspawn_userns
from drivers import nspawn_image as pool_image
from drivers.nspawn_files import write_atomic
from drivers.nspawn_quota import TenantQuota
from drivers.nspawn_removal import SubvolumeRemoval
from drivers.reverter import Reverter
from specs import NotFound, PermanentError, TransientError, validate_name

OWNED_MARKER = ".fleet-owned"
LOCK_FILE = ".fleet-lock"  # flock'd while a clone allocates a user namespace range
TENANT_XATTR = "trusted.fleet.tenant"  # trusted.*: a tenant's root in a user namespace cannot forge or drop it
TEMP_PREFIX = nspawn_files.TEMP_PREFIX
_REF = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?@[a-z0-9][a-z0-9._-]{0,31}$")
QGROUP_RELEASE_SECONDS = 10.0  # how long a delete waits for the cleaner to let go of a qgroup


def validate_ref(ref: str) -> str:
    """A template reference `name@version`, the same rule as specs.Template; safe as a path component."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise PermanentError(f"invalid template reference {ref!r}: must be name@version", reason="InvalidTemplate")
    return ref


def _validate_tenant(tenant: str) -> str:
    try:
        return validate_name(tenant)
    except ValueError as error:
        raise PermanentError(f"invalid tenant name {tenant!r}: {error}", reason="InvalidName") from error


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


class Pool(TenantQuota, SubvolumeRemoval):
    """A btrfs pool; open it with `Pool.open`. Methods are idempotent and safe to repeat after a crash."""

    root: Path

    def __init__(
        self, root: Path, *, fs_uuid: str, quota_mode: str, image: Path | None = None, mountpoint: Path | None = None
    ) -> None:
        self.root = root
        self.fs_uuid = fs_uuid
        self.quota_mode = quota_mode  # "squota" or "qgroup"
        self.image = image  # set when the pool is a loop-backed image this class manages
        self.mountpoint = mountpoint
        self.qgroup_release_seconds = QGROUP_RELEASE_SECONDS
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive within the process and across processes sharing the pool (an agent and a CLI)."""
        with self._lock, open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # -- opening and closing ---------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path, *, pool_path: Path | None = None, image_size: int = 20 << 30) -> Pool:
        """Use the btrfs fs at pool_path, or create/re-attach a loop-backed image data_dir/pool.img mounted
        at data_dir/pool. Enables simple quotas once (classic qgroups if the kernel has no squota).
        Creates root/templates, root/tenants and the root/.fleet-owned marker."""
        if os.geteuid() != 0:
            raise PermanentError("not root: the nspawn pool needs root (CAP_SYS_ADMIN)", reason="NotRoot")
        start = time.perf_counter()
        image: Path | None = None
        mountpoint: Path | None = None
        if pool_path is not None:
            root = pool_path.resolve()
            root.mkdir(parents=True, exist_ok=True)
            btrfs.filesystem_uuid(root)  # refuses what is not btrfs before anything is mounted over it
            pool_image.secure_mount(root)
        else:
            btrfs.require_tools("mkfs.btrfs", "losetup", "mount", "umount", "btrfs")
            if not Path("/dev/loop-control").exists():
                raise PermanentError(
                    "no loop devices (/dev/loop-control missing): modprobe loop, or give a btrfs pool_path",
                    reason="NoLoopDevice",
                )
            data_dir = data_dir.resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
            image, mountpoint = data_dir / "pool.img", data_dir / "pool"
            pool_image.attach_image(image, mountpoint, image_size)
            root = mountpoint
        fs_uuid = btrfs.filesystem_uuid(root)
        mode = btrfs.quota_mode(fs_uuid)
        if mode is None:
            try:
                btrfs.enable_simple_quota(root)
            except PermanentError as error:
                logger.bind(pool=str(root), error=str(error)).warning("Fell back to classic qgroups")
                btrfs.enable_classic_quota(root)
            mode = pool_image.wait_for(lambda: btrfs.quota_mode(fs_uuid), 5.0, "quotas to come on")
        pool = cls(root, fs_uuid=fs_uuid, quota_mode=mode, image=image, mountpoint=mountpoint)
        for directory in (pool.templates_dir, pool.tenants_dir, pool.deleting_dir):
            directory.mkdir(exist_ok=True)
        marker = root / OWNED_MARKER
        if not marker.exists():
            write_atomic(marker, json.dumps({"owner": "fleet", "layout": 1}) + "\n")
        logger.bind(pool=str(root), quota=mode, ms=_ms_since(start)).info("Opened pool")
        return pool

    def close(self) -> None:
        """Nothing is held open between calls: every operation opens and closes its own descriptors."""

    def detach(self) -> None:
        """Unmount and detach the loop device of an image-backed pool (tests, decommissioning).

        A pool given as pool_path belongs to the operator and is left mounted."""
        if self.image is None or self.mountpoint is None:
            return
        if pool_image.is_mountpoint(self.mountpoint):
            btrfs.run_cli(["umount", str(self.mountpoint)], f"unmount {self.mountpoint}")
        for device in pool_image.loops_backing(self.image):
            btrfs.run_cli(["losetup", "-d", device], f"detach {device}")
        image = self.image
        pool_image.wait_for(lambda: not pool_image.loops_backing(image), 10.0, f"loop devices of {image} to go")
        logger.bind(pool=str(self.root)).info("Detached pool")

    # -- layout ----------------------------------------------------------------------------------
    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def tenants_dir(self) -> Path:
        return self.root / "tenants"

    def inside(self, path: Path) -> Path:
        """`path`, after checking it resolves to a place under the pool root (a name can never escape)."""
        resolved = path.parent.resolve() / path.name
        if resolved.parent != self.root and self.root not in resolved.parents:
            raise PermanentError(f"{path} is outside the pool {self.root}", reason="OutsidePool")
        return resolved

    def tenant_path(self, tenant: str) -> Path:
        return self.inside(self.tenants_dir / _validate_tenant(tenant))

    def template_path(self, ref: str) -> Path:
        return self.inside(self.templates_dir / validate_ref(ref))

    def template_metadata_path(self, ref: str) -> Path:
        return self.inside(self.templates_dir / f"{validate_ref(ref)}.json")

    def has_template(self, ref: str) -> bool:
        """Complete templates only: the read-only subvolume is renamed into place after its metadata."""
        return btrfs.is_subvolume(self.template_path(ref)) and self.template_metadata_path(ref).is_file()

    # -- tenants ---------------------------------------------------------------------------------
    def tenant_exists(self, tenant: str) -> bool:
        path = self.tenant_path(tenant)
        return btrfs.is_subvolume(path) and self._marker(path).get("tenant") == tenant

    def list_tenants(self) -> list[str]:
        names = []
        for entry in os.scandir(self.tenants_dir):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(PermanentError):
                if self.tenant_exists(entry.name):
                    names.append(entry.name)
        return sorted(names)

    def clone(self, tenant: str, template_ref: str, *, disk_limit: int | None = None) -> None:
        """Snapshot the template to tenants/.tmp-<tenant>, limit it, mark it, rename it to tenants/<tenant>.

        Idempotent: an existing tenant is left as it is; a leftover .tmp- from a crash is deleted first."""
        start = time.perf_counter()
        final = self.tenant_path(tenant)
        if os.path.lexists(final):
            if self.tenant_exists(tenant):
                return
            raise PermanentError(
                f"{final} exists but is not a Fleet tenant: move it away by hand", reason="NotOwned"
            )
        if not self.has_template(template_ref):
            raise PermanentError(f"template {template_ref} is not in the pool", reason="TemplateMissing")
        temporary = self.inside(self.tenants_dir / f"{TEMP_PREFIX}{tenant}")
        if os.path.lexists(temporary):
            self._remove_subvolume(temporary)
        with Reverter() as revert:  # a failed step takes the half-made clone (and its qgroups) with it
            btrfs.snapshot(self.template_path(template_ref), self.tenants_dir, temporary.name)
            revert.add(f"remove {temporary.name}", lambda: self.remove_subvolume(temporary))
            self._ensure_group(temporary, disk_limit)
            with self._locked():  # from reading the ranges in use until the marker names this one
                uid_base = nspawn_userns.allocate(self._uid_bases())
                marker = {"tenant": tenant, "template": template_ref, "created": time.time(), "uid_base": uid_base}
                try:
                    os.setxattr(temporary, TENANT_XATTR, json.dumps(marker).encode(), follow_symlinks=False)
                    os.rename(temporary, final)
                except OSError as error:
                    if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise TransientError(f"{final} appeared while being cloned", reason="Conflict") from error
                    raise btrfs.map_os_error(error, f"finish clone of {tenant}") from error
            revert.success()
        logger.bind(
            tenant=tenant, template=template_ref, disk_limit=disk_limit, uid_base=uid_base, ms=_ms_since(start)
        ).info("Cloned tenant")

    # -- user namespaces and the tenant's qgroup ----------------------------------------------------
    def _uid_bases(self) -> set[int]:
        """Ranges named by any marker under tenants/ (complete tenants and clones being made).

        Read on every clone, so as lean as it can be (no Path, no stat; an entry without a marker is
        skipped): ~35 us a tenant before, ~12 us now, 2.5 ms at 200 tenants."""
        bases = set()
        with os.scandir(self.tenants_dir) as entries:
            for entry in entries:
                try:
                    marker = json.loads(os.getxattr(entry.path, TENANT_XATTR, follow_symlinks=False))
                except (OSError, ValueError):
                    continue
                base = marker.get("uid_base") if isinstance(marker, dict) else None
                if isinstance(base, int):
                    bases.add(base)
        return bases

    def uid_base(self, tenant: str) -> int:
        """The tenant's user namespace range; a tenant cloned by an older Fleet gets one now (once)."""
        path = self.tenant_path(tenant)
        if not self.tenant_exists(tenant):
            raise NotFound(f"tenant {tenant} has no subvolume in the pool")
        base = self._marker(path).get("uid_base")
        if base is not None:
            return nspawn_userns.check_base(base)  # type: ignore[arg-type]
        with self._locked():
            marker = self._marker(path)
            if marker.get("uid_base") is None:
                marker["uid_base"] = nspawn_userns.allocate(self._uid_bases())
                try:
                    os.setxattr(path, TENANT_XATTR, json.dumps(marker).encode(), follow_symlinks=False)
                except OSError as error:
                    raise btrfs.map_os_error(error, f"record the user namespace of {tenant}") from error
                logger.bind(tenant=tenant, uid_base=marker["uid_base"]).info("Assigned user namespace range")
            return nspawn_userns.check_base(marker["uid_base"])  # type: ignore[arg-type]

    def recorded_uid_base(self, tenant: str) -> int | None:
        """The range the marker names, without assigning one."""
        base = self._marker(self.tenant_path(tenant)).get("uid_base")
        return base if isinstance(base, int) else None

    def template_of(self, tenant: str) -> str | None:
        path = self.tenant_path(tenant)
        if not btrfs.is_subvolume(path):
            return None
        template = self._marker(path).get("template")
        return template if isinstance(template, str) else None

    def block_devices(self) -> list[str]:
        """"MAJ:MIN" of every block device under the pool (what an I/O bandwidth limit throttles)."""
        devices = []
        for entry in sorted(Path(f"/sys/fs/btrfs/{self.fs_uuid}/devices").glob("*")):
            with contextlib.suppress(OSError):
                devices.append((entry / "dev").read_text().strip())
        return devices

    def delete_tenant(self, tenant: str) -> list[str]:
        """Delete tenants/<tenant> (and a .tmp- leftover) with their qgroups; verify; say what went.

        Refuses (PermanentError) to touch tenants/<tenant> when it does not carry Fleet's marker."""
        start = time.perf_counter()
        final = self.tenant_path(tenant)
        removed: list[str] = []
        if os.path.lexists(final):
            if not self.tenant_exists(tenant):
                raise PermanentError(
                    f"{final} does not carry Fleet's marker: left alone, remove it by hand", reason="NotOwned"
                )
            removed += self._remove_subvolume(final)
        temporary = self.inside(self.tenants_dir / f"{TEMP_PREFIX}{tenant}")
        if os.path.lexists(temporary):
            removed += self._remove_subvolume(temporary)
        for path in (final, temporary):
            removed += self._finish_tombstone(path)
        if os.path.lexists(final) or os.path.lexists(temporary):
            raise TransientError(f"tenant {tenant}'s subvolume is still there after delete", reason="NotGone")
        if removed:
            logger.bind(tenant=tenant, removed=removed, ms=_ms_since(start)).info("Deleted tenant storage")
        return removed

    def cleanup_half_made(self) -> list[str]:
        """Remove every .tmp- leftover (tenants and templates), finish interrupted deletes, drop orphan
        template metadata. Returns what it removed.

        Call it when no clone or build is running (agent start): a `.tmp-` being made right now would go."""
        removed: list[str] = []
        for directory in (self.tenants_dir, self.templates_dir):
            for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                if entry.name.startswith(TEMP_PREFIX):
                    path = self.inside(Path(entry.path))
                    if entry.is_dir(follow_symlinks=False):
                        removed += self._remove_subvolume(path)
                    else:
                        path.unlink()
                        removed.append(f"file {self._relative(path)}")
        for tombstone in sorted(self.deleting_dir.glob("[!.]*.json")):
            removed += self._finish_tombstone(self.root / json.loads(tombstone.read_text())["path"])
        for metadata in sorted(self.templates_dir.glob("*.json")):
            if not metadata.name.startswith(".") and not btrfs.is_subvolume(metadata.with_name(metadata.stem)):
                metadata.unlink()
                removed.append(f"file {self._relative(metadata)}")
        if removed:
            logger.bind(pool=str(self.root), removed=removed).info("Cleaned half-made parts")
        return removed

    def disk_shared(self) -> int | None:
        """Template bytes the tenants refer to without a copy of their own: each template's size (the
        referenced bytes of its qgroup, all of its extents, since the template wrote them) times the tenants
        cloned from it, by their markers. An upper bound: a tenant's rewrite of a template file is charged to
        the tenant (its exclusive bytes) but still counted here, because neither quota mode says per extent
        who still shares it; finding out would mean walking every extent of every tenant. None when quotas
        are off: a template's size would then take a walk of its whole tree."""
        if btrfs.quota_mode(self.fs_uuid) is None:
            return None
        clones: Counter[str] = Counter()
        with os.scandir(self.tenants_dir) as entries:  # one xattr read a tenant, as `_uid_bases`
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                marker = self._marker(Path(entry.path))
                template = marker.get("template")
                if marker.get("tenant") == entry.name and isinstance(template, str):
                    clones[template] += 1
        shared = 0
        for ref, count in clones.items():
            with contextlib.suppress(NotFound, PermanentError):  # a template deleted by hand counts nothing
                template = btrfs.read_qgroup(self.fs_uuid, btrfs.subvolume_id(self.template_path(ref)))
                shared += count * template.referenced
        return shared

    def space(self) -> tuple[int, int]:
        """(total, available) bytes of the filesystem, for capacity reports."""
        stat = os.statvfs(self.root)
        return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize

    def _marker(self, path: Path) -> dict[str, object]:
        try:
            raw = os.getxattr(path, TENANT_XATTR, follow_symlinks=False)
        except OSError:
            return {}
        try:
            marker = json.loads(raw)
        except ValueError:
            return {}
        return marker if isinstance(marker, dict) else {}

    def _tenant_subvolume(self, tenant: str) -> int:
        if not self.tenant_exists(tenant):
            raise NotFound(f"tenant {tenant} has no subvolume in the pool")
        return btrfs.subvolume_id(self.tenant_path(tenant))


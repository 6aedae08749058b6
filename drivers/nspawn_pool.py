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

Disk quota: the limit sits on a level-1 qgroup `1/<subvolume id>` that the tenant's subvolume belongs to.
Under simple quotas every subvolume made inside the tenant joins that group by itself, so nested
subvolumes are counted and limited with the tenant (the tenant seccomp filter refuses the only ioctls
that could opt out). Quotas are btrfs simple quotas (squota) where the kernel has them: classic qgroups
make every snapshot ~10x slower and do not enrol nested subvolumes (docs/nspawn-storage.md).

The pool is mounted nosuid,nodev: tenants write files as root of their own namespace, and nothing they
write may become a set-uid program or a device node on the host.

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
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_subvolumes as subvolumes
from drivers import nspawn_userns
from specs import NotFound, PermanentError, TransientError, validate_name

OWNED_MARKER = ".fleet-owned"
LOCK_FILE = ".fleet-lock"  # flock'd while a clone allocates a user namespace range
MOUNT_FLAGS = ("nosuid", "nodev")
TENANT_XATTR = "trusted.fleet.tenant"  # trusted.*: a tenant's root in a user namespace cannot forge or drop it
TEMP_PREFIX = ".tmp-"
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


class Pool:
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
            _secure_mount(root)
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
            _attach_image(image, mountpoint, image_size)
            root = mountpoint
        fs_uuid = btrfs.filesystem_uuid(root)
        mode = btrfs.quota_mode(fs_uuid)
        if mode is None:
            try:
                btrfs.enable_simple_quota(root)
            except PermanentError as error:
                logger.bind(pool=str(root), error=str(error)).warning("Fell back to classic qgroups")
                btrfs.enable_classic_quota(root)
            mode = _wait_for(lambda: btrfs.quota_mode(fs_uuid), 5.0, "quotas to come on")
        pool = cls(root, fs_uuid=fs_uuid, quota_mode=mode, image=image, mountpoint=mountpoint)
        for directory in (pool.templates_dir, pool.tenants_dir, pool.deleting_dir):
            directory.mkdir(exist_ok=True)
        marker = root / OWNED_MARKER
        if not marker.exists():
            _write_atomic(marker, json.dumps({"owner": "fleet", "layout": 1}) + "\n")
        logger.bind(pool=str(root), quota=mode, ms=_ms_since(start)).info("Opened pool")
        return pool

    def close(self) -> None:
        """Nothing is held open between calls: every operation opens and closes its own descriptors."""

    def detach(self) -> None:
        """Unmount and detach the loop device of an image-backed pool (tests, decommissioning).

        A pool given as pool_path belongs to the operator and is left mounted."""
        if self.image is None or self.mountpoint is None:
            return
        if _is_mountpoint(self.mountpoint):
            btrfs.run_cli(["umount", str(self.mountpoint)], f"unmount {self.mountpoint}")
        for device in _loops_backing(self.image):
            btrfs.run_cli(["losetup", "-d", device], f"detach {device}")
        image = self.image
        _wait_for(lambda: not _loops_backing(image), 10.0, f"loop devices of {image} to go")
        logger.bind(pool=str(self.root)).info("Detached pool")

    # -- layout ----------------------------------------------------------------------------------
    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def tenants_dir(self) -> Path:
        return self.root / "tenants"

    @property
    def deleting_dir(self) -> Path:
        return self.root / ".fleet-deleting"

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
        btrfs.snapshot(self.template_path(template_ref), self.tenants_dir, temporary.name)
        self._ensure_group(temporary, disk_limit)
        with self._locked():  # from reading the ranges in use until the marker names this one
            uid_base = nspawn_userns.allocate(self._uid_bases())
            marker = {"tenant": tenant, "template": template_ref, "created": time.time(), "uid_base": uid_base}
            try:
                os.setxattr(temporary, TENANT_XATTR, json.dumps(marker).encode(), follow_symlinks=False)
                os.rename(temporary, final)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise TransientError(f"{final} appeared while it was being cloned", reason="Conflict") from error
                raise btrfs.map_os_error(error, f"finish clone of {tenant}") from error
        logger.bind(
            tenant=tenant, template=template_ref, disk_limit=disk_limit, uid_base=uid_base, ms=_ms_since(start)
        ).info("Cloned tenant")

    # -- user namespaces and the tenant's qgroup ----------------------------------------------------
    def _uid_bases(self) -> set[int]:
        """Ranges named by any marker under tenants/ (complete tenants and clones being made)."""
        bases = set()
        for entry in os.scandir(self.tenants_dir):
            if entry.is_dir(follow_symlinks=False):
                base = self._marker(Path(entry.path)).get("uid_base")
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

    def ensure_group(self, tenant: str) -> None:
        """Give a tenant cloned by an older Fleet its level-1 qgroup, moving its limit there (once)."""
        subvolume = self._tenant_subvolume(tenant)
        if not btrfs.qgroup_exists(self.fs_uuid, btrfs.qgroup_id(1, subvolume)):
            self._ensure_group(self.tenant_path(tenant), btrfs.read_qgroup(self.fs_uuid, subvolume).max_exclusive)

    def _ensure_group(self, path: Path, limit_bytes: int | None) -> int:
        """The subvolume's level-1 qgroup `1/<id>`, its member, carrying the limit; idempotent. A tenant
        cloned by an older Fleet had its limit on `0/<id>`: that one is cleared, the group carries it."""
        subvolume = btrfs.subvolume_id(path)
        group = btrfs.qgroup_id(1, subvolume)
        btrfs.create_qgroup(self.root, group)
        btrfs.assign_qgroup(self.root, subvolume, group)
        btrfs.set_exclusive_limit(self.root, group, limit_bytes)
        if btrfs.read_qgroup(self.fs_uuid, subvolume).max_exclusive is not None:
            btrfs.set_exclusive_limit(self.root, subvolume, None)
        return group

    def template_of(self, tenant: str) -> str | None:
        path = self.tenant_path(tenant)
        if not btrfs.is_subvolume(path):
            return None
        template = self._marker(path).get("template")
        return template if isinstance(template, str) else None

    def set_disk_limit(self, tenant: str, limit_bytes: int | None) -> None:
        """Limit the exclusive bytes of the tenant and every subvolume inside it (its level-1 qgroup).
        Set through the pool root, so it works when already over."""
        self._tenant_subvolume(tenant)
        group = self._ensure_group(self.tenant_path(tenant), limit_bytes)
        logger.bind(tenant=tenant, limit=limit_bytes, qgroup=btrfs.qgroup_name(group)).info("Set disk limit")

    @contextlib.contextmanager
    def limit_lifted(self, tenant: str) -> Iterator[None]:
        """Without the tenant's disk limit for a moment: btrfs refuses even a truncate (a transaction charged
        to the group) once the group is at its limit, and Fleet must be able to trim what it keeps there."""
        limit = self.disk_limit(tenant)
        self.set_disk_limit(tenant, None)
        try:
            yield
        finally:
            self.set_disk_limit(tenant, limit)

    def clear_disk_limit(self, tenant: str) -> None:
        self.set_disk_limit(tenant, None)

    def _group_info(self, tenant: str) -> btrfs.QgroupInfo:
        subvolume = self._tenant_subvolume(tenant)
        try:
            return btrfs.read_qgroup(self.fs_uuid, btrfs.qgroup_id(1, subvolume))
        except NotFound:  # cloned by an older Fleet and not yet converted: its own qgroup is all there is
            return btrfs.read_qgroup(self.fs_uuid, subvolume)

    def disk_limit(self, tenant: str) -> int | None:
        return self._group_info(tenant).max_exclusive

    def disk_usage(self, tenant: str) -> int:
        """Exclusive bytes of the tenant and of every subvolume it made inside its own."""
        return self._group_info(tenant).exclusive

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

    def space(self) -> tuple[int, int]:
        """(total, available) bytes of the filesystem, for capacity reports."""
        stat = os.statvfs(self.root)
        return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize

    # -- removal, shared with nspawn_templates ----------------------------------------------------
    def remove_subvolume(self, path: Path) -> list[str]:
        """Delete a subvolume inside the pool (and any nested ones) and its qgroups, verified gone.

        For Fleet's own callers that have already checked ownership (templates, .tmp- leftovers)."""
        path = self.inside(path)
        removed = self._remove_subvolume(path) if os.path.lexists(path) else []
        return removed + self._finish_tombstone(path)

    def _remove_subvolume(self, path: Path) -> list[str]:
        if not btrfs.is_subvolume(path):
            raise PermanentError(
                f"{path} is not a subvolume Fleet made: left alone, remove it by hand", reason="NotOwned"
            )
        # The tombstone remembers the qgroup ids: once the subvolume is gone nothing else names them.
        tombstone = self._tombstone(path)
        subvolume = btrfs.subvolume_id(path)
        # Level-0 groups first, the tenant's level-1 group (templates have none) last: it can go once its
        # members have.
        group = btrfs.qgroup_id(1, subvolume)
        qgroups = [subvolume, group] if btrfs.qgroup_exists(self.fs_uuid, group) else [subvolume]
        # A delete interrupted half way named nested groups that are gone from the tree by now: keep them.
        qgroups = [q for q in self._tombstone_qgroups(tombstone) if q not in qgroups] + qgroups
        _write_atomic(tombstone, json.dumps({"path": self._relative(path), "qgroups": qgroups}) + "\n")
        # Deleting a subvolume is a transaction charged to its groups: one at its limit refuses its own
        # deletion with EDQUOT. It is going, so its limits go first.
        for qgroup in qgroups:
            if btrfs.qgroup_exists(self.fs_uuid, qgroup):
                btrfs.set_exclusive_limit(self.root, qgroup, None)
        btrfs.clear_immutable(path)  # set by a tenant of an older Fleet, which ran it with CAP_LINUX_IMMUTABLE
        try:
            btrfs.destroy_subvolume(path.parent, path.name)
            return [f"subvolume {self._relative(path)}"]
        except PermanentError as error:
            if error.reason != "NestedSubvolumes":
                raise
        # A tenant made subvolumes inside its own; btrfs deletes children first. Found by id in the root
        # tree and deleted through file handles, never by path: a tenant shapes its tree, and one nested
        # deeper than PATH_MAX would otherwise make its delete fail forever (nspawn_subvolumes).
        with btrfs.open_dir(self.root) as pool_fd:
            nested = subvolumes.descendants(pool_fd, subvolume)
            qgroups = [c.subvolume for c in reversed(nested) if c.subvolume not in qgroups] + qgroups
            _write_atomic(tombstone, json.dumps({"path": self._relative(path), "qgroups": qgroups}) + "\n")
            for child in reversed(nested):  # deepest first
                subvolumes.destroy(pool_fd, child)
        btrfs.destroy_subvolume(path.parent, path.name)
        gone = [f"nested subvolume {c.name.decode(errors='replace')!r} (id {c.subvolume})" for c in reversed(nested)]
        return [*gone, f"subvolume {self._relative(path)}"]

    def _finish_tombstone(self, path: Path) -> list[str]:
        tombstone = self._tombstone(path)
        if not tombstone.exists():
            return []
        if os.path.lexists(path):
            raise TransientError(f"{path} is being deleted but still exists", reason="NotGone")
        qgroups: list[int] = json.loads(tombstone.read_text())["qgroups"]
        btrfs.sync(self.root)  # commits the deletion so the cleaner starts dropping it now
        deadline = time.monotonic() + self.qgroup_release_seconds
        pending = list(qgroups)
        while pending:
            for qgroup in list(pending):
                if self._release_qgroup(qgroup):
                    pending.remove(qgroup)
            if pending and time.monotonic() > deadline:
                raise TransientError(
                    f"qgroups {', '.join(f'0/{q}' for q in pending)} of {self._relative(path)} are still held "
                    "by the btrfs cleaner; the delete finishes on a later pass",
                    reason="QgroupBusy",
                )
            if pending:
                time.sleep(0.02)  # polling the kernel's cleaner: there is no event to wait on
        tombstone.unlink()
        return [f"qgroup {btrfs.qgroup_name(q)}" for q in qgroups]

    def _release_qgroup(self, qgroup: int) -> bool:
        """True when qgroup 0/<id> is gone (the kernel drops it itself once the subvolume is cleaned)."""
        if not btrfs.qgroup_exists(self.fs_uuid, qgroup):
            return True
        try:
            btrfs.destroy_qgroup(self.root, qgroup)
        except NotFound:
            return True
        except (TransientError, PermanentError):
            return False  # EBUSY (still in use) or EINVAL (usage not yet zero): the cleaner is not done
        return not btrfs.qgroup_exists(self.fs_uuid, qgroup)

    def _tombstone_qgroups(self, tombstone: Path) -> list[int]:
        try:
            return list(json.loads(tombstone.read_text())["qgroups"])
        except (OSError, ValueError, KeyError):
            return []

    def _tombstone(self, path: Path) -> Path:
        return self.deleting_dir / (self._relative(path).replace("/", "--") + ".json")

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

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


# -- helpers ----------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f"{TEMP_PREFIX}{path.name}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)


def _wait_for(check: Callable[[], object], seconds: float, what: str) -> str:
    """Poll `check` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return str(value)
        if time.monotonic() > deadline:
            raise TransientError(f"timed out after {seconds:.0f} s waiting for {what}", reason="Timeout")
        time.sleep(0.01)


def _mounts() -> Iterator[tuple[str, str, str]]:
    """(mount point, filesystem type, source) from this process's mount table."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            mount_point = fields[4].encode().decode("unicode_escape")
            yield mount_point, fields[separator + 1], fields[separator + 2]


def _mount_options(path: Path) -> tuple[str, set[str]] | None:
    """(mount point, per-mount options) of the mount `path` is on: the longest mount point above it."""
    best: tuple[str, set[str]] | None = None
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) >= len(best[0])
            ):
                best = (point, set(fields[5].split(",")))
    return best


def _secure_mount(root: Path) -> None:
    """Make the mount under the pool nosuid,nodev: remount it if it is the pool's own, else bind the pool
    onto itself first so other users of that filesystem keep their options."""
    found = _mount_options(root)
    if found is None or set(MOUNT_FLAGS) <= found[1]:
        return
    if found[0] != str(root):
        btrfs.run_cli(["mount", "--bind", str(root), str(root)], f"bind {root} for nosuid,nodev")
    options = ",".join(("remount", "bind", *MOUNT_FLAGS))
    btrfs.run_cli(["mount", "-o", options, str(root)], f"remount {root} nosuid,nodev")
    logger.bind(pool=str(root)).info("Remounted pool nosuid,nodev")


def _is_mountpoint(path: Path) -> bool:
    return any(point == str(path) for point, _type, _source in _mounts())


def _loops_backing(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (read from sysfs: no fork, and survives our restarts)."""
    devices = []
    for backing in sorted(Path("/sys/block").glob("loop*/loop/backing_file")):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == str(image):
                devices.append(f"/dev/{backing.parent.parent.name}")
    return devices


def _attach_image(image: Path, mountpoint: Path, image_size: int) -> None:
    """Create the image once, attach it to a loop device unless one already backs it, mount it."""
    if any(point == str(mountpoint) and kind == "btrfs" for point, kind, _source in _mounts()):
        _secure_mount(mountpoint)  # mounted by an older Fleet, perhaps without nosuid,nodev
        return
    if not image.exists():
        building = image.with_name(f"{TEMP_PREFIX}{image.name}")
        with open(building, "wb") as handle:
            handle.truncate(image_size)  # sparse: blocks are used as the pool fills
        argv = ["mkfs.btrfs", "-f", "-q", "-m", "single", "-L", "fleet-pool", str(building)]
        btrfs.run_cli(argv, f"format {building}")
        os.rename(building, image)
    devices = _loops_backing(image)
    if devices:
        device = devices[0]
        logger.bind(image=str(image), device=device).info("Re-attached pool image")
    else:
        device = btrfs.run_cli(["losetup", "--find", "--show", str(image)], f"attach {image}").strip()
    mountpoint.mkdir(exist_ok=True)
    # -m single: one copy of metadata. DUP (the default) would store a tenant's small files, which live in
    # metadata, twice, so the pool would fill at twice the rate the quotas count; the image's own disk is
    # where redundancy belongs.
    # noatime: reading a template file from a clone would otherwise copy-on-write metadata per read.
    options = ",".join(("noatime", *MOUNT_FLAGS))
    btrfs.run_cli(["mount", "-t", "btrfs", "-o", options, device, str(mountpoint)], f"mount {image}")

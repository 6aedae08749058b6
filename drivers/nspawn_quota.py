"""A tenant's disk quota: the limit sits on a level-1 qgroup `1/<subvolume id>` that the tenant's
subvolume belongs to. Under simple quotas every subvolume made inside the tenant joins that group by itself,
so nested subvolumes are counted and limited with the tenant (the tenant seccomp filter refuses the only
ioctls that could opt out). Limits are set through the pool root's fd, so they work when already over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from drivers import nspawn_btrfs as btrfs
from specs import NotFound


class TenantQuota:
    """Mixed into `nspawn_pool.Pool`: what it needs of the pool is declared here."""

    root: Path
    fs_uuid: str

    def tenant_path(self, tenant: str) -> Path:
        raise NotImplementedError

    def _tenant_subvolume(self, tenant: str) -> int:
        raise NotImplementedError

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


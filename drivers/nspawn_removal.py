"""Deleting subvolumes of the pool with their qgroups, verified gone, and crash-safe through tombstones.

A delete first writes a tombstone naming the subvolume and every qgroup that goes with it (once the
subvolume is gone nothing else names them), clears their limits (a subvolume at its limit refuses its own
deletion with EDQUOT), deletes nested subvolumes (found by id: `nspawn_subvolumes`) and the subvolume, then
waits for the btrfs cleaner to let go of each qgroup and removes the tombstone. A crash anywhere leaves a
tombstone that the next delete or `cleanup_half_made` finishes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from drivers import nspawn_btrfs as btrfs
from drivers import nspawn_subvolumes as subvolumes
from drivers.nspawn_files import write_atomic
from specs import NotFound, PermanentError, TransientError


class SubvolumeRemoval:
    """Mixed into `nspawn_pool.Pool`: what it needs of the pool is declared here."""

    root: Path
    fs_uuid: str
    qgroup_release_seconds: float

    @property
    def deleting_dir(self) -> Path:
        return self.root / ".fleet-deleting"

    def inside(self, path: Path) -> Path:
        raise NotImplementedError

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

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
        write_atomic(tombstone, json.dumps({"path": self._relative(path), "qgroups": qgroups}) + "\n")
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
            write_atomic(tombstone, json.dumps({"path": self._relative(path), "qgroups": qgroups}) + "\n")
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

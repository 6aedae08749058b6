"""Each tenant's own user namespace: which host uid/gid range its root maps to, and what it may do there.

A tenant's container runs under `systemd-nspawn --private-users=<base>:65536 --private-users-ownership=map`:
uid 0 inside is host uid `base`, an unprivileged id no host user and no other tenant has. Ownership is
shifted by an idmapped mount of the tenant's subvolume, not by a recursive chown, so a clone stays one
copy-on-write snapshot (files keep their template ownership on disk; the pool is mounted nosuid,nodev so
nothing a tenant writes there can raise privileges on the host).

Ranges come from 0x70000000-0x7FFDFFFF, which systemd documents as unused (its own `--private-users=pick`
draws from 0x00080000-0x6FFFFFFF, host users sit far below): 4,094 ranges of 65,536 ids, far more than
the tenants a node holds. The range is recorded in the tenant's ownership marker (a trusted.* xattr that
the tenant cannot write), so a restarted driver reads it back; `allocate` picks the lowest range no
marker names.

This module only computes; it touches nothing on the host.
"""

from __future__ import annotations

from collections.abc import Iterable

from specs import PermanentError

RANGE_SIZE = 65_536
FIRST_BASE = 0x7000_0000
RANGES = (0x7FFE_0000 - FIRST_BASE) // RANGE_SIZE  # 4,094: up to systemd's foreign-uid range

# nspawn's default set minus what a tenant's service never needs. Its root is root only in its own user
# namespace, so these would not reach the host anyway; dropping them also closes the tenant's own mount
# table (no CAP_SYS_ADMIN: /proc/sys and /sys stay read-only), device nodes (no CAP_MKNOD), immutable
# files Fleet could not delete, and audit, reboot and TTY knobs. CAP_NET_ADMIN and CAP_NET_RAW are
# moot: the tenant's network namespace belongs to the host's user namespace, so they do not apply to it.
DROPPED_CAPABILITIES = (
    "CAP_SYS_ADMIN",
    "CAP_MKNOD",
    "CAP_SYS_BOOT",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LINUX_IMMUTABLE",
    "CAP_AUDIT_CONTROL",
    "CAP_NET_ADMIN",
)


def check_base(base: int) -> int:
    """A base read back from a marker must be one this module hands out (a tampered marker is refused)."""
    if isinstance(base, bool) or not isinstance(base, int):
        raise PermanentError(f"user namespace base {base!r} is not a number", reason="BadUidRange")
    if base < FIRST_BASE or (base - FIRST_BASE) % RANGE_SIZE or (base - FIRST_BASE) // RANGE_SIZE >= RANGES:
        raise PermanentError(f"user namespace base {base} is not a Fleet range", reason="BadUidRange")
    return base


def allocate(in_use: Iterable[int]) -> int:
    """The lowest range base that no tenant uses."""
    taken = set(in_use)
    for index in range(RANGES):
        base = FIRST_BASE + index * RANGE_SIZE
        if base not in taken:
            return base
    raise PermanentError(f"all {RANGES} user namespace ranges are in use on this node", reason="UidRangesExhausted")


def nspawn_arguments(base: int) -> list[str]:
    """The systemd-nspawn options that put a tenant in its own user namespace with least privilege."""
    return [
        f"--private-users={check_base(base)}:{RANGE_SIZE}",
        "--private-users-ownership=map",
        "--no-new-privileges=yes",
        f"--drop-capability={','.join(DROPPED_CAPABILITIES)}",
    ]


def base_from_arguments(argv: list[str]) -> int | None:
    """The range a running nspawn was started with (its own command line), None without a user namespace."""
    for part in argv:
        if part.startswith("--private-users="):
            value = part.removeprefix("--private-users=").partition(":")[0]
            return int(value) if value.isdigit() else None
    return None

"""A seccomp filter, installed by the launcher before it execs systemd-nspawn, that keeps a tenant's nested
subvolumes inside its disk quota.

Under simple quotas every subvolume a tenant creates joins the tenant's level-1 qgroup by itself, unless
the creating ioctl passes its own qgroup list: `BTRFS_IOC_SUBVOL_CREATE_V2` / `BTRFS_IOC_SNAP_CREATE_V2`
with `BTRFS_SUBVOL_QGROUP_INHERIT` and an empty list made a subvolume that belonged to no group (seen on
this kernel: 700 MiB written past a 512 MiB limit). seccomp cannot read the flags behind the argument
pointer, so both v2 calls fail with EPERM; the v1 calls (`btrfs subvolume create`, writable snapshots)
still work and are counted. nspawn's own filter stacks on top of this one; filters are inherited by every
process and cannot be removed.

Only the architectures a process on this host can call the kernel with are listed (x86_64 also x32 and
i386; aarch64 also arm); any other architecture number is refused outright. This module only computes
the program; `drivers.nspawn_process` installs it.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

from drivers.nspawn_btrfs import IOC_SNAP_CREATE_V2, IOC_SUBVOL_CREATE_V2
from specs import PermanentError

# linux/filter.h, linux/seccomp.h, linux/audit.h
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
RET_ALLOW = 0x7FFF_0000
RET_ERRNO = 0x0005_0000
EPERM = 1
ENOSYS = 38
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG1_LOW = 24  # args[1] (the ioctl request) starts at 16 + 8; low word first on little-endian hosts

AUDIT_ARCH_X86_64 = 0xC000_003E
AUDIT_ARCH_I386 = 0x4000_0003
AUDIT_ARCH_AARCH64 = 0xC000_00B7
AUDIT_ARCH_ARM = 0x4000_0028
X32_SYSCALL_BIT = 0x4000_0000

# machine -> [(audit arch, ioctl syscall numbers on it)]
_IOCTLS: dict[str, list[tuple[int, tuple[int, ...]]]] = {
    "x86_64": [(AUDIT_ARCH_X86_64, (16, X32_SYSCALL_BIT | 514)), (AUDIT_ARCH_I386, (54,))],
    "aarch64": [(AUDIT_ARCH_AARCH64, (29,)), (AUDIT_ARCH_ARM, (54,))],
}
DENIED_IOCTLS = (IOC_SUBVOL_CREATE_V2, IOC_SNAP_CREATE_V2)


@dataclass(frozen=True)
class Instruction:
    code: int
    jump_true: int | str = 0  # an offset, or a label resolved by `_assemble`
    jump_false: int | str = 0
    k: int = 0


def _assemble(program: list[Instruction | str]) -> bytes:
    labels: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(target: int | str, position: int) -> int:
        if isinstance(target, int):
            return target
        distance = labels[target] - position - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"jump to {target} out of range")
        return distance

    return b"".join(
        struct.pack("=HBBI", i.code, offset(i.jump_true, n), offset(i.jump_false, n), i.k)
        for n, i in enumerate(instructions)
    )


def program(machine: str | None = None) -> bytes:
    """The filter as `struct sock_filter[]` bytes, for this host's machine unless one is named."""
    machine = machine or platform.machine()
    arches = _IOCTLS.get(machine)
    if arches is None:
        raise PermanentError(
            f"no tenant seccomp filter for machine {machine!r}: Fleet's nspawn driver supports x86_64 and aarch64",
            reason="HostUnsupported",
        )
    code: list[Instruction | str] = [Instruction(_LD_W_ABS, k=OFFSET_ARCH)]
    for index, (arch, _numbers) in enumerate(arches):
        code.append(Instruction(_JEQ_K, f"arch{index}", 0, arch))
    code.append(Instruction(_RET_K, k=RET_ERRNO | ENOSYS))  # an architecture this host cannot run
    for index, (_arch, numbers) in enumerate(arches):
        code.append(f"arch{index}")
        code.append(Instruction(_LD_W_ABS, k=OFFSET_NR))
        for number in numbers:
            code.append(Instruction(_JEQ_K, "request", 0, number))
        code.append(Instruction(_RET_K, k=RET_ALLOW))
    code.append("request")
    code.append(Instruction(_LD_W_ABS, k=OFFSET_ARG1_LOW))
    for request in DENIED_IOCTLS:
        code.append(Instruction(_JEQ_K, "deny", 0, request))
    code.append(Instruction(_RET_K, k=RET_ALLOW))
    code.append("deny")
    code.append(Instruction(_RET_K, k=RET_ERRNO | EPERM))
    return _assemble(code)

"""The pure parts of tenant isolation: user namespace ranges and the seccomp program (run in an emulator)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import nspawn_seccomp, nspawn_userns
from drivers.nspawn_btrfs import IOC_SNAP_CREATE_V2, IOC_SUBVOL_CREATE_V2, _ioc
from drivers.nspawn_cgroups import observed_io
from specs import PermanentError

IOC_SUBVOL_CREATE_V1 = _ioc(1, 14, 4096)
IOC_SNAP_CREATE_V1 = _ioc(1, 1, 4096)
TCGETS = 0x5401
ALLOW = nspawn_seccomp.RET_ALLOW
EPERM = nspawn_seccomp.RET_ERRNO | nspawn_seccomp.EPERM


def run_filter(program: bytes, *, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """A classic-BPF interpreter for the three instructions the filter uses, over a seccomp_data."""
    padded = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *padded)
    instructions = [struct.unpack_from("=HBBI", program, offset) for offset in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    for _step in range(len(instructions)):
        code, jump_true, jump_false, k = instructions[pc]
        if code == 0x20:
            accumulator = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jump_true if accumulator == k else jump_false)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected BPF instruction {code:#x}")
    raise AssertionError("the program fell off its end")


X86_64 = nspawn_seccomp.AUDIT_ARCH_X86_64
I386 = nspawn_seccomp.AUDIT_ARCH_I386
X32_IOCTL = nspawn_seccomp.X32_SYSCALL_BIT | 514


@pytest.mark.parametrize("arch, ioctl", [(X86_64, 16), (X86_64, X32_IOCTL), (I386, 54)])
def test_the_v2_subvolume_ioctls_that_can_opt_out_of_the_quota_are_refused_on_every_abi(arch: int, ioctl: int) -> None:
    program = nspawn_seccomp.program("x86_64")
    for request in (IOC_SUBVOL_CREATE_V2, IOC_SNAP_CREATE_V2):
        assert run_filter(program, arch=arch, nr=ioctl, args=(3, request)) == EPERM
    # what a tenant's own tools still use: v1 subvolume create and snapshot (counted), any other ioctl
    for request in (IOC_SUBVOL_CREATE_V1, IOC_SNAP_CREATE_V1, TCGETS):
        assert run_filter(program, arch=arch, nr=ioctl, args=(3, request)) == ALLOW


def test_only_the_low_32_bits_of_the_request_decide_as_the_kernel_reads_them() -> None:
    program = nspawn_seccomp.program("x86_64")
    assert run_filter(program, arch=X86_64, nr=16, args=(3, (1 << 32) | IOC_SUBVOL_CREATE_V2)) == EPERM


@given(st.integers(0, 450).filter(lambda n: n != 16), st.integers(0, (1 << 32) - 1))
def test_other_system_calls_pass_whatever_their_arguments(nr: int, argument: int) -> None:
    program = nspawn_seccomp.program("x86_64")
    assert run_filter(program, arch=X86_64, nr=nr, args=(3, argument)) == ALLOW


def test_an_architecture_the_host_cannot_run_is_refused() -> None:
    program = nspawn_seccomp.program("x86_64")
    result = run_filter(program, arch=nspawn_seccomp.AUDIT_ARCH_AARCH64, nr=29, args=(3, IOC_SUBVOL_CREATE_V2))
    assert result == nspawn_seccomp.RET_ERRNO | nspawn_seccomp.ENOSYS


def test_aarch64_has_its_own_numbers_and_unknown_machines_are_a_clear_error() -> None:
    program = nspawn_seccomp.program("aarch64")
    assert run_filter(program, arch=nspawn_seccomp.AUDIT_ARCH_AARCH64, nr=29, args=(3, IOC_SNAP_CREATE_V2)) == EPERM
    assert run_filter(program, arch=nspawn_seccomp.AUDIT_ARCH_AARCH64, nr=16, args=(3, IOC_SNAP_CREATE_V2)) == ALLOW
    with pytest.raises(PermanentError, match="x86_64 and aarch64"):
        nspawn_seccomp.program("riscv64")


def test_ranges_are_disjoint_65536_ids_above_every_host_user_and_reused_after_release() -> None:
    first = nspawn_userns.allocate([])
    second = nspawn_userns.allocate([first])
    assert first == 0x7000_0000 and second == first + 65_536
    assert nspawn_userns.allocate([second]) == first  # a deleted tenant's range is free again
    taken = [nspawn_userns.FIRST_BASE + i * 65_536 for i in range(nspawn_userns.RANGES)]
    with pytest.raises(PermanentError, match="ranges are in use"):
        nspawn_userns.allocate(taken)
    assert taken[-1] + 65_536 <= 0x7FFE_0000  # below systemd's foreign-uid range


@pytest.mark.parametrize("tampered", [0, 65_536, 0x7000_0001, 0x7FFE_0000, -1, True, "0x70000000"])
def test_a_range_that_fleet_never_hands_out_is_refused(tampered: object) -> None:
    with pytest.raises(PermanentError):
        nspawn_userns.check_base(tampered)  # type: ignore[arg-type]


def test_nspawn_arguments_map_ownership_and_drop_what_a_service_never_needs() -> None:
    arguments = nspawn_userns.nspawn_arguments(0x7001_0000)
    assert f"--private-users={0x7001_0000}:65536" in arguments
    assert "--private-users-ownership=map" in arguments and "--no-new-privileges=yes" in arguments
    dropped = next(a for a in arguments if a.startswith("--drop-capability=")).split("=", 1)[1].split(",")
    assert {"CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_NET_ADMIN"} <= set(dropped)
    assert nspawn_userns.base_from_arguments(["systemd-nspawn", *arguments]) == 0x7001_0000
    assert nspawn_userns.base_from_arguments(["systemd-nspawn", "--machine=a"]) is None


def test_io_is_read_back_as_one_bandwidth_only_when_every_device_agrees() -> None:
    devices = ["7:0", "7:1"]
    same = {"7:0": 2 << 20, "7:1": 2 << 20}
    assert observed_io(same, same, devices) == 2 << 20
    assert observed_io({}, {}, devices) is None
    assert observed_io(same, {"7:0": 2 << 20}, devices) == 0  # a device without a write limit: drift
    assert observed_io(same, {"7:0": 4 << 20, "7:1": 2 << 20}, devices) == 0

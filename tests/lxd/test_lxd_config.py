"""What the LXD driver writes into an instance's keys reads back as the same limits (else the planner would
see drift forever), and a hand-written spelling or a soft limit is read as what it means."""

from hypothesis import given
from hypothesis import strategies as st

from drivers.lxd_config import (
    cpu_allowance,
    observed_resources,
    parse_cpu_allowance,
    parse_size,
    resource_config,
    root_device,
)
from specs import Resources, limits


@given(
    cpu=st.integers(limits.CPU_MILLICORES_MIN, limits.CPU_MILLICORES_MAX),
    memory_pages=st.integers(limits.MEMORY_BYTES_MIN // limits.MEMORY_PAGE,
                             limits.MEMORY_BYTES_MAX // limits.MEMORY_PAGE),
    disk=st.integers(limits.DISK_BYTES_MIN, limits.DISK_BYTES_MAX),
    pids=st.integers(limits.PIDS_MIN, limits.PIDS_MAX),
    io=st.none() | st.integers(limits.IO_BYTES_PER_SECOND_MIN, limits.IO_BYTES_PER_SECOND_MAX),
)
def test_written_limits_read_back_unchanged(cpu: int, memory_pages: int, disk: int, pids: int, io: int | None) -> None:
    wanted = Resources(cpu=f"{cpu}m", memory=memory_pages * limits.MEMORY_PAGE, disk=disk, pids=pids, io=io)
    config = {key: value for key, value in resource_config(wanted).items() if value is not None}
    assert observed_resources(config, {"root": root_device("fleet", wanted)}) == wanted


def test_cpu_is_a_hard_quota_in_whole_milliseconds() -> None:
    assert cpu_allowance(500) == "50ms/100ms"
    assert cpu_allowance(1500) == "150ms/100ms"
    assert cpu_allowance(125) == "125ms/1000ms"  # LXD takes no fractions of a millisecond
    assert parse_cpu_allowance("50%") is None  # soft shares are no ceiling: drift to repair


def test_hand_written_sizes_and_soft_memory_read_as_they_mean() -> None:
    assert parse_size("256MiB") == 256 << 20 and parse_size("1GB") == 10**9 and parse_size("50%") is None
    soft = observed_resources({"limits.memory": "256MiB", "limits.memory.enforce": "soft"}, {})
    assert soft.memory is None

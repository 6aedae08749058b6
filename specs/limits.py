"""Bounds of every spec value, shared by pydantic validation and the store's CHECK constraints."""

CPU_MILLICORES_MIN = 10
CPU_MILLICORES_MAX = 256_000
MEMORY_BYTES_MIN = 16 << 20  # below this nothing useful boots
MEMORY_BYTES_MAX = 1 << 40
DISK_BYTES_MIN = 16 << 20
DISK_BYTES_MAX = 16 << 40
MEMORY_PAGE = 4096  # the kernel rounds memory limits down to pages: anything else would read back as drift
PIDS_MIN = 8
PIDS_MAX = 4_194_304  # the kernel's pid_max ceiling
PORTS_MAX = 32
EGRESS_RULES_MAX = 32  # spec.network.egress: rules per tenant (each up to PORTS_MAX ports)
LABELS_MAX = 64
LABEL_VALUE_MAX = 63
IO_BYTES_PER_SECOND_MIN = 1 << 20  # disk read and write bandwidth, each; below 1Mi/s a tenant cannot boot
IO_BYTES_PER_SECOND_MAX = 1 << 40

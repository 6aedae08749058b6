"""The operator's own C heap: few arenas, and free memory handed back to the host now and then.

Why: what the operator allocates per tenant is short-lived (a firewall read parses JSON as long as the
node's tenant list, netlink replies, store rows), but glibc keeps freed memory in up to 8 arenas per CPU,
one per thread that happened to allocate, and returns little of it. Measured on nspawn: the operator's RSS
grew by 83-93 KiB per sleeping tenant while live Python objects grew by under 1 KiB per tenant; the rest was
freed memory glibc kept (docs/benchmarks.md, "Sleep and wake: sleeping tenants' density"). A no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from loguru import logger

M_ARENA_MAX = -8  # mallopt parameter (glibc's malloc.h)
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return library if hasattr(library, "malloc_trim") and hasattr(library, "mallopt") else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Call before the process starts its threads: arenas already made stay. True when glibc took it."""
    library = _glibc()
    return bool(library is not None and library.mallopt(M_ARENA_MAX, arenas))


def trim() -> None:
    """Hand the heap's free pages back to the host (malloc_trim(0): every arena, not only the top)."""
    library = _glibc()
    if library is not None and library.malloc_trim(0):
        logger.trace("Trimmed the C heap")

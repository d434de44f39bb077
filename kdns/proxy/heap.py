"""Gives the C heap's free memory back to the kernel after a sync that needed a lot for a while.

Contract:
- `trim()` runs glibc's `malloc_trim(0)` (through ctypes, libc loaded once): every malloc arena,
  the worker threads' included, returns its free pages to the kernel. Returns whether it ran:
  False where the C library has no such call (musl), which is then a no-op.
- Why: a full sync at 10k Services is transient C memory of a few hundred MiB — libnftables
  parsing and evaluating a 10 MB transaction, Python's strings of the render and of
  `iptables-save` — freed when the sync ends, but glibc keeps freed memory below the top of an
  arena and in the worker thread's arena for reuse, so the RSS stayed at the sync's peak
  (459 MiB against ~100 MiB of live data; docs/benchmarks.md, Proxy). Trimming after a full
  sync costs tens of ms at that size; a partial sync frees too little to be worth it.
- Safe from any thread: malloc_trim takes each arena's lock, as malloc does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        log.info("proxy: %s has no malloc_trim: freed C memory stays with the allocator", name)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim() -> bool:
    """Free C heap pages back to the kernel; whether the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

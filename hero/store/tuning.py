"""glibc malloc settings that stop multi-MiB buffers from paying page faults on every call.

glibc serves big requests with a fresh mmap and returns freed memory to the
OS at once, so each segment's compress/decrypt/decode output is first-touch
page-faulted (~1.3 GB/s). Raising the mmap and trim thresholds keeps those
buffers in the heap for reuse; measured in BENCHMARKS.md (## QSS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3


@functools.cache
def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20, top_pad: int = 64 << 20) -> bool:
    """Apply once per process; False where the C library has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(option, value) == 1
        for option, value in ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold),
                              (M_TOP_PAD, top_pad))
    )

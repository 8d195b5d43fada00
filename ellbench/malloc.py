"""glibc's allocator kept steady: memory freed by one batch is reused by the next instead of going back to the OS.

By default glibc returns large freed blocks to the kernel (trimming the heap and unmapping blocks above the mmap
threshold), and the next batch's tensors fault the same pages in again. Measured on the 2-core CPU machine
(benchmarks/attention_ops.py), those minor page faults varied from 0 to 180k per forward pass from one process to
the next and decided whether one model looked slower than another. benchmarks/attention.py fixes both thresholds
(its default, --malloc steady) so that a comparison of two models is not decided by the allocator; --malloc default
measures glibc's own behaviour. The price is that the process keeps its peak memory (RSS) until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h), and the largest value they take.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGEST_MALLOPT_VALUE = 2**31 - 1


def steady_malloc() -> bool:
    """Fix glibc's trim and mmap thresholds at their largest value; False where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return all(libc.mallopt(param, LARGEST_MALLOPT_VALUE) == 1 for param in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD))

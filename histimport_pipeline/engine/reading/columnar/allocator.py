"""Where the columnar reader's working memory comes from, so that it goes back when freed.

A block's arrays are allocated and freed again for every block. With pyarrow's default pool
(mimalloc) and glibc's default ``malloc`` that memory was kept by the process: on the flights
benchmark (336,776 rows) the peak RSS was about 240 MiB, of which some 85 MiB came with the
first block and never went. pyarrow's system pool with glibc's mmap threshold held fixed
peaked at about 170 MiB at the same speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pyarrow as pa

#: glibc's ``mallopt`` parameter for the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h).
_M_MMAP_THRESHOLD = -3
#: Allocations this large are mmapped and unmapped on free. Fixing the threshold also stops
#: glibc from raising it (up to 32 MiB) after the first large frees, which is what kept each
#: block's arrays in the heap.
MMAP_THRESHOLD = 256 * 1024

_done = False


def release_freed_memory() -> None:
    """Route pyarrow's allocations through ``malloc`` and fix glibc's mmap threshold (once
    per process; elsewhere than glibc only the pool changes)."""
    global _done
    if _done:
        return
    _done = True
    pa.set_memory_pool(pa.system_memory_pool())
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): keep its defaults
        pass

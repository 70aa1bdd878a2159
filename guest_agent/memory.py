"""Keep the agent's resident memory flat while big buffers come and go (backups).

glibc serves allocations above its mmap threshold with mmap and gives them back to the
kernel on free. But the threshold is dynamic: each freed mmapped block raises it to that
block's size (up to 32 MiB), so after the first backup part is freed the next ones (S3's
multi-MiB part buffers, zstd's) come from the heap, where freed memory stays resident and
fragments across threads. A fixed threshold turns that off. Measured on a 1 GB PostgreSQL
backup to S3: peak RSS 177 MB with glibc's default, 134 MB with this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Best effort: True if glibc took the setting (other C libraries: nothing to do)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return ok

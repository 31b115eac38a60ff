"""Process-level settings shared by the entry points (train, bench)."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed tensor buffers in the heap instead of handing them back to the OS.

    PyTorch's CPU allocator does not cache; glibc serves blocks above 128 KiB with fresh mmap'd
    pages and unmaps them on free, so every batched step of a round page-faults its buffers
    again. Raising glibc's mmap and trim thresholds makes a round about 2x faster here. A no-op
    off glibc (macOS, musl); returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024

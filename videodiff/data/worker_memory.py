"""Malloc settings for the loader's processes (workers and main): keep large freed buffers for the next item.

Every item allocates buffers of the same few sizes: decoded frames (tens of MB for 16 HD frames), the clip
tensor ``[R, C, T, H, W]`` (38 MB at R=4, 16x224x224). glibc serves blocks above its mmap threshold
(at most 32 MB) with fresh mmaps and returns them to the system on free, so each item pays page faults
on all of that memory again: measured 29 ms per 38 MB buffer on our 2-core benchmark machine, 8 ms once
reused. Raising the mmap and trim thresholds in the workers lets freed blocks be reused; each worker then
keeps its peak working set (a few hundred MB for HD video) instead of returning it between items.
Elsewhere than glibc (macOS, musl) this does nothing.
"""
import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap and are reused
TRIM_THRESHOLD = 512 << 20  # free heap memory kept before any is returned to the system


def keep_freed_memory() -> bool:
    """Apply the thresholds in this process; True if glibc accepted them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

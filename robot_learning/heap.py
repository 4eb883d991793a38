"""The process heap, for the long-running nodes whose memory a watchdog (or a soak) reads.

glibc keeps what a process frees for reuse: a recorder that queued seconds of camera frames,
or wrote an episode's buffers, stays at that peak's resident size for hours, and a memory
watchdog cannot tell that from a leak. Both calls are no-ops where there is no glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def map_large_blocks(min_bytes: int = 256 * 1024) -> None:
    """Blocks of ``min_bytes`` and over get pages of their own (mmap), returned on free.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MiB):
    after the first camera frame is freed, frames (0.9 MiB at 640x480) come from the arenas,
    where a small block left at a heap's top keeps everything below it resident; a reader that
    drained a 140 MiB backlog kept 62 MiB of it that way. A fixed threshold stops that."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, int(min_bytes))


def release_free_memory() -> None:
    """Collect cyclic garbage and give the heap's free pages back to the system
    (``malloc_trim``): call where a burst of work just ended, e.g. at an episode's end."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)

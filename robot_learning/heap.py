"""The process heap, for the long-running nodes whose memory a watchdog (or a soak) reads.

glibc keeps what a process frees for reuse: a recorder that queued seconds of camera frames,
or wrote an episode's buffers, stays at that peak's resident size for hours, and a memory
watchdog cannot tell that from a leak. A small block left at the top of one of glibc's heaps
keeps every free page below it resident until ``malloc_trim`` gives them back (a reader that
drained a 139 MiB backlog kept 62 MiB that way). Giving every large block pages of its own
instead (``mallopt(M_MMAP_THRESHOLD)``) was tried and dropped: the recorder then fell minutes
behind its camera streams in the soak (12 GB resident). A no-op where there is no glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def release_free_memory() -> None:
    """Collect cyclic garbage and give the heap's free pages back to the system
    (``malloc_trim``): call where a burst of work just ended, e.g. at an episode's end."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)

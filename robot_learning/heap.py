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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_stats() -> dict[str, float]:
    """glibc's account of its heap, in MiB (``mallinfo2``; {} without it): ``in_use`` (blocks
    allocated and not freed, on the heaps and mapped), ``free_held`` (freed, kept on the heaps
    for reuse: what fragmentation holds) and ``mapped`` (large blocks with pages of their own).
    A process whose memory grows is leaking if ``in_use`` grows, fragmenting if ``free_held`` does;
    neither counts Python's own small-object arenas' free space, which are also heap blocks."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None:
        return {}
    fn.restype = _MallInfo2
    m = fn()
    mib = 1.0 / 2**20
    return {"in_use": (m.uordblks + m.hblkhd) * mib, "free_held": m.fordblks * mib, "mapped": m.hblkhd * mib}


def release_free_memory() -> None:
    """Collect cyclic garbage and give the heap's free pages back to the system
    (``malloc_trim``): call where a burst of work just ended, e.g. at an episode's end."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)

"""Giving freed memory back (robot_learning.heap), in a process of its own: the heap is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

FRAMES = textwrap.dedent("""
    import ctypes, sys
    import psutil
    from robot_learning.heap import release_free_memory

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    libc.free(libc.malloc(921_600))  # glibc's default: a freed 0.9 MiB block raises the threshold to it
    private = lambda: (psutil.Process().memory_info().rss - psutil.Process().memory_info().shared) / 2**20
    frames, small = [], []
    for _ in range(150):  # a backlog of 640x480 frames, with the small blocks a reader allocates between them
        frames.append(libc.malloc(921_600))
        libc.memset(frames[-1], 1, 921_600)
        small.append(libc.malloc(64))
    before = private()
    for f in frames:
        libc.free(f)
    if sys.argv[1] == "trimmed":
        release_free_memory()
    print(before - private(), flush=True)
""")


@pytest.mark.parametrize("how", ["trimmed", "default"])
def test_freed_frames_leave_the_process(how):
    """150 camera frames (132 MiB) freed among small live blocks: ``release_free_memory`` gives
    them back to the system; without it (the control case) the process keeps them."""
    out = subprocess.run([sys.executable, "-c", FRAMES, how], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gone = float(out.stdout)
    if how == "default":
        assert gone < 20, f"the control case gave {gone:.0f} MiB back"
    else:
        assert gone > 120, f"only {gone:.0f} of 132 MiB left the process"

"""Giving freed memory back (robot_learning.heap), in a process of its own: the heap is process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest

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
    for _ in range(150):  # a backlog of 640x480 frames, with the messages a reader keeps between them
        frames.append(libc.malloc(921_600))
        libc.memset(frames[-1], 1, 921_600)
        # 100 kB: larger than the holes Python's start-up leaves, so it lands after the frame (64-byte
        # blocks all fitted in those holes on one machine, the frames were the heap's top, and free
        # gave them back by itself: the control case then proved nothing)
        small.append(libc.malloc(102_400))
    before = private()
    for f in frames:
        libc.free(f)
    if sys.argv[1] == "trimmed":
        release_free_memory()
    print(before - private(), flush=True)
""")


@pytest.mark.parametrize("how", ["trimmed", "default"])
def test_freed_frames_leave_the_process(how):
    """150 camera frames (132 MiB) freed among smaller live blocks: ``release_free_memory`` gives
    them back to the system; without it (the control case) the process keeps them."""
    out = subprocess.run([sys.executable, "-c", FRAMES, how], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    gone = float(out.stdout)
    if how == "default":
        assert gone < 20, f"the control case gave {gone:.0f} MiB back"
    else:
        assert gone > 120, f"only {gone:.0f} of 132 MiB left the process"


RECORDER = textwrap.dedent("""
    import sys, tempfile, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np, psutil
    from test_dataset import RECIPE, image, joints
    from robot_learning.data.recorder import Recorder

    proc = psutil.Process()
    private = lambda: (proc.memory_info().rss - proc.memory_info().shared) / 2**20
    rec = Recorder(tempfile.mkdtemp() + "/h.zarr", RECIPE, log=lambda *a: None, flush_interval=0.05)
    base = private()
    for ep in range(3):
        rec.start({})
        for k in range(150):  # 5 s of a 640x480 camera with 300 Hz joint states
            t = ep * 100 + k / 30
            rec.on_message("front_color", image(t, 640, 480, value=k % 251), t)
            for j in range(10):
                rec.on_message("joint_states", joints(t + j * 0.003, np.zeros(9)), t + j * 0.003)
        rec.stop(success=True)
        time.sleep(0.5)
    print(private() - base, flush=True)
    rec.close()
""")


def test_a_recorder_gives_an_episodes_memory_back_when_it_ends():
    """Three episodes of 150 camera frames each (132 MiB): once each has ended, the recorder
    holds about what it held before the first (5-35 MiB more; it kept 145-175 MiB when its writer
    never trimmed)."""
    tests = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", RECORDER, tests], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept = float(out.stdout)
    assert kept < 100, f"the recorder kept {kept:.0f} MiB after its episodes ended"


ACCOUNT = textwrap.dedent("""
    import ctypes
    from robot_learning.heap import heap_stats

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(921_600))  # as a camera reader does: later frames come from the heap
    before = heap_stats()
    blocks, live = [], []
    for _ in range(100):  # each with a live block above it (too big for the holes lower down)
        blocks.append(libc.malloc(921_600))
        live.append(libc.malloc(65_536))
    held = heap_stats()
    for b in blocks:
        libc.free(b)
    freed = heap_stats()
    print(held["in_use"] - before["in_use"], freed["in_use"] - before["in_use"],
          freed["free_held"] - before["free_held"])
""")


def test_the_heap_account_tells_live_blocks_from_freed_ones_it_holds():
    """What the recorder reports on /diagnostics (``heap_mib/...``) so a soak can tell a leak
    (blocks in use grow) from fragmentation (freed blocks held grow): 100 frames (88 MiB) and
    100 blocks of 64 KiB (6 MiB) allocated count as in use; the frames freed below the live
    blocks count as held, no longer in use."""
    out = subprocess.run([sys.executable, "-c", ACCOUNT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    in_use, after, held = map(float, out.stdout.split())
    assert 93 < in_use < 98 and 5 < after < 8 and 85 < held < 92, out.stdout

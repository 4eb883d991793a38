"""Torch's thread count timed against the load (nets.device.AdaptiveThreads): the demo trains
with it, because two threads on a 2-core machine with one core busy made each step 3-5x slower."""

from __future__ import annotations

import torch

from robot_learning.nets.device import AdaptiveThreads


def test_the_faster_count_is_kept_and_timed_again_when_the_load_changes():
    before = torch.get_num_threads()
    said = []
    now = [0.0]
    try:
        tuner = AdaptiveThreads(counts=(1, 2), probe_steps=3, recheck_s=60.0, log=said.append)
        tuner._clock = lambda: now[0]
        busy = {1: 0.2, 2: 0.7}  # another process has a core: two threads wait on each other
        for _ in range(8):  # 4 steps at each count (the first after a switch not counted)
            tuner.step_done(busy[torch.get_num_threads()] + (5.0 if tuner._times[torch.get_num_threads()] == [] else 0))
        assert tuner.chosen == 1 and torch.get_num_threads() == 1 and "threads: 1" in said[-1]
        for _ in range(20):  # until the next check, the choice holds
            tuner.step_done(0.2)
        assert torch.get_num_threads() == 1
        now[0] = 61.0
        idle = {1: 0.2, 2: 0.13}  # the other process ended
        tuner.step_done(0.2)      # starts the next round
        for _ in range(8):
            tuner.step_done(idle[torch.get_num_threads()])
        assert tuner.chosen == 2 and torch.get_num_threads() == 2 and "threads: 2" in said[-1]
    finally:
        torch.set_num_threads(before)

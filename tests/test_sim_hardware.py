"""The sim standing in for a robot behind ros2_control: its lockstep with the arm node.

After each joint state the sim waits for the command that answers it, so a busy host slows
the sim rather than feeding its stiff servos commands in bursts; with no arm node answering
it must run free, never hang."""

from __future__ import annotations

import threading
import time

from robot_learning.sim.hardware import CommandLockstep


def test_the_sim_waits_for_the_answer_to_each_state_while_an_arm_node_answers():
    lock = CommandLockstep(timeout=5.0)
    lock.arrived()                        # an arm node is answering
    mark = lock.mark()
    threading.Timer(0.2, lock.arrived).start()
    t0 = time.monotonic()
    assert lock.wait(mark)
    assert 0.15 <= time.monotonic() - t0 < 4.0   # it waited for the late answer, not the timeout
    assert lock.waits == 1 and lock.timeouts == 0


def test_an_answer_already_in_does_not_wait():
    lock = CommandLockstep(timeout=5.0)
    lock.arrived()
    mark = lock.mark()
    lock.arrived()
    t0 = time.monotonic()
    assert lock.wait(mark) and time.monotonic() - t0 < 0.1 and lock.waits == 0


def test_with_no_arm_node_the_sim_runs_free():
    lock = CommandLockstep(timeout=5.0)
    t0 = time.monotonic()
    assert not lock.wait(lock.mark())     # nothing ever answered: no wait at all
    assert time.monotonic() - t0 < 0.1 and lock.waits == 0


def test_an_arm_node_that_stops_answering_costs_one_timeout_then_the_sim_runs_free():
    lock = CommandLockstep(timeout=0.2)
    lock.arrived()
    t0 = time.monotonic()
    assert not lock.wait(lock.mark())     # it was answering: the sim waits out one timeout
    assert time.monotonic() - t0 >= 0.15 and lock.timeouts == 1
    t1 = time.monotonic()
    for _ in range(5):
        assert not lock.wait(lock.mark())
    assert time.monotonic() - t1 < 0.1    # then free, until it answers again
    lock.arrived()
    mark = lock.mark()
    threading.Timer(0.1, lock.arrived).start()
    assert lock.wait(mark) and lock.waits == 2

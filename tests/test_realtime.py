"""The arm's control loop thread asks for real-time scheduling and says so, or says why not."""

import os
import threading

import pytest

from robot_learning.control.realtime import make_realtime


def _in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.update(result=fn(), policy=os.sched_getscheduler(0)))
    t.start()
    t.join()
    return out


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="Linux scheduling classes")
def test_the_loop_thread_alone_becomes_fifo_when_the_system_allows():
    logs: list[str] = []
    out = _in_thread(lambda: make_realtime(10, log=logs.append))
    assert os.sched_getscheduler(0) == os.SCHED_OTHER          # the caller's other threads are unchanged
    if out["result"].startswith("SCHED_FIFO"):
        assert out["policy"] == os.SCHED_FIFO and not logs
    else:  # a user without rtprio: one sentence saying what to do, and the loop runs anyway
        assert out["policy"] == os.SCHED_OTHER and len(logs) == 1 and "rtprio" in logs[0]


def test_priority_zero_leaves_the_thread_ordinary():
    logs: list[str] = []
    out = _in_thread(lambda: make_realtime(0, log=logs.append))
    assert out == {"result": "ordinary scheduling", "policy": os.SCHED_OTHER} and not logs


def test_a_refusal_says_what_to_do(monkeypatch):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    logs: list[str] = []
    assert make_realtime(50, log=logs.append) == "ordinary scheduling"
    assert len(logs) == 1 and "Operation not permitted" in logs[0] and "limits.conf" in logs[0]

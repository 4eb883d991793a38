"""Real-time scheduling for the thread that owns the arm's control loop.

A robot's control loop must keep its period whatever else the machine does: a policy server
inferring, a recorder compressing images, a package install. The kernel does that for a thread
under ``SCHED_FIFO``: it runs as soon as it wakes, ahead of every ordinary process, as
ros2_control's controller manager runs its update loop (its ``thread_priority``, 50 by default;
the user needs ``rtprio`` in ``/etc/security/limits.conf``, or root). Linux's RT throttling
keeps 5% of each second for ordinary tasks, so a runaway loop cannot lock the machine up.

In Python a second hurdle is the GIL: the node's executor thread (subscriptions) may hold it
when the loop thread wakes, and by default hands it over only every 5 ms. The switch interval
is shortened so the loop waits at most about half a millisecond.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

SWITCH_INTERVAL_S = 0.0005


def make_realtime(priority: int, cpus: list[int] | None = None,
                  log: Callable[[str], None] | None = None, tid: int = 0) -> str:
    """Puts the calling thread (or the thread with native id ``tid``) under SCHED_FIFO at
    ``priority`` (1..99; 0 or less: leave it ordinary) and optionally pins it to ``cpus``.
    Returns what was done, in words; says why in ``log`` when the system refused (the loop
    then runs, with the machine's load in its timing)."""
    done = []
    if priority > 0:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(min(int(priority), 99)))
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            done.append(f"SCHED_FIFO priority {min(int(priority), 99)}")
        except (PermissionError, OSError) as e:
            if log:
                log(f"no real-time priority for the control loop ({e.strerror or e}): its period will follow the "
                    "machine's load. Give this user rtprio (a line '<user> - rtprio 98' in "
                    "/etc/security/limits.conf, then log in again), or set thread_priority:=0 to silence this")
    if cpus:
        try:
            os.sched_setaffinity(tid, cpus)
            done.append(f"CPUs {','.join(map(str, cpus))}")
        except OSError as e:
            if log:
                log(f"cannot pin the control loop to CPUs {cpus}: {e.strerror or e}")
    return ", ".join(done) or "ordinary scheduling"

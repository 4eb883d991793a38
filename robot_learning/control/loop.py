"""The control loop, owned by one place: read the backend's state, step the controller (and
its safety filter and monitors), write the command (ros2_control's read -> update -> write).

The in-process sim (``Workcell.step_control``) and the arm node's ros2_control backend both
go through ``control_step``, so a real arm runs the very controller and safety code the sim
runs. ``PacedLoop`` is the arm node's clock: a fixed period on the monotonic clock, with the
period actually achieved kept for diagnostics and the jitter benchmark.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from robot_learning.control.backend import ArmBackend, ArmState

StepFn = Callable[[ArmState, float], tuple[np.ndarray, float]]


def control_step(backend: ArmBackend, step: StepFn, clock_origin: float = 0.0) -> ArmState:
    """One period: the measured state (stamped on the controller's clock, ``clock_origin`` +
    the backend's), the controller's safe target for it, written to the backend."""
    state = backend.read_state()
    state.stamp += clock_origin
    q, opening = step(state, state.stamp)
    backend.write_command(q, opening)
    return state


class PacedLoop:
    """Calls ``tick`` every ``1 / rate`` seconds of monotonic time until ``running()`` is False.

    Deadlines are absolute (no drift from the tick's own duration); a tick that overruns a
    whole period skips the missed deadlines instead of firing a burst to catch up."""

    def __init__(self, rate: float, history: int = 5000):
        self.period = 1.0 / rate
        self.periods: deque[float] = deque(maxlen=history)  # achieved periods, seconds
        self.overruns = 0

    def run(self, tick: Callable[[], None], running: Callable[[], bool]) -> None:
        nxt = time.monotonic()
        last = None
        while running():
            now = time.monotonic()
            if last is not None:
                self.periods.append(now - last)
            last = now
            tick()
            nxt += self.period
            wait = nxt - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -self.period:
                self.overruns += 1
                nxt = time.monotonic()

    def jitter(self) -> dict[str, float]:
        """Deviation of the achieved periods from the nominal one (ms): p50, p99, max."""
        if not self.periods:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        dev = np.abs(np.asarray(self.periods) - self.period) * 1e3
        return {"p50_ms": float(np.percentile(dev, 50)), "p99_ms": float(np.percentile(dev, 99)),
                "max_ms": float(dev.max())}

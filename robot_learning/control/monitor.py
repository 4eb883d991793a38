"""Monitors on what the joints actually do, not on what was commanded.

The safety filter bounds the commands it sends, but a command within every limit can still
end in a joint moving faster than its limit: an arm dragged along a table sticks and slips,
a jammed peg winds the position command up against the contact until it lets go. A real
arm's firmware watches its measured state and stops (Franka's reflexes, UR's protective
stop); this monitor does the same for any backend, so the sim and a real arm both stop on
the same evidence:

- measured joint speed above ``(1 + velocity_margin)`` times its limit;
- tracking error: the measured position further from the command sent the period before
  than ``tracking_error`` plus ``tracking_lag`` times the commanded speed;
- measured position past the filter's soft limits (``position_margin`` inside the hard ones)
  by more than half the margin: the filter never commands there, so something pushes the
  joint (a hand pressed on the table backdrives a 12 Nm wrist) toward its hard stop;
- the measured TCP further outside the workspace box than the command was, by more than
  ``workspace_tolerance``: the filter keeps every command inside, so the arm was dragged, or
  overshot its command, out of the space it may use;
- a joint stalled at its torque limit: measured effort at ``stall_effort`` of the limit for
  ``stall_time`` while the joint neither moves the way it pushes (faster than ``stall_speed``)
  nor gains that much speed that way (blocked, or pushed back). That is a joint pressing on
  something: in free motion a saturated joint accelerates, or brakes, fast. Caught there,
  with half the push wound up that the tracking error waits for, less is stored to throw the
  joint when the contact lets go (a hand pressed on the table backdrives a 12 Nm wrist;
  released, it slips);
- a stale or missing joint state (older than ``state_timeout``), or a non-finite one.

A trip is reported once with the joint and the numbers; the controller then holds (where
the arm is, when the measurement can be trusted) and latches a protective stop until it is released explicitly.
"""

from __future__ import annotations

import numpy as np

from robot_learning.config import SafetyLimits
from robot_learning.control.backend import ArmState
from robot_learning.control.safety import box_distance


class JointMonitor:
    """Checks each period's measured state against the last command sent."""

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self.qd_trip = limits.qd_max * (1.0 + limits.velocity_margin)
        self.soft_lower, self.soft_upper = limits.soft_lower, limits.soft_upper
        self.q_tolerance = 0.5 * limits.position_margin
        n = len(limits.qd_max)
        # per joint: when its stall window began, with the joint's speed and push direction then
        self._stalled_since, self._stall_speed0, self._stall_push = np.full(n, np.nan), np.zeros(n), np.zeros(n)

    def reset(self) -> None:
        """Forget stalls in progress (the arm was released, or put somewhere new)."""
        self._stalled_since[:] = np.nan

    def _stall(self, state: ArmState) -> str | None:
        """Timed on the states' own stamps: a state stream that arrives late or repeats its last
        sample (a busy host, a bursty link to the arm) adds no stall time that was not measured."""
        lim, now = self.limits, state.stamp
        effort = np.asarray(state.effort, dtype=float)
        if lim.effort_max is None or effort.shape != self._stalled_since.shape:
            return None  # a backend that reports no efforts (an empty list): nothing to judge by
        push = np.sign(effort)
        advancing = push * np.asarray(state.qd, dtype=float)  # joint speed the way it pushes
        stalled = (np.abs(effort) >= lim.stall_effort * lim.effort_max) & (advancing < lim.stall_speed)
        # A window starts where a stall begins, and starts again wherever the push has made
        # progress (a joint braking at its limit gains speed the way it pushes, fast): what
        # trips is stall_time at the limit with no progress, blocked or pushed back.
        restart = stalled & (np.isnan(self._stalled_since) | (push != self._stall_push)
                             | (advancing - self._stall_speed0 >= lim.stall_speed))
        self._stalled_since = np.where(stalled, np.where(restart, now, self._stalled_since), np.nan)
        self._stall_speed0 = np.where(restart, advancing, self._stall_speed0)
        self._stall_push = np.where(restart, push, self._stall_push)
        held = np.where(stalled, now - self._stalled_since, -np.inf)
        j = int(np.argmax(held))
        if held[j] < lim.stall_time:
            return None
        return (f"joint {j + 1} held at {abs(effort[j]):.1f} N m (limit {lim.effort_max[j]:g} N m) for "
                f"{held[j] * 1000:.0f} ms without advancing: pressing on something?")

    def trustworthy(self, state: ArmState, now: float) -> bool:
        """A measurement recent and finite enough to hold the arm where it says the arm is."""
        return now - state.stamp <= self.limits.state_timeout and bool(np.all(np.isfinite(state.q)))

    def check(self, state: ArmState, q_sent: np.ndarray | None, now: float,
              v_sent: np.ndarray | None = None, tcp: np.ndarray | None = None,
              allowed_outside: float = 0.0) -> str | None:
        """Why the arm must stop now, or None while what the joints do is within bounds.

        ``tcp`` is the TCP position forward kinematics gives for the measured joints, and
        ``allowed_outside`` how far outside the box the command itself was (an arm started
        outside is let back in)."""
        age = now - state.stamp
        if not np.isfinite(age) or age > self.limits.state_timeout:
            return (f"joint state is stale: the newest is {age:.3f} s old "
                    f"(limit {self.limits.state_timeout:.3f} s)")
        q, qd = np.asarray(state.q, dtype=float), np.asarray(state.qd, dtype=float)
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
            return "joint state holds NaN or Inf"
        over = np.abs(qd) / self.qd_trip
        j = int(np.argmax(over))
        if over[j] > 1.0:
            return (f"joint {j + 1} measured at {abs(qd[j]):.2f} rad/s, over its limit "
                    f"{self.limits.qd_max[j]:.2f} rad/s (+{self.limits.velocity_margin:.0%})")
        stall = self._stall(state)
        if stall:
            return stall
        past = np.maximum(self.soft_lower - q, q - self.soft_upper) - self.q_tolerance
        j = int(np.argmax(past))
        if past[j] > 0:
            hard = self.limits.q_lower[j] if q[j] < self.soft_lower[j] else self.limits.q_upper[j]
            return (f"joint {j + 1} measured at {q[j]:.4f} rad, pushed past its soft limit toward its "
                    f"hard limit {hard:.4f} rad (nothing commanded it there): pressing on something?")
        if tcp is not None:
            out = box_distance(tcp, self.limits.workspace_min, self.limits.workspace_max)
            if out > allowed_outside + self.limits.workspace_tolerance:
                return (f"the TCP is measured {out * 1000:.1f} mm outside the workspace box at "
                        f"{np.round(tcp, 3).tolist()} (nothing commanded it there): dragged, or collided?")
        if q_sent is not None:
            # a joint following a moving command lags it by its speed times the servo's and the
            # loop's delay; a blocked joint falls behind without bound
            allowed = self.limits.tracking_error + self.limits.tracking_lag * (
                np.abs(v_sent) if v_sent is not None else 0.0)
            over = np.abs(q - q_sent) - allowed
            j = int(np.argmax(over))
            if over[j] > 0:
                return (f"joint {j + 1} is {abs(q[j] - q_sent[j]):.3f} rad from where it was commanded "
                        f"(allowed {np.broadcast_to(allowed, q.shape)[j]:.3f} rad at its speed): "
                        "blocked or collided?")
        return None

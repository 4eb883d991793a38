"""The safety filter: the one gate between any command and the joints.

Every mode of the controller (twist, pose, trajectory, hold) produces a joint target and
this filter turns it into what the arm is actually sent: non-finite targets are refused,
positions clamped inside the joint limits, velocity and acceleration limited (braking in time
to stop at a target that jumped ahead, and in time to stop inside the workspace box), and a
target whose TCP would leave the workspace box is not sent. Each refusal is reported with its reason.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_learning.config import SafetyLimits
from robot_learning.control.kinematics import Kinematics, tcp_positions

LOG_EVERY_S = 1.0
_NUMBERS = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def box_distance(pos: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """How far a point lies outside an axis-aligned box (0 inside)."""
    off = np.maximum(lower - pos, 0.0) + np.maximum(pos - upper, 0.0)
    return math.sqrt(float(off @ off))


class CommandRejected(ValueError):
    """A command was refused before it could move the arm; the message says why."""


@dataclass
class Rejection:
    stamp: float
    reason: str


def require_finite(name: str, *arrays) -> None:
    """Refuse NaN/Inf anywhere in a command."""
    for a in arrays:
        if not np.all(np.isfinite(np.asarray(a, dtype=float))):
            raise CommandRejected(f"{name}: non-finite value (NaN or Inf) in command")


class SafetyFilter:
    """Limits a stream of joint targets at a fixed period ``dt``."""

    def __init__(self, limits: SafetyLimits, kin: Kinematics, dt: float,
                 log: Callable[[str], None] | None = None):
        self.limits = limits
        self.kin = kin
        self.dt = dt
        self.lower, self.upper = limits.soft_lower, limits.soft_upper
        self.q = np.zeros(len(limits.q_lower))
        self.v = np.zeros_like(self.q)
        self._q_des = self.q.copy()
        self.rejections: deque[Rejection] = deque(maxlen=256)
        self._log = log or (lambda msg: None)
        self._logged: dict[str, tuple[float, int]] = {}  # kind of reason -> (last logged, suppressed since)
        self._outside = 0.0
        self._pos = np.zeros(3)  # the TCP at ``q``

    def reset(self, q: np.ndarray) -> None:
        """Start from the measured position at rest (start-up, after an e-stop)."""
        self.q = np.clip(np.asarray(q, dtype=float), self.lower, self.upper)
        self.v = np.zeros_like(self.q)
        self._q_des = self.q.copy()
        self._pos = self.kin.fk(self.q)[0]
        self._outside = self.outside_distance(self._pos)

    def reject(self, stamp: float, reason: str) -> None:
        """Record a refusal and log it: at once the first time, then at most once per
        ``LOG_EVERY_S`` per kind of reason (numbers aside), with how many were not logged.
        A command that keeps pushing into a limit is refused at the control rate; logging
        each one buried everything else in the log."""
        self.rejections.append(Rejection(stamp, reason))
        kind = _NUMBERS.sub("#", reason)
        now = time.monotonic()
        last, suppressed = self._logged.get(kind, (-np.inf, 0))
        if now - last < LOG_EVERY_S:
            self._logged[kind] = (last, suppressed + 1)
            return
        self._log(reason if not suppressed else f"{reason} ({suppressed} more like it not logged)")
        self._logged[kind] = (now, 0)

    def in_workspace(self, pos: np.ndarray) -> bool:
        return self.outside_distance(pos) == 0.0

    def outside_distance(self, pos: np.ndarray) -> float:
        """How far a point lies outside the workspace box (0 inside)."""
        return box_distance(pos, self.limits.workspace_min, self.limits.workspace_max)

    @property
    def allowed_outside(self) -> float:
        """How far outside the box the commanded TCP may be: 0, or less each period for an arm
        that started outside and is moving back."""
        return self._outside

    def _stops_inside(self, q: np.ndarray, v: np.ndarray) -> bool:
        """Whether braking every joint at its acceleration limit from ``q`` at ``v`` ends with the
        TCP no further outside the box than now (discrete braking runs about v*dt further)."""
        if not np.any(v):
            return True
        reach = np.abs(v) * (np.abs(v) / (2.0 * self.limits.qdd_max) + self.dt)
        q_stop = np.minimum(np.maximum(q + np.sign(v) * reach, self.lower), self.upper)
        return self.outside_distance(tcp_positions(self.kin.robot, q_stop)[0]) <= self._outside + 1e-9

    def check_joint_targets(self, qs: np.ndarray) -> str | None:
        """Why a list of joint targets (n, dof) may not be commanded at all, or None if it may.

        Every point is checked at once (limits, then the TCP of each point against the box),
        so a plan of thousands of points is judged in milliseconds."""
        qs = np.atleast_2d(np.asarray(qs, dtype=float))
        if not np.all(np.isfinite(qs)):
            return "non-finite joint target"
        bad = (qs < self.limits.q_lower) | (qs > self.limits.q_upper)
        if bad.any():
            i = int(np.nonzero(bad.any(axis=1))[0][0])
            joints = ", ".join(str(j + 1) for j in np.nonzero(bad[i])[0])
            return f"point {i}: joint target outside the position limits at joint(s) {joints}"
        pos = tcp_positions(self.kin.robot, qs)
        off = np.any((pos < self.limits.workspace_min) | (pos > self.limits.workspace_max), axis=1)
        if off.any():
            i = int(np.nonzero(off)[0][0])
            return f"point {i}: joint target puts the TCP at {np.round(pos[i], 3).tolist()}, outside the workspace box"
        return None

    def filter(self, q_des: np.ndarray, stamp: float) -> np.ndarray:
        """The next joint position to send, one period after the previous one."""
        q_des = np.asarray(q_des, dtype=float)
        if not np.all(np.isfinite(q_des)):
            self.reject(stamp, "safety: non-finite joint target, holding")
            q_des = self.q
        # np.minimum/np.maximum rather than np.clip: the same, without np.clip's Python layers
        # (this runs at the control rate, and the gym env runs it 12 times per env step)
        clamped = np.minimum(np.maximum(q_des, self.lower), self.upper)
        if np.any(clamped != q_des):
            self.reject(stamp, "safety: joint target clamped to the position limits")
        err = clamped - self.q
        # Brake in time to stop at a target that jumped ahead, without slowing a target that
        # streams along (its own speed is added to the stopping speed).
        v_target = np.abs(clamped - self._q_des) / self.dt
        self._q_des = clamped
        v_stop = np.sqrt(2.0 * self.limits.qdd_max * np.abs(err)) + v_target
        v = np.minimum(np.maximum(err / self.dt, -v_stop), v_stop)
        dv = self.limits.qdd_max * self.dt
        v = np.minimum(np.maximum(v, self.v - dv), self.v + dv)
        v = np.minimum(np.maximum(v, -self.limits.qd_max), self.limits.qd_max)
        q_new = np.minimum(np.maximum(self.q + v * self.dt, self.lower), self.upper)
        if not self._stops_inside(q_new, v):
            # Going on, the arm could no longer stop inside the box: brake at the acceleration
            # limit instead, so the box never has to be enforced by an instant stop.
            v = self.v - np.sign(self.v) * np.minimum(np.abs(self.v), dv)
            q_new = np.minimum(np.maximum(self.q + v * self.dt, self.lower), self.upper)
        pos, _ = self.kin.fk(q_new)
        # Outside the box (an arm started there, or one held where a protective stop found it)
        # only motion that brings the TCP back towards the box runs (mostly: its distance to
        # the box shrinks by at least half the distance it moves): moving along a face, a
        # servo's lag and a push against the table would carry the arm a little further out
        # each time it is released, and the box would creep outwards stop by stop. The braking
        # above makes this last resort rare: it stops at once.
        outside = self.outside_distance(pos)
        moved = float(np.linalg.norm(pos - self._pos))
        if outside > self._outside + 1e-9 or (outside > 0.0 and self._outside - outside < 0.5 * moved):
            if self._outside == 0.0:
                self.reject(stamp, f"safety: TCP would leave the workspace box at {np.round(pos, 3).tolist()}, holding")
            else:
                self.reject(stamp, f"safety: the TCP is outside the workspace box; only motion back towards it "
                                   f"runs (this one ends at {np.round(pos, 3).tolist()}), holding")
            q_new = self.q
        else:
            self._outside, self._pos = outside, pos
        self.v = (q_new - self.q) / self.dt
        self.q = q_new
        return q_new.copy()

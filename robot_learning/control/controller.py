"""The arm controller: every command mode ends in one joint target per control period,
and that target always passes the safety filter before the backend sees it.

Modes: twist (streamed TCP velocity), pose (streamed or one-shot TCP target), joint
trajectory (points with time_from_start), hold. Streaming modes are watched: without a
fresh command within ``command_timeout`` the arm holds. The e-stop latches until
``reset_estop`` is called explicitly.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.control.backend import ArmState
from robot_learning.control.kinematics import Kinematics, damped_pinv_step
from robot_learning.control.safety import CommandRejected, SafetyFilter, require_finite
from robot_learning.transforms import orientation_error, quat_to_mat


class Mode(enum.Enum):
    HOLD = "hold"
    TWIST = "twist"
    POSE = "pose"
    TRAJECTORY = "trajectory"
    ESTOP = "estop"


@dataclass
class Trajectory:
    start: float
    times: np.ndarray      # (k,) seconds from start, increasing, first > 0
    points: np.ndarray     # (k, dof)
    q0: np.ndarray         # where the arm was when it started


class ArmController:
    """Turns commands into safe joint targets at a fixed control period."""

    POSE_GAIN = 4.0        # 1/s, pose error to TCP velocity
    NULLSPACE_GAIN = 1.0   # 1/s, pulls the redundant joint towards home

    def __init__(self, robot: RobotConfig, dt: float, log: Callable[[str], None] | None = None):
        self.robot = robot
        self.dt = dt
        self.kin = Kinematics(robot)
        self._log = log or (lambda msg: None)
        self.safety = SafetyFilter(robot.limits, self.kin, dt, log=self._log)
        self.mode = Mode.HOLD
        self.twist = np.zeros(6)
        self.pose_target: tuple[np.ndarray, np.ndarray] | None = None
        self.traj: Trajectory | None = None
        self.last_command = -np.inf
        self.gripper = 0.0  # 0 open .. 1 closed
        self.estopped = False
        self.timed_out = False

    # ---- start-up -------------------------------------------------------------------
    def sync(self, state: ArmState) -> None:
        """Adopt the measured position as the held one (start-up, e-stop reset)."""
        self.safety.reset(state.q)
        self.mode = Mode.ESTOP if self.estopped else Mode.HOLD

    # ---- commands (each validated, then stored; ``step`` acts on them) --------------
    def _accept(self, now: float) -> None:
        if self.estopped:
            raise CommandRejected("e-stop is latched: call reset_estop before commanding the arm")
        self.last_command = now
        self.timed_out = False

    def _refuse(self, now: float, err: CommandRejected) -> None:
        self.safety.reject(now, str(err))
        raise err

    def command_twist(self, twist: np.ndarray, now: float, tool_frame: bool = False) -> None:
        """TCP velocity [vx vy vz wx wy wz], base frame unless ``tool_frame``."""
        try:
            twist = np.asarray(twist, dtype=float).reshape(6)
            require_finite("twist", twist)
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        if tool_frame:
            rot = quat_to_mat(self.kin.fk(self.safety.q)[1])
            twist = np.concatenate([rot @ twist[:3], rot @ twist[3:]])
        self.twist = self._clip_speed(twist)
        self.mode = Mode.TWIST

    def command_pose(self, pos: np.ndarray, quat: np.ndarray, now: float) -> None:
        """TCP target (base frame, quaternion w x y z), approached at bounded speed."""
        try:
            pos = np.asarray(pos, dtype=float).reshape(3)
            quat = np.asarray(quat, dtype=float).reshape(4)
            require_finite("pose", pos, quat)
            if not np.isclose(np.linalg.norm(quat), 1.0, atol=0.05):
                raise CommandRejected("pose: orientation is not a unit quaternion")
            if not self.safety.in_workspace(pos):
                raise CommandRejected(f"pose: target {np.round(pos, 3).tolist()} is outside the workspace box")
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        self.pose_target = (pos, quat / np.linalg.norm(quat))
        self.mode = Mode.POSE

    def command_trajectory(self, joint_names: list[str], times: np.ndarray,
                           points: np.ndarray, now: float, start: float | None = None) -> None:
        """Joint trajectory; points are checked whole before any of it runs."""
        try:
            times = np.asarray(times, dtype=float).reshape(-1)
            points = np.asarray(points, dtype=float)
            require_finite("trajectory", times, points)
            if points.ndim != 2 or points.shape[0] != times.size or times.size == 0:
                raise CommandRejected("trajectory: need one time_from_start per point and at least one point")
            if sorted(joint_names) != sorted(self.robot.joint_names) or points.shape[1] != self.robot.dof:
                raise CommandRejected(
                    f"trajectory: joint_names must be exactly {self.robot.joint_names}, got {joint_names}")
            order = [joint_names.index(j) for j in self.robot.joint_names]
            points = points[:, order]
            if times[0] <= 0 or np.any(np.diff(times) <= 0):
                raise CommandRejected("trajectory: time_from_start must be positive and increasing")
            for i, p in enumerate(points):
                why = self.safety.check_joint_target(p)
                if why:
                    raise CommandRejected(f"trajectory point {i}: {why}")
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        t0 = now if start is None or start <= 0 else max(start, now - times[-1])
        self.traj = Trajectory(t0, times, points, self.safety.q.copy())
        self.mode = Mode.TRAJECTORY

    def command_gripper(self, closure: float, now: float) -> None:
        """0 = fully open, 1 = fully closed."""
        try:
            require_finite("gripper", [closure])
            if self.estopped:
                raise CommandRejected("e-stop is latched: gripper command ignored")
        except CommandRejected as e:
            self._refuse(now, e)
        self.gripper = float(np.clip(closure, 0.0, 1.0))

    def estop(self, now: float) -> None:
        if not self.estopped:
            self._log("EMERGENCY STOP latched: holding position until reset")
        self.estopped = True
        self.mode = Mode.ESTOP

    def reset_estop(self, state: ArmState) -> None:
        self.estopped = False
        self._log("e-stop reset: holding the current position")
        self.sync(state)

    def hold(self) -> None:
        self.mode = Mode.ESTOP if self.estopped else Mode.HOLD

    # ---- control period ------------------------------------------------------------
    def step(self, state: ArmState, now: float) -> tuple[np.ndarray, float]:
        """Joint target and gripper opening (metres) for this period."""
        if self.mode in (Mode.TWIST, Mode.POSE) and now - self.last_command > self.robot.limits.command_timeout:
            self._log(f"command timeout ({self.robot.limits.command_timeout:.2f} s without a command): holding")
            self.timed_out = True
            self.hold()
        if self.mode == Mode.TWIST:
            q_des = self._twist_target(self.twist)
        elif self.mode == Mode.POSE:
            q_des = self._twist_target(self._pose_twist())
        elif self.mode == Mode.TRAJECTORY:
            q_des = self._trajectory_target(now)
        else:
            # Hold: ask for no motion; the filter brakes within the acceleration limits.
            q_des = self.safety.q
        q = self.safety.filter(q_des, now)
        opening = (1.0 - self.gripper) * self.robot.gripper.max_opening
        return q, opening

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose of the last commanded joint position."""
        return self.kin.fk(self.safety.q)

    def _clip_speed(self, twist: np.ndarray) -> np.ndarray:
        lim = self.robot.limits
        v, w = twist[:3], twist[3:]
        nv, nw = np.linalg.norm(v), np.linalg.norm(w)
        if nv > lim.max_linear_speed:
            v = v * lim.max_linear_speed / nv
        if nw > lim.max_angular_speed:
            w = w * lim.max_angular_speed / nw
        return np.concatenate([v, w])

    def _twist_target(self, twist: np.ndarray) -> np.ndarray:
        q = self.safety.q
        pos, _ = self.kin.fk(q)
        twist = twist.copy()
        lim = self.robot.limits
        nxt = pos + twist[:3] * self.dt
        for ax in range(3):
            above = nxt[ax] > lim.workspace_max[ax] and twist[ax] > 0
            below = nxt[ax] < lim.workspace_min[ax] and twist[ax] < 0
            if above or below:
                twist[ax] = 0.0
                self.safety.reject(self.last_command, f"twist: motion along {'xyz'[ax]} stopped at the workspace box")
        jac = self.kin.jacobian(q)
        qd = damped_pinv_step(jac, twist, self.NULLSPACE_GAIN * (self.robot.home - q))
        return q + qd * self.dt

    def _pose_twist(self) -> np.ndarray:
        pos, quat = self.kin.fk(self.safety.q)
        tpos, tquat = self.pose_target
        twist = np.concatenate([tpos - pos, orientation_error(tquat, quat)]) * self.POSE_GAIN
        return self._clip_speed(twist)

    def _trajectory_target(self, now: float) -> np.ndarray:
        tr = self.traj
        t = now - tr.start
        if t >= tr.times[-1]:
            if np.max(np.abs(self.safety.q - tr.points[-1])) < 1e-4:
                self.mode = Mode.HOLD
            return tr.points[-1]
        times = np.concatenate([[0.0], tr.times])
        pts = np.vstack([tr.q0, tr.points])
        k = int(np.searchsorted(times, max(t, 0.0), side="right")) - 1
        s = (t - times[k]) / (times[k + 1] - times[k])
        s = 3 * s**2 - 2 * s**3  # smooth start and stop at each point
        return pts[k] + s * (pts[k + 1] - pts[k])

"""The sim as a robot behind ros2_control: what its controllers do with the commands they get.

In hardware mode the sim node runs no controller of ours. It does what a robot with
ros2_control does: joint_state_broadcaster's ``/joint_states``, and the controller named
in the robot file taking its standard command topic. A forward position controller passes
positions through to the joints' servos; a forward velocity controller integrates velocities
(and, like the real one, keeps the last velocity until told otherwise); a
joint_trajectory_controller interpolates from where it is to the points at their due times.
Everything the arm node's safety must catch reaches the joints, as it would on a real arm.

``CommandLockstep`` keeps the sim in step with the arm node that drives it, as a simulator
running ros2_control inside its own step does (gz_ros2_control): after each joint state it
publishes, the sim waits for the controller's next command before it steps on. A robot's
real-time controller meets its period; a sim and an arm node sharing a busy host do not, and
a stiff servo fed commands in bursts (nothing for 20 ms, then the newest, several periods
ahead) saturates a 12 N m wrist in free motion, which the arm node rightly stops on.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.control.ros2_control import Ros2ControlConfig


class ControllerRejected(ValueError):
    """A command the emulated ros2_control controller would refuse (wrong size, not finite)."""


class SimControllers:
    """Joint position targets for the sim's servos, from ros2_control-style commands."""

    def __init__(self, robot: RobotConfig, cfg: Ros2ControlConfig, q0: np.ndarray, opening: float):
        self.robot, self.cfg = robot, cfg
        self.order = np.array([cfg.arm.joints.index(j) for j in robot.joint_names])  # controller -> robot
        self.target = np.asarray(q0, dtype=float).copy()
        self.velocity = np.zeros(robot.dof)
        self.opening = float(opening)
        self._traj: tuple[float, np.ndarray, np.ndarray] | None = None  # (start, knot times, knots)
        self.commands = 0

    def reset(self, q0: np.ndarray, opening: float) -> None:
        self.target = np.asarray(q0, dtype=float).copy()
        self.velocity[:] = 0.0
        self.opening = float(opening)
        self._traj = None

    def _vector(self, values, n: int, what: str) -> np.ndarray:
        v = np.asarray(values, dtype=float).reshape(-1)
        if v.size != n or not np.all(np.isfinite(v)):
            raise ControllerRejected(f"{what}: expected {n} finite values, got {v.size}")
        return v

    def command_arm(self, values, now: float) -> None:
        """A Float64MultiArray on the forward controller's topic (controller joint order)."""
        v = self._vector(values, self.robot.dof, self.cfg.arm.topic)[self.order]
        if self.cfg.arm.interface == "velocity":
            self.velocity = v
        else:
            self.target = v
        self._traj = None
        self.commands += 1

    def command_trajectory(self, joint_names: list[str], times, points, start: float, now: float) -> None:
        """A JointTrajectory on the trajectory controller's topic; replaces the running one."""
        if sorted(joint_names) != sorted(self.robot.joint_names):
            raise ControllerRejected(f"{self.cfg.arm.topic}: joint_names must be {self.robot.joint_names}")
        order = [joint_names.index(j) for j in self.robot.joint_names]
        pts = np.asarray(points, dtype=float)
        times = np.asarray(times, dtype=float).reshape(-1)
        if pts.ndim != 2 or pts.shape != (times.size, self.robot.dof) or not np.all(np.isfinite(pts)):
            raise ControllerRejected(f"{self.cfg.arm.topic}: malformed points")
        if times.size == 0 or np.any(np.diff(times) <= 0):
            raise ControllerRejected(f"{self.cfg.arm.topic}: time_from_start must increase")
        t0 = now if start <= 0 else start
        knots_t = np.concatenate([[now - t0], times]) if times[0] > now - t0 else times
        knots = np.vstack([self.target, pts[:, order]]) if times[0] > now - t0 else pts[:, order]
        self._traj = (t0, knots_t, knots)
        self.velocity[:] = 0.0
        self.commands += 1

    def command_gripper(self, values) -> None:
        v = self._vector(values, len(self.cfg.gripper.joints), self.cfg.gripper.topic)
        self.opening = float(self.cfg.gripper_offset + self.cfg.gripper_scale * v[0])

    def targets(self, now: float, dt: float) -> tuple[np.ndarray, float]:
        """Servo targets for this control period."""
        if self._traj is not None:
            t0, kt, kq = self._traj
            t = now - t0
            if t <= kt[0]:
                self.target = kq[0].copy()
            elif t >= kt[-1]:
                self.target = kq[-1].copy()
            else:
                k = int(np.searchsorted(kt, t, side="right")) - 1
                s = (t - kt[k]) / (kt[k + 1] - kt[k])
                self.target = kq[k] + s * (kq[k + 1] - kq[k])
        elif self.cfg.arm.interface == "velocity":
            self.target = self.target + self.velocity * dt
        lim = self.robot.limits
        self.target = np.clip(self.target, lim.q_lower, lim.q_upper)  # the joints' own end stops
        return self.target, self.opening


class CommandLockstep:
    """The sim's wait, after each joint state it publishes, for the command that answers it.

    Only while an arm node is answering: with none (not started yet, killed, paused) the sim
    runs free after one ``timeout``, so the arm node's own watchdogs, not the sim, notice a
    silent side, and a sim with nothing connected does not crawl."""

    def __init__(self, timeout: float = 0.1, live: float = 1.0):
        self.timeout, self.live = timeout, live      # wall seconds
        self._cond = threading.Condition()
        self._count = 0
        self._last = -np.inf                         # monotonic time of the newest command
        self.waits = 0
        self.timeouts = 0

    def arrived(self) -> None:
        """A command reached the controller (any thread)."""
        with self._cond:
            self._count += 1
            self._last = time.monotonic()
            self._cond.notify_all()

    def mark(self) -> int:
        """Called just before a joint state goes out: what ``wait`` must see exceeded."""
        with self._cond:
            return self._count

    def wait(self, mark: int) -> bool:
        """Block until a command newer than ``mark`` arrived, or ``timeout``; True if one did.
        Returns at once while no arm node has answered within ``live`` seconds."""
        with self._cond:
            if self._count > mark:
                return True
            if time.monotonic() - self._last > self.live:
                return False
            self.waits += 1
            ok = self._cond.wait_for(lambda: self._count > mark, timeout=self.timeout)
            if not ok:
                self.timeouts += 1
                self._last = -np.inf  # stopped answering: run free until it answers again
            return ok

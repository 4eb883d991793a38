"""What a ros2_control robot offers, without ROS: its config, its joint states, its commands.

A robot behind ros2_control publishes ``/joint_states`` (joint_state_broadcaster) and takes
commands through one of the standard controllers:

- ``position`` / ``velocity``: a forward_command_controller, ``std_msgs/Float64MultiArray``
  on ``/<controller>/commands``, one number per joint in the controller's joint order;
- ``joint_trajectory``: a joint_trajectory_controller, ``trajectory_msgs/JointTrajectory`` on
  ``/<controller>/joint_trajectory``, streamed as one point due one period ahead.

The ROS side (the arm node's backend, the sim in hardware mode) only moves these arrays in
and out of messages; what they mean lives here, so it is tested without a graph.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_learning.config import ConfigError, RobotConfig, load_yaml
from robot_learning.control.backend import ArmState

INTERFACES = ("position", "velocity", "joint_trajectory")


@dataclass(frozen=True)
class ControllerTopic:
    interface: str          # position | velocity | joint_trajectory
    topic: str
    joints: list[str]       # the controller's joint order


@dataclass(frozen=True)
class Ros2ControlConfig:
    joint_states: str
    rate: float             # Hz the arm node runs its loop at (the commands stream at this rate)
    arm: ControllerTopic
    gripper: ControllerTopic | None
    gripper_scale: float    # opening between the fingers (m) = offset + scale x the gripper joint's position
    gripper_offset: float = 0.0


def _controller(d: dict[str, Any], where: str, default_joints: list[str]) -> ControllerTopic:
    interface = str(d.get("interface", ""))
    if interface not in INTERFACES:
        raise ConfigError(f"{where}.interface must be one of {', '.join(INTERFACES)}, not '{interface}'")
    topic = d.get("topic")
    if not isinstance(topic, str) or not topic.startswith("/"):
        raise ConfigError(f"{where}.topic must be an absolute topic name such as /forward_position_controller/commands")
    joints = list(d.get("joints", default_joints))
    return ControllerTopic(interface, topic, joints)


def load_ros2_control(robot: RobotConfig) -> Ros2ControlConfig:
    """The ``ros2_control`` section of a robot file (hardware/robots/*.yaml)."""
    d = load_yaml(robot.source)
    src = d["_source"]
    rc = d.get("ros2_control")
    if not isinstance(rc, dict):
        raise ConfigError(f"{src}: no 'ros2_control' section: name the robot's joint_states topic and "
                          "its arm controller (see hardware/robots/fr3.yaml for an example)")
    arm = _controller(rc.get("arm", {}), f"{src}: ros2_control.arm", robot.joint_names)
    if sorted(arm.joints) != sorted(robot.joint_names):
        raise ConfigError(f"{src}: ros2_control.arm.joints must be the robot's joints {robot.joint_names}")
    grip = rc.get("gripper")
    gripper = _controller(grip, f"{src}: ros2_control.gripper", robot.gripper.joint_names[:1]) if grip else None
    if grip and float(grip.get("scale", 1.0)) == 0.0:
        raise ConfigError(f"{src}: ros2_control.gripper.scale must not be zero")
    if gripper is not None and gripper.interface != "position":
        raise ConfigError(f"{src}: ros2_control.gripper.interface must be position")
    return Ros2ControlConfig(
        joint_states=str(rc.get("joint_states", "/joint_states")),
        rate=float(rc.get("rate", 250.0)),
        arm=arm,
        gripper=gripper,
        gripper_scale=float((grip or {}).get("scale", 1.0)),
        gripper_offset=float((grip or {}).get("offset", 0.0)),
    )


SILENT_S = 2.0  # sim time: a hardware side whose clock and state both stop this long is gone


class JointStateInput:
    """The newest measured state of the arm, from /joint_states messages, thread-safe.

    ``update`` runs on the subscription's thread; ``read`` in the control loop. How old a state
    is, is handed to the controller as its stamp:

    - on a real robot (wall clock), the age since it arrived, measured on the monotonic clock:
      a driver's header stamps come from another computer's clock, arrival does not;
    - with ``sim_time`` (the sim standing in as hardware), its header stamp: a sim that stalls on
      a busy machine stalls its clock too and is not stale; one that died stops both, so a state
      not renewed for ``SILENT_S`` wall seconds is reported as stale all the same."""

    def __init__(self, robot: RobotConfig, cfg: Ros2ControlConfig, clock: Callable[[], float],
                 sim_time: bool = False):
        self.robot, self.cfg, self.clock, self.sim_time = robot, cfg, clock, sim_time
        self._stamp = -np.inf
        self.seq = 0  # counts the arm states received
        self.lock = threading.Lock()
        self._new = threading.Condition(self.lock)
        self._q: np.ndarray | None = None
        self._qd = np.zeros(robot.dof)
        self._effort = np.zeros(robot.dof)
        self._gripper = 0.0
        self._arrived = -np.inf
        self._index: tuple[list[str], np.ndarray | None, int | None] | None = None
        self.malformed = 0

    def _indices(self, names: list[str]) -> tuple[np.ndarray | None, int | None]:
        """Where the arm's joints (in robot order) and the gripper joint sit in this message."""
        if self._index is None or self._index[0] != names:
            pos = {n: i for i, n in enumerate(names)}
            arm = np.array([pos[j] for j in self.robot.joint_names]) if all(
                j in pos for j in self.robot.joint_names) else None
            g = self.cfg.gripper.joints[0] if self.cfg.gripper else self.robot.gripper.joint_names[0]
            self._index = (list(names), arm, pos.get(g))
        return self._index[1], self._index[2]

    def update(self, names: list[str], position, velocity, effort, stamp: float = 0.0) -> bool:
        """One JointState message; False (and counted) when it does not describe the arm."""
        arm, grip = self._indices(names)
        position = np.asarray(position, dtype=float)
        if arm is None or position.size != len(names):
            # a gripper-only or partial message (joint_state_broadcaster may publish per group)
            if grip is not None and position.size == len(names) and np.isfinite(position[grip]):
                with self.lock:
                    self._gripper = self._opening(float(position[grip]))
                return True
            self.malformed += 1
            return False
        velocity = np.asarray(velocity, dtype=float)
        effort = np.asarray(effort, dtype=float)
        with self.lock:
            self._q = position[arm]
            self._qd = velocity[arm] if velocity.size == len(names) else np.zeros(self.robot.dof)
            self._effort = effort[arm] if effort.size == len(names) else np.zeros(self.robot.dof)
            if grip is not None:
                self._gripper = self._opening(float(position[grip]))
            self._arrived = time.monotonic()
            self._stamp = stamp
            self.seq += 1
            self._new.notify_all()
        return True

    def _opening(self, position: float) -> float:
        return self.cfg.gripper_offset + self.cfg.gripper_scale * position

    def has_state(self) -> bool:
        return self._q is not None

    def age(self) -> float:
        return time.monotonic() - self._arrived

    def read(self) -> ArmState:
        with self.lock:
            if self._q is None:
                raise RuntimeError("no joint state received yet")
            age = time.monotonic() - self._arrived
            if not self.sim_time:
                stamp = self.clock() - age
            else:
                stamp = self._stamp if age < SILENT_S else -np.inf
            return ArmState(stamp, self._q.copy(), self._qd.copy(), self._effort.copy(), self._gripper)

    def wait_newer(self, seq: int, timeout: float) -> bool:
        """Wait until a state newer than ``seq`` has arrived; False on timeout."""
        with self._new:
            return self._new.wait_for(lambda: self.seq > seq, timeout)


class CommandOutput:
    """Joint targets from the controller, as the configured ros2_control controller wants them."""

    def __init__(self, robot: RobotConfig, cfg: Ros2ControlConfig):
        self.cfg = cfg
        self.dt = 1.0 / cfg.rate
        self.order = np.array([robot.joint_names.index(j) for j in cfg.arm.joints])
        self._q_prev: np.ndarray | None = None

    def arm(self, q: np.ndarray) -> np.ndarray:
        """Positions (position, joint_trajectory) or velocities (velocity) in controller order."""
        q = np.asarray(q, dtype=float)
        if self.cfg.arm.interface == "velocity":
            qd = np.zeros_like(q) if self._q_prev is None else (q - self._q_prev) / self.dt
            self._q_prev = q.copy()
            return qd[self.order]
        return q[self.order]

    def gripper(self, opening: float) -> np.ndarray:
        n = len(self.cfg.gripper.joints) if self.cfg.gripper else 1
        return np.full(n, (opening - self.cfg.gripper_offset) / self.cfg.gripper_scale)

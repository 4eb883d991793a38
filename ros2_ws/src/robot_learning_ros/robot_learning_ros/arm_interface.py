"""The arm controller's ROS 2 interface, shared by every backend (sim now, ros2_control next).

Subscribes the standard arm command topics (README: What runs), hands each command to
``robot_learning.control.ArmController`` (which validates it and refuses it with a reason)
and publishes the arm's state. Command callbacks run on the executor thread; the control
loop runs elsewhere, so every controller call goes through one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, MultiDOFJointTrajectory

from robot_learning.control.backend import ArmState
from robot_learning.control.controller import ArmController
from robot_learning.control.safety import CommandRejected
from robot_learning.sim.topics import arm_state_arrays
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    STATE_QOS,
    from_stamp,
    joint_state_msg,
    pose_from_msg,
    pose_msg,
    twist_from_msg,
)


class ArmInterface:
    """Wires an ArmController to the standard arm topics on ``node``."""

    def __init__(self, node: Node, controller: ArmController, clock: Callable[[], float],
                 read_state: Callable[[], ArmState], joint_states: bool = True, description: str = ""):
        """``joint_states``: publish /joint_states too (False where a joint_state_broadcaster does).
        ``description``: the robot's URDF, latched on /robot_description for rviz, MoveIt and
        robot_state_publisher (which turns it and /joint_states into /tf where tf2 is installed)."""
        self.node, self.ctl, self.clock, self.read_state = node, controller, clock, read_state
        self.lock = threading.Lock()
        robot = controller.robot
        self.base_frame = robot.base_frame
        self.joint_names = robot.joint_names + robot.gripper.joint_names
        node.create_subscription(TwistStamped, "/arm/command/twist", self._on_twist, COMMAND_QOS)
        node.create_subscription(PoseStamped, "/arm/command/pose", self._on_pose, COMMAND_QOS)
        node.create_subscription(JointTrajectory, "/arm/command/joint_trajectory", self._on_traj, COMMAND_QOS)
        node.create_subscription(MultiDOFJointTrajectory, "/arm/command/tcp_trajectory", self._on_tcp_plan,
                                 COMMAND_QOS)
        node.create_subscription(Float64, "/gripper/command", self._on_gripper, COMMAND_QOS)
        node.create_subscription(Bool, "/emergency_stop", self._on_estop, LATCHED_QOS)
        node.create_service(Trigger, "/arm/reset_emergency_stop", self._on_reset_estop)
        node.create_service(Trigger, "/arm/reset_protective_stop", self._on_reset_protective_stop)
        self.pub_js = node.create_publisher(JointState, "/joint_states", STATE_QOS) if joint_states else None
        self.pub_pose = node.create_publisher(PoseStamped, "/arm/ee_pose", STATE_QOS)
        self.pub_gripper = node.create_publisher(JointState, "/gripper/state", STATE_QOS)
        self.pub_estop_state = node.create_publisher(Bool, "/arm/emergency_stop_active", LATCHED_QOS)
        self.pub_estop_state.publish(Bool(data=False))
        # the protective stop's reason while latched, "" when clear (latched for late joiners)
        self.pub_fault = node.create_publisher(String, "/arm/protective_stop", LATCHED_QOS)
        self._fault_published: str | None = None
        self._msg_js, self._msg_pose, self._msg_gripper = JointState(), PoseStamped(), JointState()
        if description:
            self.pub_description = node.create_publisher(String, "/robot_description", LATCHED_QOS)
            self.pub_description.publish(String(data=description))

    def _run(self, fn) -> None:
        """Hand a command to the controller under the lock. A refusal is already recorded and
        logged (rate-limited, with its reason) by the controller: not logged a second time."""
        with self.lock:
            try:
                fn()
            except CommandRejected:
                pass

    def _on_twist(self, m: TwistStamped) -> None:
        frame, stamp = m.header.frame_id, from_stamp(m.header.stamp)
        self._run(lambda: self.ctl.command_twist(twist_from_msg(m), self.clock(), frame, stamp))

    def _on_pose(self, m: PoseStamped) -> None:
        pos, quat = pose_from_msg(m)
        frame, stamp = m.header.frame_id, from_stamp(m.header.stamp)
        self._run(lambda: self.ctl.command_pose(pos, quat, self.clock(), frame, stamp))

    def _on_traj(self, m: JointTrajectory) -> None:
        """Checked whole before the lock is taken: a plan of thousands of points is judged here,
        on the executor thread, while the control loop keeps its period."""
        try:
            times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points])
            try:
                pts = np.array([list(p.positions) for p in m.points], dtype=float)
            except ValueError:
                raise CommandRejected("trajectory: points have different numbers of positions") from None
            times, pts = self.ctl.check_trajectory(list(m.joint_names), times, pts)
        except CommandRejected as e:
            self.ctl.refuse(self.clock(), str(e))
            return
        start = from_stamp(m.header.stamp)
        self._run(lambda: self.ctl.command_trajectory(list(m.joint_names), times, pts, self.clock(), start,
                                                      checked=True))

    def _on_tcp_plan(self, m: MultiDOFJointTrajectory) -> None:
        """A TCP plan: one multi-DOF joint (the TCP), a transform per point, in the base frame."""
        try:
            if len(m.joint_names) != 1 or any(len(p.transforms) != 1 for p in m.points):
                raise CommandRejected("tcp plan: exactly one joint (the TCP) with one transform per point")
            times = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points])
            tf = [p.transforms[0] for p in m.points]
            pos = np.array([[t.translation.x, t.translation.y, t.translation.z] for t in tf]).reshape(-1, 3)
            quat = np.array([[t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z] for t in tf]).reshape(-1, 4)
        except CommandRejected as e:
            self.ctl.refuse(self.clock(), str(e))
            return
        start, frame = from_stamp(m.header.stamp), m.header.frame_id
        self._run(lambda: self.ctl.command_tcp_plan(times, pos, quat, self.clock(), start, frame))

    def _on_gripper(self, m: Float64) -> None:
        self._run(lambda: self.ctl.command_gripper(m.data, self.clock()))

    def _on_estop(self, m: Bool) -> None:
        if m.data:
            with self.lock:
                self.ctl.estop(self.clock())
            self.node.get_logger().error("EMERGENCY STOP: latched, holding; call /arm/reset_emergency_stop to release")
            self.pub_estop_state.publish(Bool(data=True))

    def _on_reset_estop(self, req, res):
        with self.lock:
            self.ctl.reset_estop(self.read_state())
        self.pub_estop_state.publish(Bool(data=False))
        res.success, res.message = True, "e-stop released; the arm holds its current position"
        return res

    def _on_reset_protective_stop(self, req, res):
        with self.lock:
            was = self.ctl.fault
            try:
                self.ctl.reset_protective_stop(self.read_state())
            except CommandRejected as e:
                res.success, res.message = False, f"protective stop not released: {e}"
                self.node.get_logger().warning(res.message, throttle_duration_sec=1.0)
                return res
        res.success = True
        res.message = (f"protective stop released (it was: {was}); the arm holds its current position"
                       if was else "no protective stop was latched")
        return res

    def step(self, state: ArmState, now: float) -> tuple[np.ndarray, float]:
        with self.lock:
            out = self.ctl.step(state, now)
            fault = self.ctl.fault or ""
        if fault != self._fault_published:  # tripped or released: say so once, latched
            self._fault_published = fault
            self.pub_fault.publish(String(data=fault))
        return out

    def publish_state(self, state: ArmState, tcp: tuple[np.ndarray, np.ndarray], t: float) -> None:
        """Called from the control loop only: its messages are refilled, not rebuilt, every period."""
        joints, gripper = arm_state_arrays(state)
        n = len(state.q)
        if self.pub_js is not None:
            self.pub_js.publish(joint_state_msg(self.joint_names, joints["position"], joints["velocity"],
                                                joints["effort"], t, reuse=self._msg_js))
        self.pub_pose.publish(pose_msg(tcp[0], tcp[1], t, self.base_frame, reuse=self._msg_pose))
        self.pub_gripper.publish(joint_state_msg(self.joint_names[n:], gripper["position"], gripper["velocity"],
                                                 gripper["effort"], t, reuse=self._msg_gripper))

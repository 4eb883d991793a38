"""command_mux: the policy's commands and the operator's in, the arm's command topics out.

The operator wins while /teleop/engaged is true; handovers are smoothed by
``robot_learning.teleop.mux.CommandMux``. Publishes what went to the arm on /arm/command/twist
and /gripper/command, who sent it on /control_source (policy, teleop, hold) and whether the
operator is overriding a running policy on /intervention. Pose, joint-trajectory and TCP-plan
(/policy/command/tcp_trajectory) commands from the policy pass through while the operator is
not engaged.
"""

from __future__ import annotations

import time

from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from std_msgs.msg import Bool, Float64, String
from trajectory_msgs.msg import JointTrajectory, MultiDOFJointTrajectory

from robot_learning.teleop.mux import CommandMux, MuxConfig
from robot_learning_ros.msgs import COMMAND_QOS, LATCHED_QOS, twist_from_msg, twist_msg
from robot_learning_ros.runtime import lenient_params, run_node


class CommandMuxNode(Node):
    def __init__(self):
        super().__init__("command_mux")
        p = lenient_params(self)
        cfg = MuxConfig(max_linear_acc=float(p("max_linear_acc", MuxConfig.max_linear_acc).value),
                        max_angular_acc=float(p("max_angular_acc", MuxConfig.max_angular_acc).value),
                        command_timeout=float(p("command_timeout", MuxConfig.command_timeout).value))
        self.base_frame = str(p("base_frame", "panda_link0").value)
        self.mux = CommandMux(cfg)
        self.pub_twist = self.create_publisher(TwistStamped, "/arm/command/twist", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, "/gripper/command", COMMAND_QOS)
        self.pub_pose = self.create_publisher(PoseStamped, "/arm/command/pose", COMMAND_QOS)
        self.pub_traj = self.create_publisher(JointTrajectory, "/arm/command/joint_trajectory", COMMAND_QOS)
        self.pub_plan = self.create_publisher(MultiDOFJointTrajectory, "/arm/command/tcp_trajectory", COMMAND_QOS)
        self.pub_source = self.create_publisher(String, "/control_source", LATCHED_QOS)
        self.pub_inter = self.create_publisher(Bool, "/intervention", LATCHED_QOS)
        sub = self.create_subscription
        sub(TwistStamped, "/policy/command/twist", lambda m: self.mux.set_policy(twist_from_msg(m), None, self._now()),
            COMMAND_QOS)
        sub(Float64, "/policy/command/gripper", lambda m: self.mux.set_policy(None, m.data, self._now()), COMMAND_QOS)
        sub(TwistStamped, "/teleop/twist", self._on_teleop_twist, COMMAND_QOS)
        sub(Float64, "/teleop/gripper", lambda m: self.mux.set_teleop(None, m.data, self._now()), COMMAND_QOS)
        sub(Bool, "/teleop/engaged", lambda m: self.mux.set_engaged(m.data), LATCHED_QOS)
        sub(PoseStamped, "/policy/command/pose", lambda m: self._pass(self.pub_pose, m), COMMAND_QOS)
        sub(JointTrajectory, "/policy/command/joint_trajectory", lambda m: self._pass(self.pub_traj, m), COMMAND_QOS)
        sub(MultiDOFJointTrajectory, "/policy/command/tcp_trajectory", self._on_policy_plan, COMMAND_QOS)
        self.last: tuple[str, bool] | None = None
        self.t_last_pub = 0.0
        self.create_timer(1.0 / float(p("rate", 100.0).value), self._tick)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_teleop_twist(self, m: TwistStamped) -> None:
        if m.header.frame_id not in ("", self.base_frame):
            self.get_logger().warning(f"ignored /teleop/twist in frame '{m.header.frame_id}': "
                                      f"the mux takes base-frame ({self.base_frame}) twists")
            return
        self.mux.set_teleop(twist_from_msg(m), None, self._now())

    def _on_policy_plan(self, m: MultiDOFJointTrajectory) -> None:
        self.mux.set_policy_plan(self._now())
        self._pass(self.pub_plan, m)

    def _pass(self, pub, m) -> None:
        if self.mux.engaged:
            return  # the operator has the arm; the policy's pose/trajectory commands wait
        pub.publish(m)

    def _tick(self) -> None:
        now = self._now()
        if now <= 0.0:
            return  # sim time and no /clock yet
        out = self.mux.step(now)
        if out.moving:
            self.pub_twist.publish(twist_msg(out.twist, now, self.base_frame))
        if out.gripper is not None and out.source != "hold":
            self.pub_grip.publish(Float64(data=out.gripper))
        state = (out.source, out.intervention)
        if state != self.last or time.monotonic() - self.t_last_pub > 0.5:
            self.pub_source.publish(String(data=out.source))
            self.pub_inter.publish(Bool(data=out.intervention))
            if self.last is not None and state[0] != self.last[0]:
                self.get_logger().info(f"control: {self.last[0]} -> {out.source}")
            self.last, self.t_last_pub = state, time.monotonic()


def main(args=None) -> None:
    run_node(CommandMuxNode, args)


if __name__ == "__main__":
    main()

"""intervening_operator: a scripted person at the teleop topics who takes over when the policy strays.

The graph's counterpart of ``train sac --intervene`` (``robot_learning.rl.intervene``): each step
of ``step_rate`` (sim time) it compares the policy's command (``/policy/command/twist`` and
``/policy/command/gripper``, what the RL actor or a policy server sends) with what the
workcell's scripted expert would do from the TCP pose, the gripper and the objects' true poses
(sim only). After ``patience`` astray steps it engages (``/teleop/engaged``) and drives
``/teleop/twist`` and ``/teleop/gripper`` for ``takeover_steps`` (0: until its plan is done, the peg
in), then lets go: the command mux
hands the arm over both ways and reports ``/intervention``, which the actor flags in its
transitions, exactly as with a person at a SpaceMouse. It starts its expert afresh at each
episode the actor announces on ``/rl/episode``.
"""

from __future__ import annotations

import threading

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, String

from robot_learning.rl.intervene import InterveningOperator
from robot_learning.sim.expert import ExpertObs
from robot_learning.sim.tasks import make_task
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    LATEST_QOS,
    from_stamp,
    pose_from_msg,
    twist_from_msg,
    twist_msg,
)
from robot_learning_ros.runtime import lenient_params, run_node


class InterveningOperatorNode(Node):
    def __init__(self):
        super().__init__("intervening_operator")
        p = lenient_params(self)
        self.task = str(p("task", "peg_in_hole").value)
        self.step_dt = 1.0 / float(p("step_rate", 10.0).value)
        self.command_dt = 1.0 / float(p("command_rate", 50.0).value)
        self.base_frame = str(p("base_frame", "panda_link0").value)
        self.op = InterveningOperator(self.task, patience=int(p("patience", 5).value),
                                      takeover_steps=int(p("takeover_steps", 15).value))
        self.lock = threading.Lock()
        self.bodies = make_task(self.task).object_bodies
        self.objects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.opening = 0.08
        self.policy_twist: tuple[float, np.ndarray] | None = None  # (when, twist) of the policy's last command
        self.policy_grip = 0.0
        self.cmd: np.ndarray | None = None  # the operator's action while it has the arm
        self.engaged = False
        self.t_step = -np.inf
        self.t_cmd = -np.inf
        self.takeovers = 0
        self.pub_engaged = self.create_publisher(Bool, "/teleop/engaged", LATCHED_QOS)
        self.pub_twist = self.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS)
        self.pub_engaged.publish(Bool(data=False))
        for b in self.bodies:
            self.create_subscription(PoseStamped, f"/sim/objects/{b}/pose",
                                     lambda m, b=b: self.objects.__setitem__(b, pose_from_msg(m)), LATEST_QOS)
        self.create_subscription(JointState, "/gripper/state",
                                 lambda m: setattr(self, "opening", float(sum(m.position))), LATEST_QOS)
        self.create_subscription(TwistStamped, "/policy/command/twist", self._on_policy_twist, COMMAND_QOS)
        self.create_subscription(Float64, "/policy/command/gripper",
                                 lambda m: setattr(self, "policy_grip", float(m.data)), COMMAND_QOS)
        self.create_subscription(String, "/rl/episode", self._on_episode, LATCHED_QOS)
        self.create_subscription(PoseStamped, "/arm/ee_pose", self._on_pose, LATEST_QOS)

    def _on_policy_twist(self, m: TwistStamped) -> None:
        self.policy_twist = (from_stamp(m.header.stamp), twist_from_msg(m))

    def _on_episode(self, m: String) -> None:
        with self.lock:
            self.op.reset()
            self.objects.clear()
            self.cmd, self.policy_twist, self.t_step = None, None, -np.inf
            self._engage(False)

    def _engage(self, on: bool) -> None:
        if on != self.engaged:
            self.engaged = on
            self.pub_engaged.publish(Bool(data=on))
            self.takeovers += on
            self.get_logger().info(f"takeover {self.takeovers}" if on else "hands back to the policy")

    def _on_pose(self, m: PoseStamped) -> None:
        t = from_stamp(m.header.stamp)
        pos, quat = pose_from_msg(m)
        with self.lock:
            if t - self.t_step >= self.step_dt:
                policy = self.policy_twist
                # judge only a policy that is commanding now (not one paused, or between episodes)
                live = policy is not None and t - policy[0] < 3 * self.step_dt
                if live and all(b in self.objects for b in self.bodies):
                    self.t_step = t
                    obs = ExpertObs(t, pos, quat, self.opening, dict(self.objects))
                    action, intervening, _ = self.op.step(obs, np.r_[policy[1], self.policy_grip])
                    self.cmd = action if intervening else None
                    self._engage(intervening)
                elif self.engaged:
                    self.cmd = None
                    self._engage(False)
            cmd = self.cmd
            if cmd is None or t - self.t_cmd < self.command_dt:
                return
            self.t_cmd = t
        self.pub_twist.publish(twist_msg(cmd[:6], t, self.base_frame))
        self.pub_grip.publish(Float64(data=float(cmd[6])))


def main(args=None) -> None:
    run_node(InterveningOperatorNode, args)


if __name__ == "__main__":
    main()

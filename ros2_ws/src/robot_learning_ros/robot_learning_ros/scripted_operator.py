"""scripted_operator: the workcell's scripted expert, driving the arm only through standard
topics, episode after episode (reset through /sim/reset; see episodes.EpisodeNode).

It stands in for a person at the controls: it sees the TCP pose, the gripper and (sim
only) the objects' true poses. With ``via:=arm`` it publishes straight to the arm's command
topics; with ``via:=teleop`` it behaves like an operator at a device: it engages, drives
/teleop/twist and /teleop/gripper with hand-like noise and pauses, and disengages. With
``record:=true`` it starts and stops the recorder's episodes and labels them with the
task's success. With ``report_dir`` set it saves each episode's TCP trajectory and camera
snapshots there.
"""

from __future__ import annotations

import threading

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from std_msgs.msg import Bool, Float64

from robot_learning.sim.expert import ExpertObs, HandNoise, ScriptedExpert
from robot_learning.sim.tasks import make_task
from robot_learning_ros.episodes import EpisodeNode, run_episodes
from robot_learning_ros.msgs import COMMAND_QOS, LATCHED_QOS, LATEST_QOS, pose_from_msg, twist_msg
from robot_learning_ros.runtime import lenient_params


class ScriptedOperator(EpisodeNode):
    def __init__(self):
        super().__init__("scripted_operator")
        p = lenient_params(self)
        self.rate = float(p("rate", 50.0).value)
        self.via = str(p("via", "arm").value)
        if self.via not in ("arm", "teleop"):
            raise ValueError(f"via must be 'arm' or 'teleop', not '{self.via}'")
        self.operator = f"scripted_{self.via}"
        self.noise_scale = float(p("noise", 1.0 if self.via == "teleop" else 0.0).value)
        self.noise_seed = int(p("noise_seed", 0).value)
        self.noise: HandNoise | None = None
        self.base_frame = "panda_link0"
        self.objects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.expert: ScriptedExpert | None = None
        self.t_first: float | None = None
        self.t_last = -np.inf
        self.finished = threading.Event()
        prefix = {"arm": ("/arm/command/twist", "/gripper/command"),
                  "teleop": ("/teleop/twist", "/teleop/gripper")}[self.via]
        self.pub_twist = self.create_publisher(TwistStamped, prefix[0], COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, prefix[1], COMMAND_QOS)
        self.pub_engaged = self.create_publisher(Bool, "/teleop/engaged", LATCHED_QOS)
        self.bodies = make_task(self.task).object_bodies
        for b in self.bodies:
            self.create_subscription(PoseStamped, f"/sim/objects/{b}/pose",
                                     lambda m, b=b: self.objects.__setitem__(b, pose_from_msg(m)), LATEST_QOS)

    def on_pose(self, t: float, pos: np.ndarray, quat: np.ndarray) -> None:
        with self.lock:
            ex = self.expert
            if ex is None or ex.done or t - self.t_last < 1.0 / self.rate:
                return
            if any(b not in self.objects for b in self.bodies):  # every object's pose first (they
                return                                            # arrive one topic at a time)
            if self.t_first is None:
                self.t_first = t
            self.t_last = t
            twist, grip = ex.act(ExpertObs(t, pos, quat, self.gripper_opening, dict(self.objects)))
            if self.noise is not None:
                twist = self.noise.apply(twist, t, lock_rotation=not ex.turning)
            if ex.k == 3 and self.t_marker is None:
                self.t_marker = t
            if ex.done or t - self.t_first > self.timeout:
                ex.done = True
                self.pub_twist.publish(twist_msg(np.zeros(6), t, self.base_frame))
                self.finished.set()
                return
        self.pub_twist.publish(twist_msg(twist, t, self.base_frame))
        self.pub_grip.publish(Float64(data=float(grip)))

    def drive(self, index: int, info: dict) -> None:
        self.objects.clear()
        self.wait_sim(0.05)
        if self.noise_scale > 0:
            self.noise = HandNoise(np.random.default_rng(self.noise_seed * 100_003 + info["seed"]), self.noise_scale)
        if self.via == "teleop":
            self.pub_engaged.publish(Bool(data=True))
        with self.lock:
            self.t_first, self.t_last = None, -np.inf
            self.finished.clear()
            self.expert = ScriptedExpert(self.task)
        if not self.finished.wait(timeout=self.timeout * 20 + 60):
            raise RuntimeError("episode did not finish: no /arm/ee_pose from the sim?")
        self.wait_sim(0.3)
        if self.via == "teleop":
            self.pub_engaged.publish(Bool(data=False))


def main(args=None) -> None:
    run_episodes(ScriptedOperator, args)


if __name__ == "__main__":
    main()

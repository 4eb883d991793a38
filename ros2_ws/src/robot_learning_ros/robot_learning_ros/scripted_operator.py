"""scripted_operator: the workcell's scripted expert, driving the arm only through standard
topics, episode after episode (reset through /sim/reset).

It stands in for a person at the controls: it sees the TCP pose, the gripper and (sim
only) the objects' true poses. With ``via:=arm`` it publishes straight to the arm's command
topics; with ``via:=teleop`` it behaves like an operator at a device: it engages, drives
/teleop/twist and /teleop/gripper with hand-like noise and pauses, and disengages. With
``record:=true`` it starts and stops the recorder's episodes and labels them with the
task's success. With ``report_dir`` set it saves each episode's TCP trajectory and camera
snapshots there.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool, Trigger

from robot_learning.sim.expert import ExpertObs, HandNoise, ScriptedExpert
from robot_learning.sim.tasks import make_task
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    STATE_QOS,
    from_stamp,
    image_from_msg,
    pose_from_msg,
    twist_msg,
)
from robot_learning_ros.runtime import BackgroundSpin


class ScriptedOperator(Node):
    def __init__(self):
        super().__init__("scripted_operator")
        p = self.declare_parameter
        self.task = p("task", "pick_place").value
        self.episodes = int(p("episodes", 10).value)
        self.timeout = float(p("episode_timeout", 40.0).value)
        self.rate = float(p("rate", 50.0).value)
        self.via = str(p("via", "arm").value)
        if self.via not in ("arm", "teleop"):
            raise ValueError(f"via must be 'arm' or 'teleop', not '{self.via}'")
        self.record = bool(p("record", False).value)
        self.noise_scale = float(p("noise", 1.0 if self.via == "teleop" else 0.0).value)
        self.noise_seed = int(p("noise_seed", 0).value)
        self.noise: HandNoise | None = None
        report = str(p("report_dir", "").value)
        self.report_dir = Path(report) if report else None
        self.base_frame = "panda_link0"
        self.objects: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.gripper_opening = 0.08
        self.success = False
        self.lock = threading.Lock()
        self.expert: ScriptedExpert | None = None
        self.t_start: float | None = None
        self.t_last = -np.inf
        self.t_now = 0.0
        self.finished = threading.Event()
        self.trajectory: list[list[float]] = []
        prefix = {"arm": ("/arm/command/twist", "/gripper/command"),
                  "teleop": ("/teleop/twist", "/teleop/gripper")}[self.via]
        self.pub_twist = self.create_publisher(TwistStamped, prefix[0], COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, prefix[1], COMMAND_QOS)
        self.pub_engaged = self.create_publisher(Bool, "/teleop/engaged", LATCHED_QOS)
        self.pub_meta = self.create_publisher(String, "/recorder/episode_meta", LATCHED_QOS)
        self.rec_start = self.create_client(Trigger, "/recorder/start_episode")
        self.rec_stop = self.create_client(SetBool, "/recorder/stop_episode")
        self.create_subscription(PoseStamped, "/arm/ee_pose", self._on_pose, STATE_QOS)
        self.create_subscription(JointState, "/gripper/state", self._on_gripper, STATE_QOS)
        self.create_subscription(Bool, "/sim/task/success", self._on_success, LATCHED_QOS)
        for b in make_task(self.task).object_bodies:
            self.create_subscription(PoseStamped, f"/sim/objects/{b}/pose",
                                     lambda m, b=b: self.objects.__setitem__(b, pose_from_msg(m)), STATE_QOS)
        if self.report_dir:
            for cam in ("front", "wrist"):
                self.create_subscription(Image, f"/{cam}/color/image_raw",
                                         lambda m, c=cam: self._on_image(c, m), SENSOR_QOS)
        self.reset_client = self.create_client(Trigger, "/sim/reset")
        self.frames: dict[str, list[tuple[float, np.ndarray]]] = {}
        self.t_grasp: float | None = None

    def _on_gripper(self, m: JointState) -> None:
        self.gripper_opening = float(sum(m.position))

    def _on_success(self, m: Bool) -> None:
        self.success = bool(m.data)

    def _on_image(self, cam: str, m: Image) -> None:
        """Keep a thumbnail every 0.2 s of sim time; snapshots are picked by stamp afterwards."""
        t = from_stamp(m.header.stamp)
        frames = self.frames.setdefault(cam, [])
        if not frames or t - frames[-1][0] >= 0.2:
            frames.append((t, image_from_msg(m)[::2, ::2].copy()))

    def _on_pose(self, m: PoseStamped) -> None:
        t = from_stamp(m.header.stamp)
        self.t_now = t
        with self.lock:
            ex = self.expert
            if ex is None or ex.done or t - self.t_last < 1.0 / self.rate:
                return
            if not self.objects:
                return
            if self.t_start is None:
                self.t_start = t
            self.t_last = t
            pos, quat = pose_from_msg(m)
            twist, grip = ex.act(ExpertObs(t, pos, quat, self.gripper_opening, dict(self.objects)))
            if self.noise is not None:
                twist = self.noise.apply(twist, t)
            self.trajectory.append([t - self.t_start, *pos, self.gripper_opening])
            if ex.k == 3 and self.t_grasp is None:
                self.t_grasp = t
            if ex.done or t - self.t_start > self.timeout:
                ex.done = True
                self.pub_twist.publish(twist_msg(np.zeros(6), t, self.base_frame))
                self.finished.set()
                return
        self.pub_twist.publish(twist_msg(twist, t, self.base_frame))
        self.pub_grip.publish(Float64(data=float(grip)))

    def wait_sim(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (the sim may run faster than real time)."""
        end = self.t_now + seconds
        deadline = time.monotonic() + 30.0
        while self.t_now < end and time.monotonic() < deadline:
            time.sleep(0.005)

    def call(self, client, request, what: str):
        if not client.wait_for_service(timeout_sec=30.0):
            raise RuntimeError(f"{client.srv_name} is not available: is the {what} running?")
        fut = client.call_async(request)
        deadline = time.monotonic() + 60.0
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not fut.done():
            raise RuntimeError(f"{client.srv_name} did not answer within 60 s")
        res = fut.result()
        if not res.success:
            raise RuntimeError(f"{client.srv_name} failed: {res.message}")
        return res

    def run_episode(self, index: int) -> dict:
        info = json.loads(self.call(self.reset_client, Trigger.Request(), "sim node").message)
        self.objects.clear()
        self.wait_sim(0.1)  # fresh poses from the new episode
        if self.record:
            self.pub_meta.publish(String(data=json.dumps(
                {"task": self.task, "operator": f"scripted_{self.via}", "seed": info["seed"]})))
            self.wait_sim(0.05)
            self.call(self.rec_start, Trigger.Request(), "recorder")
        if self.noise_scale > 0:
            self.noise = HandNoise(np.random.default_rng(self.noise_seed * 100_003 + info["seed"]), self.noise_scale)
        if self.via == "teleop":
            self.pub_engaged.publish(Bool(data=True))
        with self.lock:
            self.trajectory, self.frames = [], {}
            self.t_start, self.t_grasp, self.t_last = None, None, -np.inf
            self.finished.clear()
            self.expert = ScriptedExpert(self.task)
        if not self.finished.wait(timeout=self.timeout * 20 + 60):
            raise RuntimeError("episode did not finish: no /arm/ee_pose from the sim?")
        self.wait_sim(0.3)
        if self.via == "teleop":
            self.pub_engaged.publish(Bool(data=False))
        result = {"episode": index, "seed": info["seed"], "success": self.success,
                  "duration": self.trajectory[-1][0] if self.trajectory else 0.0}
        if self.record:
            self.wait_sim(0.2)
            req = SetBool.Request()
            req.data = bool(self.success)
            saved = json.loads(self.call(self.rec_stop, req, "recorder").message)
            result["dataset_episode"] = saved.get("index")
        if self.report_dir:
            self._save(index, result)
        return result

    def _save(self, index: int, result: dict) -> None:
        ep = self.report_dir / f"episode_{index:03d}"
        ep.mkdir(parents=True, exist_ok=True)
        snaps = {}
        moments = {"start": self.t_start, "grasp": self.t_grasp, "end": self.t_now}
        for cam, frames in self.frames.items():
            for label, t in moments.items():
                if t is not None and frames:
                    snaps[f"{label}_{cam}"] = min(frames, key=lambda f: abs(f[0] - t))[1]
        np.savez_compressed(ep / "episode.npz", trajectory=np.array(self.trajectory), **snaps)
        (ep / "result.json").write_text(json.dumps(result))


def main(args=None) -> None:
    rclpy.init(args=args)
    node = ScriptedOperator()
    spin = BackgroundSpin(node)
    results = []
    code = 0
    try:
        for i in range(node.episodes):
            r = node.run_episode(i)
            results.append(r)
            node.get_logger().info(f"episode {i} (seed {r['seed']}): {'success' if r['success'] else 'FAILED'} "
                                   f"in {r['duration']:.1f} s")
        rate = np.mean([r["success"] for r in results]) if results else 0.0
        node.get_logger().info(f"success rate {rate:.0%} over {len(results)} episodes of {node.task}")
        if node.report_dir:
            node.report_dir.mkdir(parents=True, exist_ok=True)
            (node.report_dir / "results.json").write_text(json.dumps(
                {"task": node.task, "success_rate": rate, "episodes": results}, indent=1))
    except KeyboardInterrupt:
        pass
    except RuntimeError as e:
        node.get_logger().error(str(e))
        code = 1
    finally:
        spin.close()
    raise SystemExit(code)


if __name__ == "__main__":
    main()

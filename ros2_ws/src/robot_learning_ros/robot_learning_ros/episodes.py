"""Episodes on the sim workcell, one after another: reset, record, label, report.

The base of the nodes that drive episodes through the graph: the scripted operator (an
expert at the teleop topics) and the policy evaluator (a policy server's policy). Each
episode resets the sim (/sim/reset), optionally records it (the recorder's services,
labelled with /sim/task/success), and, with ``report_dir``, saves the TCP trajectory and
camera snapshots; ``results.json`` sums the run up. Subclasses implement ``drive``.

How an episode starts (``reset``): ``sim``, the sim puts everything back, arm included (the
arm runs inside sim_node); ``home``, a robot's: a joint trajectory to the home pose through
the mux (and the gripper opened), then the operator sets the scene and calls the go service
(``auto_go:=true`` skips it); ``home_sim``, the sim as hardware behind arm_node: the same move
home, then /sim/reset puts the scene back around the arm where it stands.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_learning.config import load_robot
from robot_learning.control.route import route_home, segment_times
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    LATEST_QOS,
    SENSOR_QOS,
    from_stamp,
    image_from_msg,
    pose_from_msg,
    stamp_of_serialized,
    to_sec_ns,
)
from robot_learning_ros.runtime import BackgroundSpin, init_ros, lenient_params, run_then_clean_up

RESETS = ("sim", "home", "home_sim")


class EpisodeNode(Node):
    operator = "episodes"
    default_episodes = 10
    go_service = "/episodes/go"

    def __init__(self, name: str, default_record: bool = False):
        super().__init__(name)
        p = lenient_params(self)
        self.task = p("task", "pick_place").value
        self.episodes = int(p("episodes", self.default_episodes).value)
        self.timeout = float(p("episode_timeout", 40.0).value)
        self.record = bool(p("record", default_record).value)
        report = str(p("report_dir", "").value)
        self.report_dir = Path(report) if report else None
        self.lock = threading.Lock()
        self.t_now = 0.0
        self.success = False
        # the task's success came on at some moment of this episode: a failure with it set did
        # not hold its success through the settling time, one without it never got there
        self.success_seen = False
        # the operator's verdict on this episode (teleop's success / failure button, on
        # /teleop/event), None until pressed: it overrides the sim's or a classifier's
        self.label: bool | None = None
        self.fault = ""  # the arm's protective stop, "" when clear
        self.gripper_opening = 0.08
        self.t_start: float | None = None
        self.t_end: float | None = None          # the episode is over: stop the trajectory there
        self.t_marker: float | None = None       # a moment worth a snapshot (the grasp)
        self.trajectory: list[list[float]] = []
        self.tcp_now: np.ndarray | None = None   # the newest TCP position
        self.frames: dict[str, list[tuple[float, np.ndarray]]] = {}
        self.pub_meta = self.create_publisher(String, "/recorder/episode_meta", LATCHED_QOS)
        self.rec_start = self.create_client(Trigger, "/recorder/start_episode")
        self.rec_stop = self.create_client(SetBool, "/recorder/stop_episode")
        self.recorder_status: dict = {}
        self.create_subscription(String, "/recorder/status", self._on_recorder_status, LATCHED_QOS)
        self.reset_client = self.create_client(Trigger, "/sim/reset")
        self.reset_mode = str(p("reset", "sim").value)
        if self.reset_mode not in RESETS:
            raise ValueError(f"reset '{self.reset_mode}': choose sim (the sim resets everything), home (a robot: "
                             "move home, then the operator's go) or home_sim (the sim as hardware)")
        self.auto_go = bool(p("auto_go", False).value)
        self.robot = load_robot(str(p("robot", "hardware/robots/panda.yaml").value))
        self.q: np.ndarray | None = None         # the arm's measured joints (home resets)
        self.go = threading.Event()
        self.running = self.context.ok            # a subclass's loop may narrow it
        if self.reset_mode != "sim":
            self.create_subscription(JointState, "/joint_states", self._on_joint_states, LATEST_QOS)
            self.pub_home = self.create_publisher(JointTrajectory, "/policy/command/joint_trajectory", COMMAND_QOS)
            self.pub_home_grip = self.create_publisher(Float64, "/policy/command/gripper", COMMAND_QOS)
        self.create_service(Trigger, self.go_service, self._on_go)
        self.create_subscription(PoseStamped, "/arm/ee_pose", self._on_pose_msg, LATEST_QOS)
        self.create_subscription(JointState, "/gripper/state", self._on_gripper, LATEST_QOS)
        self.create_subscription(Bool, "/sim/task/success", self._on_success, LATCHED_QOS)
        self.create_subscription(String, "/arm/protective_stop", self._on_fault, LATCHED_QOS)
        self.create_subscription(String, "/teleop/event", self._on_teleop_event, COMMAND_QOS)
        if self.report_dir:  # serialized: the thumbnails need one frame in six of each camera
            for cam in ("front", "wrist"):
                self.create_subscription(Image, f"/{cam}/color/image_raw",
                                         lambda m, c=cam: self._on_image(c, m), SENSOR_QOS, raw=True)

    # --- what the graph says ---
    def _on_recorder_status(self, m: String) -> None:
        try:
            self.recorder_status = dict(json.loads(m.data))
        except (ValueError, TypeError):
            pass

    def _on_joint_states(self, m: JointState) -> None:
        names = list(m.name)
        if all(j in names for j in self.robot.joint_names):  # the arm's joints, by name, in its order
            with self.lock:
                self.q = np.array([m.position[names.index(j)] for j in self.robot.joint_names])

    def _on_go(self, req, res):
        if self.fault:
            res.success, res.message = False, (f"protective stop is latched ({self.fault}): release it with "
                                               "/arm/reset_protective_stop first")
        else:
            self.go.set()
            res.success, res.message = True, "go"
        return res

    def _on_gripper(self, m: JointState) -> None:
        self.gripper_opening = float(sum(m.position))

    def _on_success(self, m: Bool) -> None:
        self.success = bool(m.data)
        self.success_seen |= self.success and self.t_start is not None and self.t_end is None

    def _on_teleop_event(self, m: String) -> None:
        if m.data in ("stop_success", "stop_failure") and self.t_start is not None and self.t_end is None:
            self.label = m.data == "stop_success"
            self.get_logger().info(f"the operator says: {'success' if self.label else 'failure'}")

    def measured_success(self) -> bool:
        """What the graph says of the episode's outcome: the sim's ``/sim/task/success`` (a
        subclass that listens to a classifier on a robot says so here; it also labels the
        recording)."""
        return self.success

    def episode_success(self, measured: bool) -> bool:
        """The episode's outcome: the operator's button when pressed, else ``measured``."""
        return measured if self.label is None else self.label

    def _on_fault(self, m: String) -> None:
        self.fault = m.data

    def _on_image(self, cam: str, data: bytes) -> None:
        """Keep a thumbnail every 0.2 s of sim time; snapshots are picked by stamp afterwards.
        The frame arrives serialized and is decoded only when kept: on a 2-core machine every
        640x480 frame of both cameras taken whole cost the evaluator time the policy server
        needed."""
        t = stamp_of_serialized(data)
        frames = self.frames.setdefault(cam, [])
        if not frames or t - frames[-1][0] >= 0.2:
            frames.append((t, image_from_msg(deserialize_message(data, Image))[::2, ::2].copy()))

    def _on_pose_msg(self, m: PoseStamped) -> None:
        t = from_stamp(m.header.stamp)
        self.t_now = t
        pos, quat = pose_from_msg(m)
        with self.lock:
            self.tcp_now = pos
            running = self.t_start is not None and self.t_end is None
            if running and (not self.trajectory or t - self.t_start - self.trajectory[-1][0] >= 0.02):
                self.trajectory.append([t - self.t_start, *pos, self.gripper_opening])
        self.on_pose(t, pos, quat)

    def on_pose(self, t: float, pos: np.ndarray, quat: np.ndarray) -> None:
        """Hook: a new TCP pose (subclasses act on it)."""

    def extra_results(self) -> dict:
        """Hook: more for results.json."""
        return {}

    def finish(self) -> None:
        """Hook: the run is over (leave the arm at rest)."""

    # --- helpers ---
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

    def start_clock(self, start: np.ndarray | None = None) -> None:
        """The episode starts now: its trajectory and duration count from here (a subclass
        calls it again once its operator is really in control, e.g. a policy just loaded).
        ``start``: the TCP position when the operator was released, the trajectory's first point
        (on a busy machine the arm may already have moved by the time this runs)."""
        with self.lock:
            self.trajectory, self.frames = [], {}
            if start is not None:
                self.trajectory.append([0.0, *start, self.gripper_opening])
            self.t_start, self.t_end, self.t_marker = self.t_now, None, None

    def stop_clock(self) -> None:
        with self.lock:
            if self.t_end is None:
                self.t_end = self.t_now

    # --- one episode ---
    def drive(self, index: int, info: dict) -> None:
        """Runs the episode until it is over (success, give-up or timeout)."""
        raise NotImplementedError

    def reset_world(self, index: int) -> dict:
        """Puts the scene back for episode ``index`` (see ``reset`` above): {"episode", "seed"}."""
        if self.reset_mode != "sim":
            self.move_home()
        if self.reset_mode == "home":
            if not self.auto_go:
                self.get_logger().info(f"episode {index}: at the reset pose; set the scene, then call "
                                       f"{self.go_service}")
                self.go.clear()
                while not self.go.wait(0.2):
                    if not self.running():
                        raise KeyboardInterrupt
            return {"episode": index, "seed": -1}
        try:
            return json.loads(self.call(self.reset_client, Trigger.Request(), "sim node").message)
        except RuntimeError as e:
            raise RuntimeError(f"{e} (on a robot, start with reset:=home)") from None

    def move_home(self) -> None:
        """A joint trajectory to the home pose at a fifth of the joints' speed limits, routed
        round the workspace box where the straight line would leave it (the arm refuses such a
        line whole), and the gripper opened, then wait until the arm is there."""
        q = self.observe_q()
        home = self.robot.home
        route = route_home(self.robot, q)
        if route is None:
            raise RuntimeError("no route home inside the workspace box from here (the hand is pressed into a "
                               "corner of it): move the arm towards the middle of the box, then reset again")
        times = segment_times(self.robot, q, route)
        msg = JointTrajectory(joint_names=list(self.robot.joint_names))
        for point, t in zip(route, times):
            pt = JointTrajectoryPoint(positions=[float(x) for x in point])
            pt.time_from_start.sec, pt.time_from_start.nanosec = to_sec_ns(t)
            msg.points.append(pt)
        msg.points[-1].velocities = [0.0] * len(home)
        self.pub_home.publish(msg)
        duration = times[-1]
        end = time.monotonic() + 3 * duration + 30.0
        while np.max(np.abs(self.observe_q() - home)) > 0.02:
            if time.monotonic() > end:
                raise RuntimeError("the arm did not reach the reset pose (refused? see the arm node's log)")
            if not self.running():
                raise KeyboardInterrupt
            self.pub_home_grip.publish(Float64(data=0.0))  # open, while the mux keeps the policy's command
            time.sleep(0.05)

    def observe_q(self) -> np.ndarray:
        end = time.monotonic() + 10.0
        while self.q is None:
            if time.monotonic() > end:
                raise RuntimeError("no /joint_states: the reset pose needs the arm's joint positions")
            time.sleep(0.01)
        with self.lock:
            return self.q.copy()

    def run_episode(self, index: int) -> dict:
        info = self.reset_world(index)
        self.wait_sim(0.1)  # fresh poses (and success: false) from the new episode
        if self.record:
            meta = {"task": self.task, "operator": self.operator, "seed": info["seed"]}
            self.pub_meta.publish(String(data=json.dumps(meta)))
            end = time.monotonic() + 10.0  # the recorder confirms it holds this episode's metadata
            while self.recorder_status.get("next_meta") != meta and time.monotonic() < end:
                time.sleep(0.01)
            if self.recorder_status.get("next_meta") != meta:
                self.get_logger().warning("the recorder did not confirm this episode's metadata within 10 s")
            self.call(self.rec_start, Trigger.Request(), "recorder")
        self.label = None
        self.success_seen = False
        self.start_clock()
        self.drive(index, info)
        self.stop_clock()
        result = {"episode": index, "seed": info["seed"], "success": self.episode_success(self.measured_success()),
                  "duration": self.trajectory[-1][0] if self.trajectory else 0.0,
                  "success_seen": self.success_seen}
        if self.label is not None:
            result["operator_label"] = "success" if self.label else "failure"
        if self.fault:  # the arm stopped itself (blocked or collided): say why the episode failed
            result["protective_stop"] = self.fault
        if self.record:
            self.wait_sim(0.2)
            req = SetBool.Request()
            req.data = bool(result["success"])
            saved = json.loads(self.call(self.rec_stop, req, "recorder").message)
            result["dataset_episode"] = saved.get("index")
        if self.report_dir:
            self._save(index, result)
        return result

    def _save(self, index: int, result: dict) -> None:
        ep = self.report_dir / f"episode_{index:03d}"
        ep.mkdir(parents=True, exist_ok=True)
        snaps = {}
        moments = {"start": self.t_start, "grasp": self.t_marker, "end": self.t_end or self.t_now}
        for cam, frames in self.frames.items():
            for label, t in moments.items():
                if t is not None and frames:
                    snaps[f"{label}_{cam}"] = min(frames, key=lambda f: abs(f[0] - t))[1]
        np.savez_compressed(ep / "episode.npz", trajectory=np.array(self.trajectory), **snaps)
        tmp = ep / "result.json.partial"  # whole or absent: the launcher polls for these
        tmp.write_text(json.dumps(result))
        tmp.replace(ep / "result.json")


def run_episodes(factory, args=None) -> None:
    """main() of an episode node: all its episodes, then results.json, then exit (0, or 1 on error)."""
    init_ros(args=args)
    node = factory()
    spin = BackgroundSpin(node)
    results = []
    code = 0

    def episodes() -> None:
        nonlocal code
        try:
            for i in range(node.episodes):
                r = node.run_episode(i)
                results.append(r)
                why = f" (protective stop: {r['protective_stop']})" if "protective_stop" in r else ""
                node.get_logger().info(f"episode {i} (seed {r['seed']}): "
                                       f"{'success' if r['success'] else 'FAILED'}{why} in {r['duration']:.1f} s")
            rate = float(np.mean([r["success"] for r in results])) if results else 0.0
            node.get_logger().info(f"success rate {rate:.0%} over {len(results)} episodes of {node.task}")
            if node.report_dir:
                node.report_dir.mkdir(parents=True, exist_ok=True)
                (node.report_dir / "results.json").write_text(json.dumps(
                    {"task": node.task, "operator": node.operator, "success_rate": rate, "episodes": results,
                     **node.extra_results()}, indent=1))
        except RuntimeError as e:
            if not rclpy.ok():
                raise  # a stop signal shut the context down under a call in flight: a stop
            node.get_logger().error(str(e))  # one sentence, not a traceback
            code = 1

    def clean_up() -> None:
        node.finish()
        spin.close()

    run_then_clean_up(episodes, clean_up)
    raise SystemExit(1 if spin.failed else code)

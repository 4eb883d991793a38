"""A hostile ROS 2 client, run as its own process: for ``--seconds`` it sends the arm every kind
of malformed and adversarial command it knows, at a few hundred messages a second, and now
and then releases a protective stop so the attack goes on. Seeded, so a failure replays.

    python tests/graph_fuzzer.py --seconds 30 --seed 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped, TwistStamped
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_learning.config import load_robot

ROBOT = load_robot()
NASTY = [np.nan, np.inf, -np.inf, 1e308, -1e308, 1e-320, 0.0, 5.0, -5.0]


def stamp_of(m, t: float) -> None:
    sec = int(np.floor(t))
    m.header.stamp.sec, m.header.stamp.nanosec = sec, int((t - sec) * 1e9)


def set_vec(obj, names: str, values) -> None:
    for n, v in zip(names, values):
        setattr(obj, n, float(v))


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        rclpy.init()
        self.node = rclpy.create_node("graph_fuzzer")
        self.twist = self.node.create_publisher(TwistStamped, "/arm/command/twist", 100)
        self.pose = self.node.create_publisher(PoseStamped, "/arm/command/pose", 100)
        self.traj = self.node.create_publisher(JointTrajectory, "/arm/command/joint_trajectory", 100)
        self.grip = self.node.create_publisher(Float64, "/gripper/command", 100)
        self.reset = self.node.create_client(Trigger, "/arm/reset_protective_stop")
        self.sent = 0
        self._huge: JointTrajectory | None = None
        self._huge_sent = time.monotonic()

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def nasty_vector(self, n: int, scale: float) -> np.ndarray:
        v = self.rng.uniform(-scale, scale, n)
        for i in range(n):
            if self.rng.random() < 0.3:
                v[i] = self.pick(NASTY)
        return v

    def send_twist(self) -> None:
        m = TwistStamped()
        kind = self.pick(["valid", "nasty", "push", "frame", "stale", "future"])
        v = self.nasty_vector(6, 0.6) if kind == "nasty" else self.rng.uniform(-0.5, 0.5, 6)
        if kind == "push":  # within every limit, into the table and turning
            v = np.r_[self.rng.uniform(-0.5, 0.5, 2), -0.5, self.rng.uniform(-1.5, 1.5, 3)]
        set_vec(m.twist.linear, "xyz", v[:3])
        set_vec(m.twist.angular, "xyz", v[3:])
        m.header.frame_id = {"frame": self.pick(["camera_link", "map", "ÿ" * 40, "panda_link3"]),
                             "valid": self.pick(["", ROBOT.base_frame, ROBOT.ee_frame])}.get(kind, ROBOT.base_frame)
        stamp_of(m, {"stale": self.now() - self.rng.uniform(1.1, 1e6),
                     "future": self.now() + self.rng.uniform(0.5, 1e6)}.get(kind, self.now()))
        self.twist.publish(m)

    def send_pose(self) -> None:
        m = PoseStamped()
        pos = self.rng.uniform([-1, -1, -0.5], [1.5, 1, 1.5])
        quat = self.rng.normal(size=4)
        if self.rng.random() < 0.5:
            quat /= np.linalg.norm(quat)
        if self.rng.random() < 0.3:
            pos, quat = self.nasty_vector(3, 1.0), self.nasty_vector(4, 1.0)
        set_vec(m.pose.position, "xyz", pos)
        set_vec(m.pose.orientation, "xyzw", quat)
        m.header.frame_id = self.pick(["", ROBOT.base_frame, "camera_link"])
        stamp_of(m, self.now() - self.pick([0.0, 0.0, 5.0]))
        self.pose.publish(m)

    def send_trajectory(self) -> None:
        kind = self.pick(["valid", "future", "past", "nasty", "names", "ragged", "huge", "times", "empty"])
        if kind == "huge" and self._huge is not None:
            # built once (20,000 points take a while in Python) and sent at most every 3 s: each
            # costs the receiving executor ~0.1 s to deserialize, and a flood of them only
            # measures how long a backlog takes to drain
            if time.monotonic() - self._huge_sent > 3.0:
                stamp_of(self._huge, 0.0)
                self.traj.publish(self._huge)
                self._huge_sent = time.monotonic()
            return
        m = JointTrajectory()
        names = list(ROBOT.joint_names)
        if kind == "names":
            names = self.pick([names[:6], names + ["extra"], [names[0]] * 7, list(reversed(names)), []])
        m.joint_names = names
        n = {"huge": 20_000, "empty": 0}.get(kind, int(self.rng.integers(1, 6)))
        t = np.cumsum(self.rng.uniform(0.05, 1.0, n))
        if kind == "times":
            t = self.rng.uniform(-1, 1, n)
        for i in range(n):
            q = ROBOT.home + self.rng.uniform(-0.6, 0.6, 7)
            if kind == "nasty":
                q = self.nasty_vector(7, 4.0)
            if kind == "ragged" and i == n - 1:
                q = q[:5]
            p = JointTrajectoryPoint(positions=[float(x) for x in q])
            sec = int(np.floor(t[i]))
            p.time_from_start = Duration(sec=sec, nanosec=int((t[i] - sec) * 1e9))
            m.points.append(p)
        offset = {"future": self.rng.uniform(0.5, 20.0), "past": -self.rng.uniform(0.1, 30.0)}.get(kind)
        stamp_of(m, 0.0 if offset is None else self.now() + offset)
        if kind == "huge":
            self._huge, self._huge_sent = m, time.monotonic()
        self.traj.publish(m)

    def send_gripper(self) -> None:
        self.grip.publish(Float64(data=float(self.pick(NASTY + [0.0, 1.0, 0.5]))))

    def run(self, seconds: float, rate: float) -> None:
        senders = [self.send_twist] * 5 + [self.send_pose] * 2 + [self.send_trajectory] * 2 + [self.send_gripper]
        end = time.monotonic() + seconds
        next_reset = time.monotonic() + 2.0
        while time.monotonic() < end:
            self.pick(senders)()
            self.sent += 1
            if time.monotonic() > next_reset and self.reset.service_is_ready():
                self.reset.call_async(Trigger.Request())  # keep the attack going after a protective stop
                next_reset = time.monotonic() + 2.0
            rclpy.spin_once(self.node, timeout_sec=0.0)
            time.sleep(1.0 / rate)
        print(f"fuzzer: sent {self.sent} messages", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=300.0)
    a = ap.parse_args()
    f = Fuzzer(a.seed)
    try:
        f.run(a.seconds, a.rate)
    finally:
        f.node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()

"""bench_publisher: a robot's sensor load for the recorder benchmark.

Publishes two RGB cameras and one depth camera at 640x480 and 30 Hz, two tactile grids at
60 Hz and joint states at 500 Hz, stamped now. The frames are real renders of the workcell
(so they compress like the sim's), cycled. On exit it writes how many messages it sent
per topic to ``stats_file``.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from robot_learning.sim.footage import render_frames
from robot_learning_ros.msgs import SENSOR_QOS, STATE_QOS, image_msg, joint_state_msg
from robot_learning_ros.runtime import init_ros, lenient_params, use_headless_gl


class BenchPublisher(Node):
    def __init__(self):
        super().__init__("bench_publisher")
        p = lenient_params(self)
        self.duration = float(p("duration", 60.0).value)
        self.stats_file = str(p("stats_file", "").value)
        self.front, self.wrist, self.depth = render_frames(int(p("frames", 30).value))
        self.pubs = {
            "/front/color/image_raw": self.create_publisher(Image, "/front/color/image_raw", SENSOR_QOS),
            "/wrist/color/image_raw": self.create_publisher(Image, "/wrist/color/image_raw", SENSOR_QOS),
            "/front/aligned_depth_to_color/image_raw": self.create_publisher(
                Image, "/front/aligned_depth_to_color/image_raw", SENSOR_QOS),
            "/tactile/left_finger/taxels": self.create_publisher(Image, "/tactile/left_finger/taxels", SENSOR_QOS),
            "/tactile/right_finger/taxels": self.create_publisher(Image, "/tactile/right_finger/taxels", SENSOR_QOS),
            "/joint_states": self.create_publisher(JointState, "/joint_states", STATE_QOS),
        }
        self.sent: Counter[str] = Counter()
        self.names = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]

    def pub(self, topic: str, msg) -> None:
        self.pubs[topic].publish(msg)
        self.sent[topic] += 1

    def run(self) -> None:
        end = time.monotonic() + 30.0  # the recorder must have matched every topic before the clock starts
        while rclpy.ok() and any(p.get_subscription_count() == 0 for p in self.pubs.values()) \
                and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.5)
        rng = np.random.default_rng(0)
        t0, wall0 = time.monotonic(), time.time()
        k = 0
        while rclpy.ok():
            due = t0 + k / 500.0
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if time.monotonic() - t0 > self.duration:
                break
            t = time.time()
            q = np.sin(np.arange(9) + k / 500.0)
            self.pub("/joint_states", joint_state_msg(self.names, q, 0 * q, 0 * q, t))
            if k % 25 in (0, 8, 16):  # 60 Hz: three samples every 25 ticks (50 ms)
                g = rng.normal(0, 0.1, (4, 4, 3)).astype(np.float32)
                self.pub("/tactile/left_finger/taxels", image_msg(g, "32FC3", t, "left_finger_pad"))
                self.pub("/tactile/right_finger/taxels", image_msg(g, "32FC3", t, "right_finger_pad"))
            if k % 50 in (0, 17, 33):  # 30 Hz: three frames every 50 ticks (100 ms)
                i = (k // 17) % len(self.front)
                self.pub("/front/color/image_raw", image_msg(self.front[i], "rgb8", t, "front_color_optical_frame"))
                self.pub("/wrist/color/image_raw", image_msg(self.wrist[i], "rgb8", t, "wrist_color_optical_frame"))
                self.pub("/front/aligned_depth_to_color/image_raw",
                         image_msg(self.depth[i], "16UC1", t, "front_color_optical_frame"))
            k += 1
        if self.stats_file:
            with open(self.stats_file, "w") as f:
                json.dump({"sent": dict(self.sent), "window": [wall0, time.time()]}, f)


def main(args=None) -> None:
    use_headless_gl()  # its footage is rendered with MuJoCo: no display needed
    init_ros(args=args)
    node = BenchPublisher()
    try:
        node.run()
    except KeyboardInterrupt:
        pass
    except RuntimeError:
        # a stop signal shuts the context down under a call in flight (RCLError: "context is
        # invalid"); that is a normal stop. Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()

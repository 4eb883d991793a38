"""teleop: a SpaceMouse, gamepad or keyboard to /teleop/twist, /teleop/gripper and /teleop/engaged.

SpaceMouse and gamepad come in as sensor_msgs/Joy from their drivers (spacenav, joy);
``device:=spacemouse_hid`` reads a SpaceMouse directly over HID and ``device:=keyboard`` the
terminal it runs in. Twists are published in the arm's base frame (a tool-frame device is
rotated with /arm/ee_pose). Every button press is published on /teleop/event (its name:
start_episode, stop_success, stop_failure, discard_episode, estop), where the RL actor takes
the operator's success and failure; the episode buttons also call the recorder's services
(``label_recorder:=false`` where another node owns the recordings: hil_rl.launch.yaml); an
e-stop button latches /emergency_stop.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool, Trigger

from robot_learning.teleop.devices import JoyTeleop, KeyboardAxes, load_teleop_config, spacemouse_hid_report
from robot_learning.transforms import quat_to_mat
from robot_learning_ros.msgs import COMMAND_QOS, LATCHED_QOS, LATEST_QOS, pose_from_msg, twist_msg
from robot_learning_ros.runtime import lenient_params, run_node

CONFIGS = {"spacemouse": "hardware/teleop/spacemouse.yaml", "spacemouse_hid": "hardware/teleop/spacemouse.yaml",
           "gamepad": "hardware/teleop/gamepad.yaml", "keyboard": "hardware/teleop/keyboard.yaml"}


class TeleopNode(Node):
    def __init__(self):
        super().__init__("teleop")
        p = lenient_params(self)
        self.device = str(p("device", "spacemouse").value)
        if self.device not in CONFIGS:
            raise ValueError(f"device '{self.device}' is not one of {', '.join(CONFIGS)}")
        self.cfg = load_teleop_config(p("config", "").value or CONFIGS[self.device])
        self.base_frame = str(p("base_frame", "panda_link0").value)
        self.stale = float(p("input_timeout", 0.5).value)
        self.label_recorder = bool(p("label_recorder", True).value)
        self.teleop = JoyTeleop(self.cfg)
        self.axes, self.buttons, self.t_input = [], [], -1e9
        self.quat = np.array([1.0, 0, 0, 0])
        self.lock = threading.Lock()
        self.pub_twist = self.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS)
        self.pub_engaged = self.create_publisher(Bool, "/teleop/engaged", LATCHED_QOS)
        self.pub_estop = self.create_publisher(Bool, "/emergency_stop", LATCHED_QOS)
        self.pub_event = self.create_publisher(String, "/teleop/event", COMMAND_QOS)  # events, not state: volatile
        self.create_subscription(PoseStamped, "/arm/ee_pose", self._on_pose, LATEST_QOS)
        self.recorder_clients = {"start_episode": self.create_client(Trigger, "/recorder/start_episode"),
                        "stop_success": self.create_client(SetBool, "/recorder/stop_episode"),
                        "stop_failure": self.create_client(SetBool, "/recorder/stop_episode"),
                        "discard_episode": self.create_client(Trigger, "/recorder/discard_episode")}
        if self.device in ("spacemouse", "gamepad"):
            self.create_subscription(Joy, self.cfg.topic, self._on_joy, COMMAND_QOS)
        elif self.device == "keyboard":
            self.keys = KeyboardAxes(self.cfg)
            threading.Thread(target=self._read_keyboard, daemon=True).start()
        else:
            threading.Thread(target=self._read_hid, daemon=True).start()
        self.engaged_sent: bool | None = None
        self.t_engaged_sent = 0.0
        self.create_timer(1.0 / float(p("rate", 50.0).value), self._tick)
        self.get_logger().info(f"teleop with {self.device} ({self.cfg.engage} to engage, {self.cfg.frame} frame)")

    def _on_pose(self, m: PoseStamped) -> None:
        self.quat = pose_from_msg(m)[1]

    def _on_joy(self, m: Joy) -> None:
        self._input(list(m.axes), list(m.buttons))

    def _input(self, axes: list[float], buttons: list[int]) -> None:
        with self.lock:
            self.axes, self.buttons, self.t_input = axes, buttons, time.monotonic()
            out = self.teleop.update(axes, buttons)
        for ev in out.events:
            self._event(ev)

    def _event(self, ev: str) -> None:
        self.pub_event.publish(String(data=ev))
        if ev == "estop":
            self.pub_estop.publish(Bool(data=True))
            self.get_logger().error("e-stop pressed")
            return
        if not self.label_recorder:
            self.get_logger().info(f"{ev} pressed")
            return
        cli = self.recorder_clients[ev]
        if not cli.service_is_ready():
            self.get_logger().warning(f"'{ev}' pressed but the recorder is not running")
            return
        req = cli.srv_type.Request()
        if ev.startswith("stop_"):
            req.data = ev == "stop_success"
        cli.call_async(req).add_done_callback(
            lambda f, ev=ev: self.get_logger().info(f"{ev}: {f.result().message if f.result() else 'no answer'}"))

    def _tick(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        with self.lock:
            if self.device == "keyboard":
                self.axes, self.buttons = self.keys.read(time.monotonic())
            elif time.monotonic() - self.t_input > self.stale and any(self.axes):
                # the device went quiet (unplugged, driver died): stop moving, keep the engage state
                self.axes = [0.0] * len(self.axes)
            out = self.teleop.update(self.axes, self.buttons)
        for ev in out.events:
            self._event(ev)
        if out.engaged != self.engaged_sent or time.monotonic() - self.t_engaged_sent > 0.5:
            self.pub_engaged.publish(Bool(data=out.engaged))
            self.engaged_sent, self.t_engaged_sent = out.engaged, time.monotonic()
        if out.engaged:
            twist = out.twist
            if out.frame == "tool":
                r = quat_to_mat(self.quat)
                twist = np.r_[r @ twist[:3], r @ twist[3:]]
            self.pub_twist.publish(twist_msg(twist, now, self.base_frame))
            self.pub_grip.publish(Float64(data=out.gripper))

    def _read_keyboard(self) -> None:
        import termios
        import tty

        if not sys.stdin.isatty():
            self.get_logger().error("device:=keyboard needs a terminal: run this node in one "
                                    "(ros2 run robot_learning_ros teleop_node --ros-args -p device:=keyboard)")
            return
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        self.get_logger().info("keyboard: w/s x, a/d y, r/f z, q/e yaw, space engage, g gripper, "
                               "n start, y success, x failure, z discard, ! e-stop")
        try:
            tty.setcbreak(fd)
            while rclpy.ok():
                key = os.read(fd, 1).decode(errors="ignore")
                with self.lock:
                    self.keys.press(key, time.monotonic())
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def _read_hid(self) -> None:
        try:
            import hid
        except ImportError:
            self.get_logger().error("device:=spacemouse_hid needs the 'hidapi' package (pip install hidapi)")
            return
        devs = [d for d in hid.enumerate() if d["vendor_id"] in (0x046D, 0x256F) and "pace" in
                (d.get("product_string") or "")]
        if not devs:
            self.get_logger().error("no SpaceMouse found over HID: is it plugged in, and may this user read "
                                    "/dev/hidraw* (udev rule)? Or use the spacenav driver with device:=spacemouse")
            return
        dev = hid.device()
        dev.open_path(devs[0]["path"])
        axes, buttons = [0.0] * 6, [0] * 2
        while rclpy.ok():
            report = dev.read(64, 100)
            if report:
                spacemouse_hid_report(bytes(report), axes, buttons)
                self._input(list(axes), list(buttons))


def main(args=None) -> None:
    run_node(TeleopNode, args)


if __name__ == "__main__":
    main()

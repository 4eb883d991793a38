"""tactile_node: a real tactile sensor on the topics the sim's fingertip pads publish.

``/tactile/<sensor>/taxels`` (sensor_msgs/Image 32FC3: per taxel the force in the pad frame,
newtons) and ``/tactile/<sensor>/wrench`` (geometry_msgs/WrenchStamped), frame id
``<sensor>_pad``, stamped when the data arrived. A recipe and a trained policy do not change
between the sim and the robot.

Drivers (``driver``):
- ``serial``: a taxel board streaming checked binary frames over USB serial
  (``robot_learning.devices.taxel_serial``; ``port``, ``baud``). Bad frames are counted and
  skipped; sequence gaps are counted as lost.
- ``visuotactile``: a GelSight-class camera through OpenCV (``video_device``, ``fps``): the
  marker shear field and difference image become the grid
  (``robot_learning.devices.visuotactile``). It also publishes ``/tactile/<sensor>/contact``
  (mono8 mask). The first frame is the untouched reference; ``/tactile/<sensor>/reset_reference``
  (std_srvs/Trigger) takes a new one, with nothing touching the gel. The camera may be unplugged:
  the capture loop reopens it.

``config``: the sensor file (``hardware/tactile/*.yaml``: rows, cols, calibration). Once a
second ``/diagnostics`` reports frames, bad and lost frames.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import WrenchStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from robot_learning.config import load_yaml
from robot_learning.devices.taxel_serial import TaxelFrameParser, open_serial
from robot_learning.devices.visuotactile import Visuotactile, VisuotactileConfig
from robot_learning_ros.msgs import SENSOR_QOS, STATE_QOS, image_msg, wrench_msg
from robot_learning_ros.runtime import init_ros, lenient_params, spin_main


class TactileNode(Node):
    def __init__(self):
        super().__init__("tactile")
        p = lenient_params(self)
        self.sensor = str(p("sensor", "left_finger").value)
        self.driver = str(p("driver", "serial").value)
        cfg = load_yaml(str(p("config", "hardware/tactile/fingertip_pads.yaml").value))
        self.rows, self.cols = int(cfg["rows"]), int(cfg["cols"])
        self.frame_id = f"{self.sensor}_pad"
        base = f"/tactile/{self.sensor}"
        self.pub_taxels = self.create_publisher(Image, f"{base}/taxels", STATE_QOS)
        self.pub_wrench = self.create_publisher(WrenchStamped, f"{base}/wrench", STATE_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._msg_taxels, self._msg_wrench = Image(), WrenchStamped()
        self.frames = 0
        self._stop = threading.Event()
        if self.driver == "serial":
            self.port = str(p("port", "/dev/ttyACM0").value)
            self.baud = int(p("baud", 921600).value)
            self.parser = TaxelFrameParser(self.rows, self.cols)
            self.thread = threading.Thread(target=self._serial_loop, daemon=True, name="tactile-serial")
            self.thread.start()
        elif self.driver == "visuotactile":
            from robot_learning.devices.capture import CaptureLoop
            from robot_learning.devices.uvc import UvcCamera, UvcConfig

            vt_cfg = VisuotactileConfig.from_dict({**cfg.get("visuotactile", {}), "rows": self.rows, "cols": self.cols})
            self.vt = Visuotactile(vt_cfg)
            self._reset = threading.Event()
            self.pub_contact = self.create_publisher(Image, f"{base}/contact", SENSOR_QOS)
            self._msg_contact = Image()
            self.create_service(Trigger, f"{base}/reset_reference", self._on_reset)
            device = UvcCamera(UvcConfig(device=str(p("video_device", "/dev/video0").value),
                                         fps=float(p("fps", 30.0).value)))
            self.loop = CaptureLoop(device, self._on_frame, log=self._log)
            self.loop.start()
        else:
            raise ValueError(f"driver '{self.driver}': choose serial or visuotactile")
        self.create_timer(1.0, self._diagnostics)
        self.get_logger().info(f"tactile sensor '{self.sensor}' ({self.driver}, {self.rows}x{self.cols}) on "
                               f"{base}/taxels")

    def _log(self, level: int, msg: str) -> None:
        (self.get_logger().warning if level >= logging.WARNING else self.get_logger().info)(msg)

    def _publish(self, grid: np.ndarray, wrench: np.ndarray, t: float) -> None:
        self.pub_taxels.publish(image_msg(grid.astype(np.float32, copy=False), "32FC3", t, self.frame_id,
                                          reuse=self._msg_taxels))
        self.pub_wrench.publish(wrench_msg(wrench, t, self.frame_id, reuse=self._msg_wrench))
        self.frames += 1

    def _serial_loop(self) -> None:
        """Reads the port on its own thread; reopens it (every second) when it goes away."""
        fd, warned = None, False
        while not self._stop.is_set():
            if fd is None:
                try:
                    fd = open_serial(self.port, self.baud)
                    self.get_logger().info(f"{self.port} open at {self.baud} baud")
                    warned = False
                except (OSError, ValueError) as e:
                    if not warned:
                        self.get_logger().error(f"cannot open {self.port} ({e}); retrying every second")
                        warned = True
                    self._stop.wait(1.0)
                    continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.2)
                data = os.read(fd, 4096) if ready else b""
            except OSError as e:
                self.get_logger().warning(f"{self.port}: {e}; reopening")
                os.close(fd)
                fd = None
                continue
            t = time.time()
            for f in self.parser.feed(data):
                g = f.taxels
                self._publish(g, np.r_[g.reshape(-1, 3).sum(0), 0.0, 0.0, 0.0], t)
        if fd is not None:
            os.close(fd)

    def _on_frame(self, frame) -> None:
        """Capture thread, once per camera frame."""
        if self._reset.is_set():
            self._reset.clear()
            n = self.vt.set_reference(frame.rgb)
            self.get_logger().info(f"new reference: {n} markers")
        r = self.vt.process(frame.rgb)
        self._publish(r.taxels, r.wrench, frame.stamp)
        self.pub_contact.publish(image_msg(r.contact, "mono8", frame.stamp, self.frame_id, reuse=self._msg_contact))

    def _on_reset(self, req, res):
        self._reset.set()
        res.success, res.message = True, "the next frame is the reference: keep the gel untouched"
        return res

    def _diagnostics(self) -> None:
        values = {"frames": self.frames}
        if self.driver == "serial":
            values |= {"bad_frames": self.parser.bad, "lost_frames": self.parser.lost,
                       "skipped_bytes": self.parser.skipped_bytes}
            level = DiagnosticStatus.OK if self.frames else DiagnosticStatus.WARN
            message = "streaming" if self.frames else f"no frames from {self.port} yet"
        else:
            s = self.loop.status()
            values |= {"dropped": s.dropped, "reconnects": s.reconnects, "markers": len(self.vt.ref_markers)}
            level = DiagnosticStatus.OK if s.state == "streaming" else DiagnosticStatus.WARN
            message = s.message
        st = DiagnosticStatus(name=f"{self.get_name()}: {self.sensor}", hardware_id=self.driver, level=level,
                              message=message, values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def close(self) -> None:
        self._stop.set()
        if self.driver == "serial":
            self.thread.join(timeout=2.0)
        else:
            self.loop.close()


def main(args=None) -> None:
    init_ros(args=args)
    node = TactileNode()
    spin_main(node, on_shutdown=node.close)


if __name__ == "__main__":
    main()

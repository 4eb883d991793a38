"""camera_node: a RealSense (librealsense) or a UVC camera (OpenCV) on realsense-ros's topics.

Publishes ``<camera_name>/color/image_raw`` (rgb8) and ``<camera_name>/color/camera_info``;
with depth, ``<camera_name>/aligned_depth_to_color/{image_raw,camera_info}`` (16UC1, mm)
when ``align_depth.enable`` is true, else ``<camera_name>/depth/{image_rect_raw,camera_info}``.
Frames are stamped with their capture time on the host clock, frame ids as realsense-ros
names them (``<camera_name>_color_optical_frame``). Once a second ``/diagnostics`` reports
the frame rate, dropped frames and reconnects. The camera may be unplugged and plugged back:
``robot_learning.devices.capture.CaptureLoop`` reopens it and publishing resumes.

Parameters: ``driver`` (realsense | uvc), ``camera_name``; RealSense: ``serial_no``,
``rgb_camera.color_profile`` ("640x480x30"; also a UVC camera's size and rate),
``depth_module.depth_profile``, ``enable_depth``, ``align_depth.enable``; UVC:
``video_device`` (path, index or video file), ``fourcc``, ``camera_info_url``; both:
``frame_timeout`` (s without frames before reopening) and ``reconnect_timeout`` (longest
wait between attempts).
"""

from __future__ import annotations

import logging

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from robot_learning.devices.camera import Frame, Intrinsics, parse_profile
from robot_learning.devices.capture import CaptureLoop
from robot_learning_ros.msgs import SENSOR_QOS, image_msg, to_sec_ns
from robot_learning_ros.runtime import lenient_params, spin_main

_LEVEL = {"streaming": DiagnosticStatus.OK, "starting": DiagnosticStatus.WARN, "stalled": DiagnosticStatus.WARN,
          "disconnected": DiagnosticStatus.ERROR, "closed": DiagnosticStatus.WARN}


def camera_info(intr: Intrinsics, frame_id: str) -> CameraInfo:
    m = CameraInfo()
    m.header.frame_id = frame_id
    m.width, m.height = intr.width, intr.height
    m.distortion_model = intr.distortion_model
    m.d = [float(c) for c in intr.coeffs]
    m.k = intr.k
    m.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    m.p = intr.p
    return m


class _Stream:
    """One image topic and its camera_info, with messages refilled in place frame after frame."""

    def __init__(self, node: Node, image_topic: str, info_topic: str, encoding: str, frame_id: str):
        self.image_pub = node.create_publisher(Image, image_topic, SENSOR_QOS)
        self.info_pub = node.create_publisher(CameraInfo, info_topic, SENSOR_QOS)
        self.encoding, self.frame_id = encoding, frame_id
        self.image, self.info, self.intr = Image(), CameraInfo(), None

    def publish(self, array, intr: Intrinsics, t: float) -> None:
        self.image_pub.publish(image_msg(array, self.encoding, t, self.frame_id, reuse=self.image))
        if intr != self.intr:  # new after a reconnect to another profile
            self.info, self.intr = camera_info(intr, self.frame_id), intr
        self.info.header.stamp = self.image.header.stamp
        self.info_pub.publish(self.info)


class CameraNode(Node):
    """``rs_context``: the librealsense context to find the camera in (default: the USB
    devices). A test passes one holding a ``software_device``; nothing else differs."""

    def __init__(self, rs_context=None, **node_kwargs):
        super().__init__("camera", **node_kwargs)
        p = lenient_params(self)
        driver = str(p("driver", "realsense").value)
        cam = str(p("camera_name", "camera").value)
        color_profile = str(p("rgb_camera.color_profile", "0,0,0").value)
        frame_timeout = float(p("frame_timeout", 1.0).value)
        reconnect_timeout = float(p("reconnect_timeout", 6.0).value)
        if driver == "realsense":
            # imported here, after rclpy has loaded ROS's DDS (see devices.realsense on why)
            from robot_learning.devices.realsense import RealSenseCamera, RealSenseConfig

            cfg = RealSenseConfig(serial_no=str(p("serial_no", "").value), color_profile=color_profile,
                                  depth_profile=str(p("depth_module.depth_profile", "0,0,0").value),
                                  enable_depth=bool(p("enable_depth", True).value),
                                  align_depth=bool(p("align_depth.enable", False).value))
            device, depth, align = RealSenseCamera(cfg, context=rs_context), cfg.enable_depth, cfg.align_depth
        elif driver == "uvc":
            from robot_learning.devices.uvc import UvcCamera, UvcConfig

            w, h, fps = parse_profile(color_profile)
            device = UvcCamera(UvcConfig(device=str(p("video_device", "/dev/video0").value), width=w, height=h,
                                         fps=fps, fourcc=str(p("fourcc", "").value),
                                         camera_info=str(p("camera_info_url", "").value)))
            depth = align = False
        else:
            raise ValueError(f"driver '{driver}': choose realsense or uvc")
        self.camera_name = cam
        self.color = _Stream(self, f"{cam}/color/image_raw", f"{cam}/color/camera_info", "rgb8",
                             f"{cam}_color_optical_frame")
        self.depth = None
        if depth and align:
            self.depth = _Stream(self, f"{cam}/aligned_depth_to_color/image_raw",
                                 f"{cam}/aligned_depth_to_color/camera_info", "16UC1", f"{cam}_color_optical_frame")
        elif depth:
            self.depth = _Stream(self, f"{cam}/depth/image_rect_raw", f"{cam}/depth/camera_info", "16UC1",
                                 f"{cam}_depth_optical_frame")
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.loop = CaptureLoop(device, self._publish, log=self._log, frame_timeout=frame_timeout,
                                retry_max=reconnect_timeout)
        self.create_timer(1.0, self._diagnostics)
        self.loop.start()

    def _log(self, level: int, msg: str) -> None:
        # one call site per severity: rclpy refuses a call site that changes its severity
        if level >= logging.ERROR:
            self.get_logger().error(msg)
        elif level >= logging.WARNING:
            self.get_logger().warning(msg)
        else:
            self.get_logger().info(msg)

    def _publish(self, f: Frame) -> None:
        """Runs on the capture thread, once per frame, stamped with the frame's capture time."""
        self.color.publish(f.rgb, f.color_intrinsics, f.stamp)
        if self.depth is not None and f.depth_mm is not None:
            self.depth.publish(f.depth_mm, f.depth_intrinsics, f.stamp)

    def _diagnostics(self) -> None:
        s = self.loop.status()
        st = DiagnosticStatus(name=f"{self.get_name()}: {self.camera_name}", hardware_id=self.loop.device.name,
                              level=_LEVEL.get(s.state, DiagnosticStatus.WARN), message=s.message)
        st.values = [KeyValue(key=k, value=v) for k, v in (
            ("state", s.state), ("fps", f"{s.fps:.1f}"), ("frames", str(s.frames)),
            ("dropped_frames", str(s.dropped)), ("reconnects", str(s.reconnects)))]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp.sec, msg.header.stamp.nanosec = to_sec_ns(self.get_clock().now().nanoseconds * 1e-9)
        self.pub_diag.publish(msg)

    def close(self) -> None:
        self.loop.close()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = CameraNode()
    spin_main(node, on_shutdown=node.close)


if __name__ == "__main__":
    main()

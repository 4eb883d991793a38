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
``frame_timeout`` (s without frames before reopening), ``reconnect_timeout`` (longest
wait between attempts) and ``capture_latency`` (seconds taken off each stamp; by default the
camera's entry in ``calibration/latency.yaml``, from ``robot-learning calibrate camera-latency``).

``software_source`` (RealSense only): a namespace such as ``/sim`` whose
``<camera_name>/color/image_raw``, ``.../color/camera_info`` and
``.../aligned_depth_to_color/image_raw`` are fed
into a librealsense ``software_device`` (serial ``sim-<camera_name>`` unless ``serial_no``
says otherwise) that this node then streams like a USB camera: the real-robot launch files
run on the sim with the very driver code a RealSense gets. Frames keep the source's stamps.
"""

from __future__ import annotations

import logging
import threading

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from robot_learning.devices.camera import Frame, Intrinsics, parse_profile
from robot_learning.devices.capture import CaptureLoop
from robot_learning_ros.msgs import SENSOR_QOS, image_from_msg, image_msg, to_sec_ns
from robot_learning_ros.runtime import init_ros, lenient_params, spin_main

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


def intrinsics_from_info(m: CameraInfo) -> Intrinsics:
    coeffs = tuple(float(c) for c in m.d) or (0.0,) * 5
    return Intrinsics(int(m.width), int(m.height), float(m.k[0]), float(m.k[4]), float(m.k[2]), float(m.k[5]),
                      m.distortion_model or "plumb_bob", coeffs)


class _SoftwareSource:
    """Images of a ROS camera namespace into a software RealSense in ``self.ctx``. The device
    is made and plugged in when the first ``camera_info`` gives its intrinsics; until then
    the capture loop finds no camera and keeps looking, as it does for an unplugged one.

    librealsense is not safe with a frame injected while a pipeline starts or stops, nor with
    a device added during ``query_devices``: ``guard`` wraps the driver so that its open and
    close and our plug and injections take turns under one lock."""

    def __init__(self, node: Node, source: str, serial: str, depth: bool, fps: int):
        import pyrealsense2 as rs  # after rclpy (see devices.realsense)

        self.ctx = rs.context('{"dds": {"enabled": false}}')
        self.node, self.serial, self.depth, self.fps = node, serial, depth, fps or 30
        self.device = None
        self.lock = threading.Lock()
        self._numbers: dict[int, int] = {}  # stamp (ns) -> frame number, for the last few renders
        self._next = 0
        self.sub_info = node.create_subscription(CameraInfo, f"{source}/color/camera_info", self._on_info,
                                                 SENSOR_QOS)
        node.create_subscription(Image, f"{source}/color/image_raw", self._on_color, SENSOR_QOS)
        if depth:
            node.create_subscription(Image, f"{source}/aligned_depth_to_color/image_raw", self._on_depth,
                                     SENSOR_QOS)

    def _on_info(self, m: CameraInfo) -> None:
        if self.device is not None:
            return
        from robot_learning.devices.realsense_software import SoftwareRealSense

        intr = intrinsics_from_info(m)
        device = SoftwareRealSense(self.serial, intr, intr if self.depth else None, fps=self.fps, ctx=self.ctx,
                                   name=f"Software RealSense ({self.serial})")
        with self.lock:
            device.plug()
            self.device = device
        self.node.destroy_subscription(self.sub_info)
        self.node.get_logger().info(f"software RealSense {self.serial} plugged in: {intr.width}x{intr.height}")

    def _number(self, m: Image) -> tuple[int, float]:
        """Frame number and stamp (ms): colour and depth of one render (one stamp) share a
        number, and numbers count renders one by one, as a camera's frame counter does."""
        ns = m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
        number = self._numbers.get(ns)
        if number is None:
            self._next += 1
            number = self._numbers[ns] = self._next
            if len(self._numbers) > 8:
                self._numbers.pop(next(iter(self._numbers)))
        return number, ns * 1e-6

    def _on_color(self, m: Image) -> None:
        if self.device is not None:
            with self.lock:
                self.device.inject_color(*self._number(m), image_from_msg(m))

    def _on_depth(self, m: Image) -> None:
        if self.device is not None:
            with self.lock:
                self.device.inject_depth(*self._number(m), image_from_msg(m))

    def guard(self, driver) -> _Guarded:
        return _Guarded(driver, self.lock)

    def close(self) -> None:
        if self.device is not None:
            self.device.close()


class _Guarded:
    """A camera driver whose open and close hold ``lock``; everything else passes through."""

    def __init__(self, driver, lock: threading.Lock):
        self.driver, self.lock = driver, lock

    def open(self) -> None:
        with self.lock:
            self.driver.open()

    def close(self) -> None:
        with self.lock:
            self.driver.close()

    def __getattr__(self, name: str):
        return getattr(self.driver, name)


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
        source = str(p("software_source", "").value).rstrip("/")
        self.software = None
        if driver == "realsense":
            # imported here, after rclpy has loaded ROS's DDS (see devices.realsense on why)
            from robot_learning.devices.realsense import RealSenseCamera, RealSenseConfig

            cfg = RealSenseConfig(serial_no=str(p("serial_no", "").value), color_profile=color_profile,
                                  depth_profile=str(p("depth_module.depth_profile", "0,0,0").value),
                                  enable_depth=bool(p("enable_depth", True).value),
                                  align_depth=bool(p("align_depth.enable", False).value))
            if source:  # the source's image size, whatever the profile asks for
                fps = parse_profile(color_profile)[2]
                cfg.serial_no = cfg.serial or f"sim-{cam}"
                cfg.color_profile = cfg.depth_profile = f"0,0,{fps}"
                self.software = _SoftwareSource(self, f"{source}/{cam}", cfg.serial, cfg.enable_depth, fps)
                rs_context = self.software.ctx
            device, depth, align = RealSenseCamera(cfg, context=rs_context), cfg.enable_depth, cfg.align_depth
            if self.software is not None:
                device = self.software.guard(device)
        elif driver == "uvc":
            from robot_learning.devices.uvc import UvcCamera, UvcConfig

            w, h, fps = parse_profile(color_profile)
            device = UvcCamera(UvcConfig(device=str(p("video_device", "/dev/video0").value), width=w, height=h,
                                         fps=fps, fourcc=str(p("fourcc", "").value),
                                         camera_info=str(p("camera_info_url", "").value)))
            depth = align = False
        else:
            raise ValueError(f"driver '{driver}': choose realsense or uvc")
        if source and driver != "realsense":
            raise ValueError(f"software_source '{source}' needs driver:=realsense (a software RealSense)")
        self.camera_name = cam
        # seconds the driver's stamps lie after the capture (-1: as `robot-learning calibrate
        # camera-latency` measured it, calibration/latency.yaml; 0 there when never measured):
        # taken off every stamp, so consumers pair a frame with the state at the instant it shows
        latency = float(p("capture_latency", -1.0).value)
        if latency < 0:
            from robot_learning.calibrate.latency import measured_camera_latency

            latency = measured_camera_latency(cam)
        self.capture_latency = latency
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
        try:
            stamp = f.stamp - self.capture_latency
            self.color.publish(f.rgb, f.color_intrinsics, stamp)
            if self.depth is not None and f.depth_mm is not None:
                self.depth.publish(f.depth_mm, f.depth_intrinsics, stamp)
        except Exception:
            if rclpy.ok():
                raise  # else: a frame that arrived while Ctrl-C shut ROS down; nothing to say

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
        if self.software is not None:
            self.software.close()


def main(args=None) -> None:
    init_ros(args=args)
    node = CameraNode()
    spin_main(node, on_shutdown=node.close)


if __name__ == "__main__":
    main()

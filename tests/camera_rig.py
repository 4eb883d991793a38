"""Camera test rig: a RealSense made of librealsense's ``software_device``, sim renders to
feed it, and video files and calibrations for the UVC driver.

The driver under test finds it with ``context.query_devices()`` and streams it through the
SDK's own pipeline, syncer and align: only the frames come from the test, with the stamps,
frame numbers and intrinsics the test chose.
"""

from __future__ import annotations

import time

# rclpy first: it loads ROS's Fast DDS before pyrealsense2 loads its own copy (see
# robot_learning.devices.realsense); the other order crashes the test process at exit.
import rclpy  # noqa: F401  # isort: skip
import cv2
import numpy as np
import pyrealsense2 as rs

from robot_learning.devices.camera import Intrinsics
from robot_learning.sim.workcell import Workcell


def rs_intrinsics(i: Intrinsics) -> rs.intrinsics:
    r = rs.intrinsics()
    r.width, r.height, r.fx, r.fy, r.ppx, r.ppy = i.width, i.height, i.fx, i.fy, i.cx, i.cy
    r.model = rs.distortion.brown_conrady
    r.coeffs = list(i.coeffs)
    return r


class SoftwareRealSense:
    """Colour (rgb8) and optionally depth (z16) sensors of a software device in ``self.ctx``."""

    def __init__(self, serial: str, color: Intrinsics, depth: Intrinsics | None = None, fps: int = 30,
                 depth_units: float = 0.001, ctx: rs.context | None = None):
        self.ctx = ctx or rs.context()
        self.serial, self.depth_units = serial, depth_units
        self.dev = rs.software_device()
        self.dev.register_info(rs.camera_info.serial_number, serial)
        self.dev.register_info(rs.camera_info.name, "Software RealSense (test)")
        self.depth_sensor = self.dev.add_sensor("Stereo Module") if depth else None
        self.color_sensor = self.dev.add_sensor("RGB Camera")
        self.color_profile = self.color_sensor.add_video_stream(
            self._stream(rs.stream.color, 1, rs.format.rgb8, 3, color, fps), True).as_video_stream_profile()
        self.depth_profile = None
        if depth:
            self.depth_profile = self.depth_sensor.add_video_stream(
                self._stream(rs.stream.depth, 2, rs.format.z16, 2, depth, fps), True).as_video_stream_profile()
            self.depth_sensor.add_read_only_option(rs.option.depth_units, depth_units)
            ext = rs.extrinsics()
            ext.rotation, ext.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.0]
            self.depth_profile.register_extrinsics_to(self.color_profile, ext)
            self.dev.create_matcher(rs.matchers.dlr_c)  # colour and depth of one number in one frameset
        self._alive: list = []

    @staticmethod
    def _stream(kind, uid, fmt, bpp, i: Intrinsics, fps) -> rs.video_stream:
        s = rs.video_stream()
        s.type, s.index, s.uid, s.width, s.height, s.fps, s.bpp, s.fmt = kind, 0, uid, i.width, i.height, fps, bpp, fmt
        s.intrinsics = rs_intrinsics(i)
        return s

    def plug(self) -> None:
        """Add the device to the context. This librealsense keeps software devices in a context
        by weak reference, so the device list of the devices-changed event is kept to hold it."""
        alive = self._alive
        self.ctx.set_devices_changed_callback(lambda info: alive.append(info.get_new_devices()))
        self.dev.add_to(self.ctx)

    def close(self) -> None:
        """Break the context -> callback -> device list -> context cycle, so that the context
        is freed now and not by librealsense's teardown at interpreter exit."""
        self.ctx.set_devices_changed_callback(lambda info: None)
        self._alive.clear()

    def __enter__(self) -> SoftwareRealSense:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def inject(self, number: int, stamp_ms: float, rgb: np.ndarray, depth_mm: np.ndarray | None = None,
               domain=rs.timestamp_domain.global_time) -> None:
        """One frame (colour, and depth when the device has it) with this number and timestamp."""
        for sensor, profile, pixels, bpp in ((self.depth_sensor, self.depth_profile, depth_mm, 2),
                                             (self.color_sensor, self.color_profile, rgb, 3)):
            if sensor is None or pixels is None:
                continue
            f = rs.software_video_frame()
            f.pixels = np.ascontiguousarray(pixels)  # copied by the SDK
            f.stride, f.bpp = pixels.shape[1] * bpp, bpp
            f.timestamp, f.domain, f.frame_number, f.profile = stamp_ms, domain, number, profile
            if bpp == 2:
                f.depth_units = self.depth_units
            sensor.on_video_frame(f)


def wait_until(cond, timeout: float = 10.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def wrist_renders(n: int, width: int = 640, height: int = 480, seed: int = 0) -> tuple[Intrinsics, list]:
    """``n`` (rgb, depth_mm) renders of the wrist camera while the arm moves (a different twist
    before each frame), and the camera's intrinsics."""
    cell = Workcell("pick_place")
    try:
        cell.reset(seed)
        cal = cell.calib.cameras["wrist"]
        frames = []
        for k in range(n):
            a = 2 * np.pi * k / max(n, 1)
            cell.controller.command_twist(np.array([0.08 * np.cos(a), 0.08 * np.sin(a), -0.03, 0.0, 0.0, 0.3]),
                                          cell.time)
            cell.advance(0.1)
            f = cell.render("wrist", width, height)
            frames.append((f.rgb, f.depth_mm))
        return Intrinsics.from_fovy(width, height, cal.fovy_deg), frames
    finally:
        cell.close()


def write_video(path, frames, fps=30.0, fourcc="FFV1") -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]))
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
    for rgb in frames:
        w.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    w.release()


CALIBRATION = """image_width: 640
image_height: 480
camera_name: wrist
camera_matrix: {rows: 3, cols: 3, data: [610.5, 0, 321.25, 0, 611.75, 238.5, 0, 0, 1]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.2, 0.001, 0.002, 0.05]}
rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
projection_matrix: {rows: 3, cols: 4, data: [610.5, 0, 321.25, 0, 0, 611.75, 238.5, 0, 0, 0, 1, 0]}
"""
CALIBRATED = Intrinsics(640, 480, 610.5, 611.75, 321.25, 238.5, "plumb_bob", (0.1, -0.2, 0.001, 0.002, 0.05))

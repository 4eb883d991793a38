"""Camera test rig: sim renders to feed a software RealSense
(``robot_learning.devices.realsense_software``), and video files and calibrations for the
UVC driver.

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

from robot_learning.devices.camera import Intrinsics
from robot_learning.devices.realsense_software import SoftwareRealSense  # noqa: F401  (the tests' RealSense)
from robot_learning.sim.workcell import Workcell


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

"""A RealSense made in software: librealsense's ``software_device`` fed with frames we supply.

The frames go through the SDK exactly as a USB camera's do (the device list of a context, a
pipeline, the frame syncer, ``rs.align``), so ``RealSenseCamera`` and the camera node run
their own code against them. Two users: the real-robot path run on the sim (the sim renders,
a camera node streams the renders as a RealSense with serial ``sim-<camera>``, see
``camera_node``'s ``software_source``), and the camera tests, which choose every stamp,
frame number and intrinsic themselves.

Import rclpy before this module in a process that runs ROS 2 (see ``devices.realsense``).
"""

from __future__ import annotations

import numpy as np
import pyrealsense2 as rs

from robot_learning.devices.camera import Intrinsics


def rs_intrinsics(i: Intrinsics) -> rs.intrinsics:
    r = rs.intrinsics()
    r.width, r.height, r.fx, r.fy, r.ppx, r.ppy = i.width, i.height, i.fx, i.fy, i.cx, i.cy
    r.model = rs.distortion.brown_conrady
    r.coeffs = list(i.coeffs)
    return r


class SoftwareRealSense:
    """Colour (rgb8) and optionally depth (z16, in the colour image's geometry when ``depth``
    equals ``color``) sensors of one software device in ``self.ctx``.

    Colour and depth of one moment carry the same frame number: the device's matcher pairs
    them by number into one frameset, as a D400's firmware does."""

    def __init__(self, serial: str, color: Intrinsics, depth: Intrinsics | None = None, fps: int = 30,
                 depth_units: float = 0.001, ctx: rs.context | None = None, name: str = "Software RealSense"):
        self.ctx = ctx or rs.context('{"dds": {"enabled": false}}')
        self.serial, self.depth_units = serial, depth_units
        self.dev = rs.software_device()
        self.dev.register_info(rs.camera_info.serial_number, serial)
        self.dev.register_info(rs.camera_info.name, name)
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

    def inject_color(self, number: int, stamp_ms: float, rgb: np.ndarray,
                     domain=rs.timestamp_domain.global_time) -> None:
        self._inject(self.color_sensor, self.color_profile, rgb, 3, number, stamp_ms, domain)

    def inject_depth(self, number: int, stamp_ms: float, depth_mm: np.ndarray,
                     domain=rs.timestamp_domain.global_time) -> None:
        if self.depth_sensor is None:
            raise ValueError(f"software RealSense {self.serial} was made without depth")
        self._inject(self.depth_sensor, self.depth_profile, depth_mm, 2, number, stamp_ms, domain)

    def inject(self, number: int, stamp_ms: float, rgb: np.ndarray, depth_mm: np.ndarray | None = None,
               domain=rs.timestamp_domain.global_time) -> None:
        """One moment: depth (when given and the device has it), then colour, one number and stamp."""
        if depth_mm is not None and self.depth_sensor is not None:
            self.inject_depth(number, stamp_ms, depth_mm, domain)
        self.inject_color(number, stamp_ms, rgb, domain)

    def _inject(self, sensor, profile, pixels: np.ndarray, bpp: int, number: int, stamp_ms: float, domain) -> None:
        f = rs.software_video_frame()
        f.pixels = np.ascontiguousarray(pixels)  # copied by the SDK
        f.stride, f.bpp = pixels.shape[1] * bpp, bpp
        f.timestamp, f.domain, f.frame_number, f.profile = stamp_ms, domain, number, profile
        if bpp == 2:
            f.depth_units = self.depth_units
        sensor.on_video_frame(f)

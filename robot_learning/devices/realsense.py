"""Intel RealSense colour and depth through librealsense (``pyrealsense2``).

Settings carry realsense-ros's names (``serial_no``, ``rgb_camera.color_profile``,
``depth_module.depth_profile``, ``align_depth.enable``) so a launch file written for the
official driver reads the same here. Intrinsics come from the device's active stream
profiles, never from a file: they are the factory calibration of the unit that is plugged
in. Stamps are the device's own frame timestamps on the host clock: librealsense's global
time when the device provides it (already host time), else the hardware clock mapped onto
the host by ``DeviceClock``.

In a process that also runs ROS 2, import rclpy before this module. pyrealsense2 carries its
own Fast DDS (2.x) beside ROS's (3.x); some of their singletons are process-wide symbols that
the first library loaded owns, and ROS's DDS running on pyrealsense2's crashes the process at
exit. For the same reason librealsense's DDS devices are kept off in the context made here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyrealsense2 as rs

from robot_learning.devices.camera import DeviceClock, DeviceNotFound, Frame, Intrinsics, parse_profile


@dataclass
class RealSenseConfig:
    serial_no: str = ""               # empty: the first RealSense found
    color_profile: str = "0,0,0"      # rgb_camera.color_profile, WIDTHxHEIGHTxFPS; zeros: the default
    depth_profile: str = "0,0,0"      # depth_module.depth_profile
    enable_depth: bool = True
    align_depth: bool = False         # align_depth.enable: depth resampled into the colour image

    @property
    def serial(self) -> str:
        # realsense-ros accepts "_123456" so that a launch file keeps an all-digit serial a string
        return str(self.serial_no).strip().lstrip("_")


def intrinsics_from_rs(i: rs.intrinsics) -> Intrinsics:
    """librealsense intrinsics in ROS terms, with the distortion names realsense-ros publishes."""
    if i.model == rs.distortion.kannala_brandt4:
        return Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, "equidistant", tuple(i.coeffs[:4]))
    return Intrinsics(i.width, i.height, i.fx, i.fy, i.ppx, i.ppy, "plumb_bob", tuple(i.coeffs[:5]))


def _coincident(a: Intrinsics, b: Intrinsics, ext: rs.extrinsics) -> bool:
    """Depth already in the colour image's geometry: aligning would only resample it (and
    rs.align leaves a few holes even then), so the depth is passed through unchanged."""
    same_lens = a == b or np.allclose([a.width, a.height, a.fx, a.fy, a.cx, a.cy, *a.coeffs],
                                      [b.width, b.height, b.fx, b.fy, b.cx, b.cy, *b.coeffs], atol=1e-6)
    return (same_lens and np.allclose(np.asarray(ext.rotation), np.eye(3).ravel(), atol=1e-6)
            and np.allclose(ext.translation, 0.0, atol=1e-6))


def _depth_mm(frame: rs.depth_frame) -> np.ndarray:
    data = np.asanyarray(frame.get_data())
    scale = frame.get_units() * 1000.0  # device units to mm; 1 on a D400 at its default depth units
    if abs(scale - 1.0) < 1e-6:
        return data
    return np.clip(np.rint(data * scale), 0, 65535).astype(np.uint16)


class RealSenseCamera:
    """One RealSense as a ``CameraDevice``.

    ``context``: the librealsense context to look for the device in (default: a fresh one,
    which sees the USB devices). Tests hand over a context holding a ``software_device`` and
    run this very code against frames they inject."""

    def __init__(self, config: RealSenseConfig, context: rs.context | None = None):
        self.config = config
        self.ctx = context if context is not None else rs.context('{"dds": {"enabled": false}}')
        self.name = f"RealSense {config.serial}" if config.serial else "RealSense"
        self.color_size = parse_profile(config.color_profile)
        self.depth_size = parse_profile(config.depth_profile) if config.enable_depth else None
        self.pipe: rs.pipeline | None = None
        self.align: rs.align | None = None
        self.color_intrinsics: Intrinsics | None = None
        self.depth_intrinsics: Intrinsics | None = None
        self.serial = config.serial
        self._held: rs.composite_frame | None = None  # the frames the last Frame's arrays point into
        self._last_color: tuple[int, float] | None = None
        self._pair_ms = 500.0 / 30
        self._clock = DeviceClock()

    def _find(self) -> str:
        found = [d.get_info(rs.camera_info.serial_number) for d in self.ctx.query_devices()
                 if d.supports(rs.camera_info.serial_number)]
        want = self.config.serial
        if want and want not in found:
            raise DeviceNotFound(f"no RealSense with serial {want} connected"
                                 + (f" (found {', '.join(found)})" if found else ""))
        if not found:
            raise DeviceNotFound("no RealSense connected")
        return want or found[0]

    def open(self) -> None:
        serial = self._find()
        cfg = rs.config()
        cfg.enable_device(serial)
        w, h, fps = self.color_size
        cfg.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
        if self.depth_size is not None:
            w, h, fps = self.depth_size
            cfg.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)
        pipe = rs.pipeline(self.ctx)
        profile = pipe.start(cfg)
        self.pipe, self.serial = pipe, serial
        self.name = f"RealSense {serial}"
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self.color_intrinsics = intrinsics_from_rs(color.get_intrinsics())
        self.align, self.depth_intrinsics = None, None
        if self.depth_size is not None:
            depth = profile.get_stream(rs.stream.depth).as_video_stream_profile()
            self.depth_intrinsics = intrinsics_from_rs(depth.get_intrinsics())
            if self.config.align_depth:
                if not _coincident(self.depth_intrinsics, self.color_intrinsics, depth.get_extrinsics_to(color)):
                    self.align = rs.align(rs.stream.color)
                self.depth_intrinsics = self.color_intrinsics
        self._clock = DeviceClock()  # a reopened device may have restarted its clock
        self._last_color = None
        self._pair_ms = 500.0 / (color.fps() or 30)  # depth and colour of one moment: within half a period

    def _host_time(self, frame: rs.frame, arrival: float) -> float:
        t = frame.get_timestamp() / 1000.0
        if frame.get_frame_timestamp_domain() == rs.timestamp_domain.hardware_clock:
            return self._clock.to_host(t, arrival)
        return t  # global_time: the device clock already mapped to the host's; system_time: host arrival

    def read(self, timeout: float) -> Frame | None:
        if self.pipe is None:
            raise RuntimeError(f"{self.name} is not open")
        self._held = None
        ok, frames = self.pipe.try_wait_for_frames(max(1, int(timeout * 1000)))
        if not ok:
            return None
        arrival = time.time()
        color = frames.get_color_frame()
        if not color:
            return None
        # The pipeline completes a set with the last frame of a stream that has none yet: a
        # colour frame already handed on comes again beside the next depth frame. Skip it; and
        # keep a depth frame only if it shows the colour frame's moment.
        key = (color.get_frame_number(), color.get_timestamp())
        if key == self._last_color:
            return None
        self._last_color = key
        depth = frames.get_depth_frame() if self.depth_size is not None else None
        if depth and abs(depth.get_timestamp() - color.get_timestamp()) > self._pair_ms:
            depth = None
        if depth and self.align is not None:
            frames = self.align.process(frames)
            color, depth = frames.get_color_frame(), frames.get_depth_frame()
        self._held = frames
        return Frame(
            stamp=self._host_time(color, arrival),
            number=color.get_frame_number(),
            rgb=np.asanyarray(color.get_data()),
            depth_mm=_depth_mm(depth) if depth else None,
            color_intrinsics=self.color_intrinsics,
            depth_intrinsics=self.depth_intrinsics if depth else None,
            depth_aligned=bool(depth) and self.config.align_depth,
        )

    def close(self) -> None:
        self._held = None
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            try:
                pipe.stop()
            except RuntimeError:
                pass  # already stopped, or the device went away under it

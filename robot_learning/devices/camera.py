"""What every camera driver shares: intrinsics, frames, profiles, clocks and frame counting."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class DeviceNotFound(RuntimeError):
    """The device is not there (unplugged, wrong serial or path); the capture loop retries."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one image stream, in the terms of sensor_msgs/CameraInfo.

    ``distortion_model`` is ROS's name ("plumb_bob": k1 k2 t1 t2 k3, "equidistant": k1..k4);
    all zeros (fx = 0) means uncalibrated, which is what camera_info_manager publishes when it
    has no calibration file."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def uncalibrated(cls, width: int, height: int) -> Intrinsics:
        return cls(width, height, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def from_fovy(cls, width: int, height: int, fovy_deg: float) -> Intrinsics:
        """Square pixels, principal point at the centre: how the sim renders its cameras."""
        f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2)
        return cls(width, height, float(f), float(f), (width - 1) / 2.0, (height - 1) / 2.0)

    @property
    def k(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    @property
    def p(self) -> list[float]:
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass
class Frame:
    """One capture. ``rgb`` and ``depth_mm`` may be views of the driver's buffers: valid until
    the driver's next ``read`` (a consumer copies what it keeps, once, where it needs it)."""

    stamp: float                  # capture time on the host clock (time.time()), seconds
    number: int                   # the device's frame counter
    rgb: np.ndarray               # (H, W, 3) uint8
    depth_mm: np.ndarray | None   # (H, W) uint16 millimetres, 0 = no data; aligned to colour if asked
    color_intrinsics: Intrinsics
    depth_intrinsics: Intrinsics | None  # of ``depth_mm`` (the colour's when aligned)
    depth_aligned: bool = False


class CameraDevice(Protocol):
    """A driver: ``open`` raises (``DeviceNotFound`` when the device is absent), ``read``
    returns None when no frame came within ``timeout`` seconds, ``close`` never raises."""

    name: str

    def open(self) -> None: ...

    def read(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...


def parse_profile(profile: str) -> tuple[int, int, int]:
    """realsense-ros's "640x480x30" or "640,480,30" as (width, height, fps); zeros mean the
    device's default."""
    parts = [p for p in re.split(r"[x,X\s]+", str(profile).strip()) if p]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"profile '{profile}' is not WIDTHxHEIGHTxFPS (e.g. 640x480x30, or 0x0x0 for the default)")
    w, h, fps = (int(p) for p in parts)
    return w, h, fps


class DeviceClock:
    """Maps a device's own clock onto the host's.

    The host receives each frame some transport latency after its device stamp; the smallest
    (arrival - device time) seen is the best estimate of the clock offset, since latency only
    ever adds. The estimate may creep up by ``drift`` seconds per second so it follows a
    device crystal that runs slow as well as one that runs fast (typical drift is tens of ppm).
    A device clock that jumps back or far ahead (a reset, a replug) starts the estimate afresh."""

    def __init__(self, drift: float = 2e-4, max_jump: float = 5.0):
        self.drift, self.max_jump = drift, max_jump
        self.offset: float | None = None
        self._last_device: float | None = None

    def to_host(self, device_s: float, arrival_s: float) -> float:
        last = self._last_device
        if last is None or device_s < last or device_s - last > self.max_jump:
            self.offset = None
        measured = arrival_s - device_s
        if self.offset is None:
            self.offset = measured
        else:
            self.offset = min(self.offset + self.drift * (device_s - last), measured)
        self._last_device = device_s
        return device_s + self.offset


class FrameCounter:
    """Frames, dropped frames (gaps in the device's frame numbers) and the recent frame rate.

    A frame number that goes back is a counter restart (a reopened device), not a drop; call
    ``restart`` after reopening so the first frame of the new sequence is not compared to the
    last of the old one."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self.frames = 0
        self.dropped = 0
        self._last: int | None = None
        self._arrivals: deque[float] = deque()

    def add(self, number: int, now: float | None = None) -> int:
        """Count one frame; returns how many frames were lost just before it."""
        now = time.monotonic() if now is None else now
        lost = 0
        if self._last is not None and number > self._last + 1:
            lost = number - self._last - 1
            self.dropped += lost
        self._last = number
        self.frames += 1
        self._arrivals.append(now)
        while self._arrivals and now - self._arrivals[0] > self.window:
            self._arrivals.popleft()
        return lost

    def restart(self) -> None:
        self._last = None

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last ``window`` seconds; 0 when frames have stopped."""
        now = time.monotonic() if now is None else now
        arrivals = tuple(self._arrivals)  # one C-level copy: the capture thread appends meanwhile
        recent = [t for t in arrivals if now - t <= self.window]
        if len(recent) < 2 or now - recent[-1] > self.window / 2:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

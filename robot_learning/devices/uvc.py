"""UVC cameras (webcams, visuotactile sensors) and video files through OpenCV.

A UVC camera knows nothing of its lens, so its CameraInfo comes from a calibration YAML:
camera_calibration's format (``image_width``, ``camera_matrix``, ``distortion_coefficients``,
what ``cameracalibrator`` and camera_info_manager write) or this project's
``hardware/cameras/*.yaml`` (``width``, ``height``, ``fovy_deg``). A video file plays at its
own frame rate, as a camera would deliver it, which makes recorded footage a stand-in camera.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from robot_learning.config import ConfigError, load_yaml
from robot_learning.devices.camera import DeviceNotFound, Frame, Intrinsics


def load_camera_info(path: str | Path) -> Intrinsics:
    """Intrinsics from a calibration YAML file (``file://`` URLs as camera_info_manager takes them)."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise ConfigError(f"camera_info_url '{path}': only file:// URLs or plain paths are supported")
    d = load_yaml(text)
    src = d["_source"]
    try:
        if "camera_matrix" in d:
            k = [float(x) for x in d["camera_matrix"]["data"]]
            coeffs = tuple(float(x) for x in d.get("distortion_coefficients", {}).get("data", [0.0] * 5))
            if len(k) != 9:
                raise ConfigError(f"{src}: camera_matrix must have 9 numbers, got {len(k)}")
            return Intrinsics(int(d["image_width"]), int(d["image_height"]), k[0], k[4], k[2], k[5],
                              str(d.get("distortion_model", "plumb_bob")), coeffs)
        return Intrinsics.from_fovy(int(d["width"]), int(d["height"]), float(d["fovy_deg"]))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{src}: not a camera calibration (camera_calibration's image_width/camera_matrix/"
                          f"distortion_coefficients, or width/height/fovy_deg): {e!r}") from e


@dataclass
class UvcConfig:
    device: str = "/dev/video0"   # a path (/dev/v4l/by-id/... keeps its name across replugs), an index, a video file
    width: int = 0                # 0: the camera's default
    height: int = 0
    fps: float = 0.0
    fourcc: str = ""              # e.g. MJPG: lets a USB 2 camera reach full resolution at 30 fps
    camera_info: str = ""         # calibration YAML; empty: uncalibrated CameraInfo (zeros, right size)


class UvcCamera:
    """A UVC camera or a video file as a ``CameraDevice``.

    Stamps: a file's frames at the wall time playback started plus their presentation time;
    a V4L2 camera's at the driver's capture timestamp (monotonic clock, moved onto the wall
    clock) when it gives a plausible one, else when the frame reached us. A live camera has
    no frame counter in OpenCV, so frame numbers are counted in nominal frame periods since
    opening: a gap of two periods is one dropped frame."""

    def __init__(self, config: UvcConfig):
        self.config = config
        self.name = f"camera {config.device}"
        self.intrinsics = load_camera_info(config.camera_info) if config.camera_info else None
        self.cap: cv2.VideoCapture | None = None
        self.is_file = False
        self.fps = 0.0
        self._t0: tuple[float, float] | None = None  # (wall, monotonic) at the first frame of a file
        self._first: float | None = None              # first stamp since opening (live cameras)
        self._count = 0
        self._rgb: np.ndarray | None = None

    def _source(self) -> int | str:
        dev = str(self.config.device).strip()
        if dev.isdigit():
            return int(dev)
        if not Path(dev).exists():
            raise DeviceNotFound(f"{dev} does not exist (camera unplugged?)")
        return dev

    def open(self) -> None:
        src = self._source()
        self.is_file = isinstance(src, str) and Path(src).is_file()
        api = cv2.CAP_ANY if self.is_file else cv2.CAP_V4L2
        cap = cv2.VideoCapture(src, api)
        if not cap.isOpened():
            cap.release()
            raise DeviceNotFound(f"OpenCV cannot open {src}")
        c = self.config
        if not self.is_file:
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000)  # a silent camera must not block for OpenCV's 10 s
            if c.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc.ljust(4)[:4]))
            if c.width and c.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
            if c.fps:
                cap.set(cv2.CAP_PROP_FPS, c.fps)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.intrinsics is not None and (self.intrinsics.width, self.intrinsics.height) != (w, h):
            cap.release()
            raise ConfigError(f"{c.camera_info} calibrates a {self.intrinsics.width}x{self.intrinsics.height} "
                              f"image but {c.device} delivers {w}x{h}: set the size or recalibrate")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS)) or float(c.fps)
        self.cap, self._t0, self._first, self._count = cap, None, None, 0
        self.color_intrinsics = self.intrinsics or Intrinsics.uncalibrated(w, h)

    def _file_stamp(self) -> float:
        """Plays the file in real time: waits for the frame's presentation time, returns its stamp."""
        pts = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if self._t0 is None:
            self._t0 = (time.time() - pts, time.monotonic() - pts)
        wait = self._t0[1] + pts - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return self._t0[0] + pts

    def _live_stamp(self, arrival: float) -> float:
        """The driver's buffer timestamp (CLOCK_MONOTONIC on Linux UVC) moved onto the wall clock."""
        buf = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        age = time.monotonic() - buf
        return arrival - age if 0.0 <= age < 1.0 else arrival

    def read(self, timeout: float) -> Frame | None:
        if self.cap is None:
            raise RuntimeError(f"{self.name} is not open")
        if not self.cap.grab():
            time.sleep(timeout)  # end of a file, or a camera that went quiet: no busy loop
            return None
        arrival = time.time()
        if self.is_file:
            stamp = self._file_stamp()
            number = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
        else:
            stamp = self._live_stamp(arrival)
            if self._first is None:
                self._first = stamp
            number = round((stamp - self._first) * self.fps) if self.fps > 0 else self._count
            self._count += 1
        ok, bgr = self.cap.retrieve()
        if not ok or bgr is None:
            return None
        if bgr.ndim == 2:
            self._rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB, dst=self._rgb)
        else:
            self._rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=self._rgb)
        return Frame(stamp, number, self._rgb, None, self.color_intrinsics, None)

    def close(self) -> None:
        cap, self.cap = self.cap, None
        if cap is not None:
            cap.release()

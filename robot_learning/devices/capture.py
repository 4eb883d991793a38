"""A camera on its own thread that survives unplugs.

Real cameras go away: a USB cable is pulled, a hub resets, firmware hangs and the stream just
stops. The loop treats all of these alike: when the device cannot be opened, fails, or sends
nothing for ``frame_timeout`` seconds, it says so, closes it, waits (doubling the wait up to
``retry_max``) and opens it again. A node that publishes the frames never needs a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from robot_learning.devices.camera import CameraDevice, DeviceNotFound, Frame, FrameCounter

Log = Callable[[int, str], None]


@dataclass
class CaptureStatus:
    """A snapshot for diagnostics. ``state``: starting, streaming, stalled (opened but no
    frames), disconnected (cannot open) or closed."""

    state: str
    message: str
    frames: int
    dropped: int
    reconnects: int
    fps: float


def _default_log(level: int, msg: str) -> None:
    logging.getLogger("robot_learning.devices").log(level, msg)


class CaptureLoop:
    """Reads ``device`` on a daemon thread and hands each frame to ``on_frame(frame)``.

    ``on_frame`` runs on the capture thread and may use the frame's arrays only during the
    call. ``first_frame_timeout`` is longer than ``frame_timeout`` because a camera takes a
    while to deliver its first frame after opening (auto-exposure settling on a RealSense).
    ``reconnects`` counts outages recovered from: frames flowing again after they had stopped.
    """

    def __init__(self, device: CameraDevice, on_frame: Callable[[Frame], None], log: Log | None = None,
                 frame_timeout: float = 1.0, first_frame_timeout: float = 5.0,
                 retry_min: float = 0.1, retry_max: float = 5.0):
        self.device, self.on_frame = device, on_frame
        self.log = log or _default_log
        self.frame_timeout, self.first_frame_timeout = frame_timeout, first_frame_timeout
        self.retry_min, self.retry_max = retry_min, retry_max
        self.counter = FrameCounter()
        self.reconnects = 0
        self.state, self.message = "starting", f"opening {device.name}"
        self._consumer_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"capture-{device.name}")

    def start(self) -> CaptureLoop:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.state, self.message = "closed", "closed"

    def status(self) -> CaptureStatus:
        return CaptureStatus(self.state, self.message, self.counter.frames, self.counter.dropped,
                             self.reconnects, self.counter.fps())

    def _set(self, state: str, message: str, level: int = logging.WARNING) -> None:
        self.state, self.message = state, message
        self._emit(level, message)

    def _emit(self, level: int, message: str) -> None:
        try:
            self.log(level, message)
        except Exception:  # noqa: BLE001 - a broken logger must not stop the camera
            _default_log(level, message)

    def _run(self) -> None:
        delay = self.retry_min
        outage = False  # frames had flowed and then stopped: their return is a reconnect
        while not self._stop.is_set():
            try:
                self.device.open()
            except Exception as e:  # noqa: BLE001 - any failure to open is reported and retried
                why = str(e) if isinstance(e, DeviceNotFound) else f"cannot open {self.device.name}: {e}"
                self._set("disconnected", f"{why}; retrying in {delay:.1f} s")
            else:
                streamed = self._stream(outage)
                outage = outage or streamed
                if streamed:
                    delay = self.retry_min
                self.counter.restart()
                if not self._stop.is_set():
                    self.message += f"; reopening in {delay:.1f} s"
            finally:
                self.device.close()
            self._stop.wait(delay)
            delay = min(2 * delay, self.retry_max)

    def _stream(self, outage: bool) -> bool:
        """Read until the device stalls or fails (or the loop is closed); True if frames came."""
        name = self.device.name
        opened = last = time.monotonic()
        streamed = False
        # what went wrong stays in view until frames flow again
        problem = self.message.split(";")[0] if self.state in ("stalled", "disconnected") else ""
        self.state = "starting"
        self.message = f"{name} opened, waiting for frames" + (f" (after: {problem})" if problem else "")
        while not self._stop.is_set():
            try:
                frame = self.device.read(min(0.25, self.frame_timeout))
            except Exception as e:  # noqa: BLE001 - a failing device is reopened
                self._set("disconnected", f"{name} failed: {e}")
                return streamed
            now = time.monotonic()
            if frame is None:
                limit = self.frame_timeout if streamed else self.first_frame_timeout
                if now - last > limit:
                    self._set("stalled", f"no frames from {name} for {now - last:.1f} s")
                    return streamed
                continue
            if not streamed:
                streamed = True
                if outage:
                    self.reconnects += 1
                    self._set("streaming", f"{name} streaming again (reconnect {self.reconnects})", logging.INFO)
                else:
                    self._set("streaming", f"{name} streaming ({now - opened:.1f} s to the first frame)",
                              logging.INFO)
            last = now
            self.counter.add(frame.number, now)
            try:
                self.on_frame(frame)
            except Exception as e:  # noqa: BLE001 - the consumer's failure is not the device's
                if repr(e) != self._consumer_error:  # once per kind of failure, not 30 times a second
                    self._consumer_error = repr(e)
                    self._emit(logging.ERROR, f"frame consumer failed: {e!r}")
        return streamed

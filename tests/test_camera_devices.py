"""Camera drivers without ROS: the RealSense driver against real librealsense (a
software_device fed with sim renders), the UVC driver against real OpenCV (a video file of
sim renders). Each checks what a user relies on: the pixels, stamps and intrinsics that went
in come out, lost frames are counted, and a camera that goes away comes back by itself."""

from __future__ import annotations

import logging
import os
import time

import rclpy  # noqa: F401  # isort: skip  (before pyrealsense2: see camera_rig)
import cv2
import numpy as np
import pyrealsense2 as rs
import pytest
from camera_rig import CALIBRATED, CALIBRATION, SoftwareRealSense, wait_until, wrist_renders, write_video

from robot_learning.config import ConfigError
from robot_learning.devices.camera import DeviceClock, FrameCounter, Intrinsics, parse_profile
from robot_learning.devices.capture import CaptureLoop
from robot_learning.devices.realsense import RealSenseCamera, RealSenseConfig
from robot_learning.devices.uvc import UvcCamera, UvcConfig, load_camera_info


@pytest.fixture(scope="module")
def renders():
    return wrist_renders(8)


@pytest.fixture
def rs_camera():
    """``rs_camera(serial, colour_intrinsics, depth_intrinsics=None, plug=True)``: a software
    RealSense, closed after the test."""
    made = []

    def make(*args, plug: bool = True, **kw) -> SoftwareRealSense:
        made.append(SoftwareRealSense(*args, **kw))
        if plug:
            made[-1].plug()
        return made[-1]

    yield make
    for cam in made:
        cam.close()


class Collector:
    """The loop's consumer: copies of what it was handed (arrays are only valid during the call)."""

    def __init__(self):
        self.frames = []
        self.logs: list[tuple[int, str]] = []

    def __call__(self, f):
        self.frames.append((f.stamp, f.number, f.rgb.copy(), None if f.depth_mm is None else f.depth_mm.copy(),
                            f.color_intrinsics, f.depth_intrinsics))

    def log(self, level, msg):
        self.logs.append((level, msg))


def start(device, frame_timeout=1.0, wait_open=True, **kw):
    """The loop on ``device``; with ``wait_open``, once it has opened the device (frames sent
    to a software device before its pipeline starts go nowhere)."""
    sink = Collector()
    kw.setdefault("retry_min", 0.05)
    loop = CaptureLoop(device, sink, log=sink.log, frame_timeout=frame_timeout, **kw).start()
    if wait_open:
        assert wait_until(lambda: "waiting for frames" in loop.status().message, 10.0), loop.status()
    return loop, sink


def feed(cam: SoftwareRealSense, sink: Collector, number: int, stamp_ms: float, rgb, depth=None,
         domain=rs.timestamp_domain.global_time, timeout: float = 5.0) -> bool:
    """Inject one frame and wait until the loop has handed it on (the pipeline queue holds one
    frame: injecting faster than the reader takes them would drop frames for real)."""
    n = len(sink.frames)
    cam.inject(number, stamp_ms, rgb, depth, domain)
    return wait_until(lambda: len(sink.frames) > n, timeout)


def test_realsense_frames_carry_the_injected_pixels_stamps_and_intrinsics(renders, rs_camera):
    intr, frames = renders
    cam = rs_camera("SIM-0001", intr, intr)
    loop, sink = start(RealSenseCamera(RealSenseConfig("_SIM-0001", "640x480x30", "640x480x30", True, True),
                                       context=cam.ctx))
    try:
        t0 = time.time() * 1000.0
        stamps = [t0 + 33.3333 * k + 0.25 for k in range(len(frames))]
        for k, (rgb, depth) in enumerate(frames):
            assert feed(cam, sink, 100 + k, stamps[k], rgb, depth), f"frame {k} never came out"
        assert not np.array_equal(frames[0][0], frames[-1][0])  # the arm moved: each frame is its own
        assert len(sink.frames) == len(frames)
        for k, ((stamp, number, rgb, depth, ci, di), (rgb_in, depth_in), t) in enumerate(zip(sink.frames, frames,
                                                                                             stamps)):
            assert number == 100 + k
            assert stamp == pytest.approx(t / 1000.0, abs=1e-6)
            np.testing.assert_array_equal(rgb, rgb_in)
            np.testing.assert_array_equal(depth, depth_in)  # mm; coincident sensors: passed through unresampled
            for got in (ci, di):  # the device's stream profile (float32 in librealsense)
                assert (got.width, got.height) == (640, 480)
                assert [got.fx, got.fy, got.cx, got.cy] == pytest.approx([intr.fx, intr.fy, intr.cx, intr.cy],
                                                                          rel=1e-6)
        s = loop.status()
        assert (s.state, s.frames, s.dropped, s.reconnects) == ("streaming", len(frames), 0, 0)
        assert loop.device.name == "RealSense SIM-0001"
    finally:
        loop.close()


def test_realsense_counts_the_frames_missing_from_the_sequence(renders, rs_camera):
    intr, frames = renders
    cam = rs_camera("SIM-0002", intr)
    loop, sink = start(RealSenseCamera(RealSenseConfig("SIM-0002", enable_depth=False), context=cam.ctx))
    try:
        t0 = time.time() * 1000.0
        for k, number in enumerate([0, 1, 2, 5, 6, 10]):  # 3, 4 and 7..9 lost on the way
            assert feed(cam, sink, number, t0 + 33.3 * number, frames[k][0])
        assert [f[1] for f in sink.frames] == [0, 1, 2, 5, 6, 10]
        assert loop.status().dropped == 5
    finally:
        loop.close()


def test_realsense_hardware_clock_is_mapped_onto_the_host_clock(renders, rs_camera):
    intr, frames = renders
    cam = rs_camera("SIM-0003", intr)
    loop, sink = start(RealSenseCamera(RealSenseConfig("SIM-0003", enable_depth=False), context=cam.ctx))
    try:
        device_origin = 4321.0 - time.monotonic()  # the device counts from its power-up, not the epoch
        captured, device_ms = [], []
        for k in range(6):
            captured.append(time.time())
            device_ms.append((time.monotonic() + device_origin) * 1000.0)
            assert feed(cam, sink, k, device_ms[-1], frames[k][0], domain=rs.timestamp_domain.hardware_clock)
            time.sleep(0.02)
        stamps = np.array([f[0] for f in sink.frames])
        # on the host clock, close to when each frame was made, and spaced as the device spaced them
        # (the device clock is 4321 s after its power-up; a few ms of transport latency is all that may differ)
        assert np.all(np.abs(stamps - np.array(captured)) < 0.25), stamps - np.array(captured)
        np.testing.assert_allclose(np.diff(stamps), np.diff(device_ms) / 1000.0, atol=0.02)
    finally:
        loop.close()


def test_realsense_recovers_when_frames_stop_and_come_back(renders, rs_camera):
    intr, frames = renders
    cam = rs_camera("SIM-0004", intr, intr)
    loop, sink = start(RealSenseCamera(RealSenseConfig("SIM-0004", align_depth=True), context=cam.ctx),
                       frame_timeout=0.4)
    try:
        t = time.time() * 1000.0
        for k in range(3):
            assert feed(cam, sink, k, t + 33.3 * k, *frames[k])
        # unplugged: nothing for a while. The loop notices, says so, and keeps reopening.
        assert wait_until(lambda: loop.status().state != "streaming", 3.0)
        assert any(level == logging.WARNING and "no frames from RealSense SIM-0004" in m for level, m in sink.logs)
        assert loop.status().reconnects == 0
        # Plugged back once the loop has reopened the device: this librealsense does not guard a
        # software sensor against frames injected while a pipeline stops or starts it (a USB
        # device has no such race). The device counts from 0 again, as a real one does.
        assert wait_until(lambda: "waiting for frames (after: no frames from" in loop.status().message, 5.0)
        n = len(sink.frames)
        for k in range(4):
            assert feed(cam, sink, k, time.time() * 1000.0, *frames[3 + k])
        s = loop.status()
        assert (s.state, s.reconnects, s.dropped) == ("streaming", 1, 0)
        assert any("streaming again (reconnect 1)" in m for _, m in sink.logs)
        for _, k, rgb, depth, _, _ in sink.frames[n:]:  # each resumed frame is the one injected under its number
            np.testing.assert_array_equal(rgb, frames[3 + k][0])
            np.testing.assert_array_equal(depth, frames[3 + k][1])
    finally:
        loop.close()


def test_realsense_waits_for_a_camera_plugged_in_later(renders, rs_camera):
    intr, frames = renders
    cam = rs_camera("SIM-0005", intr, plug=False)
    loop, sink = start(RealSenseCamera(RealSenseConfig("SIM-0005", enable_depth=False), context=cam.ctx),
                       wait_open=False, retry_min=2.0)
    try:
        assert wait_until(lambda: loop.status().state == "disconnected", 3.0)
        assert "no RealSense with serial SIM-0005 connected" in loop.status().message
        # plugged in while the loop waits between attempts: adding a software device races
        # with a query of the same context in this librealsense (a USB plug does not)
        cam.plug()
        assert wait_until(lambda: loop.status().state == "starting", 10.0)  # retried and opened
        assert feed(cam, sink, 0, time.time() * 1000.0, frames[0][0])
        np.testing.assert_array_equal(sink.frames[0][2], frames[0][0])
        assert loop.status().state == "streaming"
    finally:
        loop.close()


def test_realsense_aligns_depth_of_another_resolution_into_the_colour_image(rs_camera):
    intr, hi = wrist_renders(1)
    dintr, lo = wrist_renders(1, 320, 240)
    cam = rs_camera("SIM-0006", intr, dintr)
    loop, sink = start(RealSenseCamera(RealSenseConfig("SIM-0006", depth_profile="320x240x30", align_depth=True),
                                       context=cam.ctx))
    try:
        assert feed(cam, sink, 1, time.time() * 1000.0, hi[0][0], lo[0][1])
        _, _, rgb, aligned, ci, di = sink.frames[0]
        assert aligned.shape == (480, 640) and di == ci  # in the colour image, with its intrinsics
        truth = hi[0][1].astype(int)  # the same view rendered at the colour resolution
        valid = aligned > 0
        assert valid.mean() > 0.95  # align may leave a few holes
        err = np.abs(aligned[valid] - truth[valid])
        assert np.median(err) <= 1 and np.percentile(err, 90) <= 2  # mm; edges of objects differ more
    finally:
        loop.close()


def test_uvc_plays_a_video_file_with_its_calibration_and_reopens_it_at_the_end(renders, tmp_path):
    _, frames = renders
    video, calib = tmp_path / "wrist.mkv", tmp_path / "wrist.yaml"
    write_video(video, [f[0] for f in frames])
    calib.write_text(CALIBRATION)
    loop, sink = start(UvcCamera(UvcConfig(str(video), camera_info=f"file://{calib}")), frame_timeout=0.3,
                       wait_open=False)
    try:
        assert wait_until(lambda: len(sink.frames) >= len(frames) + 2, 15.0)
        first = sink.frames[:len(frames)]
        assert [f[1] for f in first] == list(range(len(frames)))
        for (_, _, rgb, _, ci, _), (rgb_in, _) in zip(first, frames):
            assert np.abs(rgb.astype(int) - rgb_in).max() <= 2  # FFV1 is lossless; a little slack for the codec path
            assert ci == CALIBRATED
        np.testing.assert_allclose(np.diff([f[0] for f in first]), 1 / 30.0, atol=2e-3)  # played at its own rate
        assert abs(first[0][0] - time.time()) < 15.0
        # the end of the file is a camera that stopped: reported, reopened, playing again from frame 0
        assert sink.frames[len(frames)][1] == 0
        np.testing.assert_array_equal(sink.frames[len(frames)][2], sink.frames[0][2])
        s = loop.status()
        assert (s.reconnects, s.dropped) == (1, 0)
        assert any("no frames from camera" in m for _, m in sink.logs)
    finally:
        loop.close()


def test_uvc_waits_for_a_device_that_appears_later(renders, tmp_path):
    _, frames = renders
    target = tmp_path / "camera.mkv"
    loop, sink = start(UvcCamera(UvcConfig(str(target))), frame_timeout=0.5, wait_open=False)
    try:
        assert wait_until(lambda: loop.status().state == "disconnected", 3.0)
        assert "does not exist" in loop.status().message
        write_video(tmp_path / "part.mkv", [f[0] for f in frames[:3]])
        os.replace(tmp_path / "part.mkv", target)  # plugged in
        assert wait_until(lambda: len(sink.frames) >= 3, 15.0)
        assert sink.frames[0][4] == Intrinsics.uncalibrated(640, 480)  # no calibration given: zeros, right size
        assert loop.status().reconnects == 0  # it had never streamed: a first connection, not a reconnect
    finally:
        loop.close()


def test_uvc_refuses_a_calibration_for_another_image_size(renders, tmp_path):
    _, frames = renders
    video, calib = tmp_path / "small.mkv", tmp_path / "wrist.yaml"
    write_video(video, [cv2.resize(f[0], (320, 240)) for f in frames[:2]])
    calib.write_text(CALIBRATION)
    loop, sink = start(UvcCamera(UvcConfig(str(video), camera_info=str(calib))), wait_open=False)
    try:
        assert wait_until(lambda: "calibrates a 640x480 image" in loop.status().message, 5.0)
        assert loop.status().state == "disconnected" and not sink.frames
    finally:
        loop.close()


def test_calibration_files_in_both_formats():
    d435 = load_camera_info("hardware/cameras/d435_color_640x480.yaml")
    assert d435 == Intrinsics.from_fovy(640, 480, 42.5)
    assert d435.fx == pytest.approx(0.5 * 480 / np.tan(np.deg2rad(42.5) / 2))
    with pytest.raises(ConfigError, match="only file://"):
        load_camera_info("package://camera/wrist.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_camera_info("/nonexistent/wrist.yaml")


def test_profiles_clock_and_counter():
    assert parse_profile("640x480x30") == parse_profile("640,480,30") == (640, 480, 30)
    assert parse_profile("0,0,0") == (0, 0, 0)
    with pytest.raises(ValueError, match="WIDTHxHEIGHTxFPS"):
        parse_profile("640x480")
    clock = DeviceClock()
    # latency 5-20 ms on top of an offset of 1000 s: the offset is the smallest (arrival - device time)
    latencies = [0.012, 0.005, 0.020, 0.009, 0.015]
    mapped = [clock.to_host(10.0 + k / 30, 1010.0 + k / 30 + lat) for k, lat in enumerate(latencies)]
    assert mapped[1:] == pytest.approx([1010.005 + k / 30 for k in range(1, 5)], abs=1e-4)
    assert clock.to_host(2.0, 1100.0) == pytest.approx(1100.0)  # the device clock restarted: new offset
    c = FrameCounter()
    for n, t in zip([7, 8, 11, 3, 4], [0.0, 0.1, 0.2, 0.3, 0.4]):  # 9, 10 lost; 3 is a restart, not a loss
        c.add(n, t)
    assert (c.frames, c.dropped) == (5, 2)
    assert c.fps(0.4) == pytest.approx(10.0) and c.fps(5.0) == 0.0

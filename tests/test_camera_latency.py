"""Capture-to-stamp latency from a clock shown to the camera: the display's code, the sim's
display through the real graph (an injected latency recovered within 5 ms), the latency file
that several calibrations share."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from robot_learning.calibrate.clock_display import (
    WRAP_MS,
    bits_to_ms,
    gray_bits,
    latency_from_frames,
    lateness_ms,
    pattern_image,
    read_display,
)


def _seen_at_an_angle(img: np.ndarray) -> np.ndarray:
    """The display as a camera sees it: in perspective, smaller, blurred, dimmer and noisy."""
    h, w = img.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[60, 40], [0.62 * w, 70], [0.58 * w, 0.75 * h], [40, 0.7 * h]])
    out = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=200)
    out = cv2.GaussianBlur(out, (3, 3), 0.8).astype(np.float64) * 0.7 + 30
    return np.clip(out + np.random.default_rng(0).normal(0, 4, out.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("t", [0.0, 0.001, 12.345, 65.535, 65.536, 1796179423.817])
def test_the_display_reads_back_the_millisecond_it_shows(t):
    want = int(np.floor(t * 1000)) % WRAP_MS
    assert read_display(pattern_image(t)) == want
    assert read_display(_seen_at_an_angle(pattern_image(t))) == want


def test_consecutive_milliseconds_differ_in_one_cell():
    """Gray code: a frame that catches the display mid-update reads one of the two times."""
    for ms in (0, 1, 255, 32767, WRAP_MS - 1):
        a, b = gray_bits(ms / 1000), gray_bits(((ms + 1) % WRAP_MS) / 1000)
        assert (a != b).sum() == 1
        assert bits_to_ms(a) == ms


def test_no_display_in_view_reads_as_nothing():
    assert read_display(np.full((480, 640, 3), 128, np.uint8)) is None
    half = pattern_image(3.0)
    half[:, : half.shape[1] // 2] = 255  # two markers gone: not enough to place the cells
    assert read_display(half) is None


def test_latency_across_the_wrap_and_the_display_period():
    assert lateness_ms(65.540, 65530) == pytest.approx(10.0)    # the display wrapped at 65.536 s
    assert lateness_ms(65.530, 5) == pytest.approx(-11.0, abs=1e-6)  # a stamp before the time shown
    # a 60 Hz screen: the time shown is up to a period old at capture; 30 ms latency underneath
    rng = np.random.default_rng(1)
    capture = np.sort(rng.uniform(100.0, 102.0, 200))
    period = 1 / 60
    shown = [int(np.floor(np.floor(c / period) * period * 1000)) % WRAP_MS for c in capture]
    res = latency_from_frames(list(capture + 0.030), shown + [None], period)
    assert res.latency_s == pytest.approx(0.030, abs=0.002)
    assert (res.frames, res.unread) == (200, 1)
    with pytest.raises(ValueError, match="not read in any of 2 frames"):
        latency_from_frames([1.0, 2.0], [None, None], 0.0)


def test_the_latency_file_keeps_what_other_calibrations_wrote(tmp_path):
    from robot_learning.calibrate.latency import measured_camera_latency, measured_latency, update_latency_file

    f = tmp_path / "latency.yaml"
    assert measured_camera_latency("front", f) == 0.0 and measured_latency(f) == 0.0  # never measured: none
    update_latency_file(f, {"command_to_motion_s": 0.08}, "arm")
    update_latency_file(f, {"cameras": {"front": {"capture_to_stamp_s": 0.031}}}, "front")
    update_latency_file(f, {"cameras": {"wrist": {"capture_to_stamp_s": 0.042}}}, "wrist")
    assert measured_latency(f) == 0.08
    assert measured_camera_latency("front", f) == 0.031 and measured_camera_latency("wrist", f) == 0.042
    assert f.read_text().startswith("# wrist\n")


@pytest.mark.graph
def test_an_injected_camera_latency_is_recovered_through_the_graph(tmp_path):
    """The sim's front camera with a clock display in front and its frames stamped 40 ms late:
    `robot-learning calibrate camera-latency --sim` reads it back within 5 ms, into the file."""
    from robot_learning.calibrate.latency import measured_camera_latency, measured_latency, update_latency_file

    out = tmp_path / "latency.yaml"
    update_latency_file(out, {"command_to_motion_s": 0.05}, "arm")
    run = subprocess.run([sys.executable, "-m", "robot_learning.cli", "calibrate", "camera-latency", "--sim", "front",
                          "--inject", "0.04", "--frames", "30", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert measured_camera_latency("front", out) == pytest.approx(0.04, abs=0.005), run.stdout[-1000:]
    assert measured_latency(out) == 0.05
    assert "30 frames read, 0 not" in run.stdout

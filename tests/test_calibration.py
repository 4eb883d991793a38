"""Calibration against the sim's ground truth (issue 16): a ChArUco board rendered in the
MuJoCo workcell, found by OpenCV, and the intrinsics recovered within 1% of the camera's."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from robot_learning.calibrate.board import Board
from robot_learning.calibrate.intrinsics import CalibrationError, calibrate_intrinsics
from robot_learning.config import load_calibration
from robot_learning.devices.camera import Intrinsics
from robot_learning.devices.uvc import load_camera_info

pytestmark = pytest.mark.compute  # no ROS, no timing: `make test` runs it beside the rest


@pytest.mark.parametrize("camera", ["front", "wrist"])
def test_intrinsics_from_the_sims_board_views_are_the_cameras_own(camera, tmp_path):
    out = tmp_path / f"{camera}.yaml"
    r = subprocess.run([sys.executable, "-m", "robot_learning.cli", "calibrate", "intrinsics", "--sim", camera,
                        "--views", "15", "--seed", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = load_camera_info(out)  # what the uvc driver's camera_info parameter reads
    cam = load_calibration().cameras[camera]
    truth = Intrinsics.from_fovy(cam.width, cam.height, cam.fovy_deg)
    assert (got.width, got.height) == (truth.width, truth.height)
    for k in ("fx", "fy", "cx", "cy"):
        assert getattr(got, k) == pytest.approx(getattr(truth, k), rel=0.01), k
    assert np.abs(got.coeffs).max() < 0.1  # the sim's lens has no distortion: nothing large is invented
    assert "reprojection error" in out.read_text() and (tmp_path / f"{camera}_coverage.png").stat().st_size > 0


def test_too_few_views_of_the_board_is_one_sentence():
    from robot_learning.sim.workcell import Workcell

    cell = Workcell("pick_place")
    cell.reset(0)
    frames = [cell.render("front", depth=False).rgb] * 3  # no board in the scene
    cell.close()
    with pytest.raises(CalibrationError, match="found in 0 of 3 frames"):
        calibrate_intrinsics(Board.load(), frames)


@pytest.mark.parametrize("camera", ["wrist", "front"])
def test_hand_eye_recovers_where_the_camera_is_mounted(camera, tmp_path):
    """Eye in hand (the wrist camera, the board on the table) and eye to hand (the front camera,
    the board held by the hand): the arm moved through the pose set by its own controller, the
    mounting recovered within 2 mm and 0.5 degrees."""
    import yaml

    from robot_learning.transforms import quat_to_mat, xyzw_to_wxyz

    out = tmp_path / "he.yaml"
    r = subprocess.run([sys.executable, "-m", "robot_learning.cli", "calibrate", "hand-eye", "--sim", camera,
                        "--views", "15", "--seed", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = yaml.safe_load(out.read_text())["cameras"][camera]
    cam = load_calibration().cameras[camera]
    assert got["parent"] == cam.parent
    assert np.linalg.norm(np.array(got["translation"]) - cam.translation) < 0.002
    r_err = quat_to_mat(xyzw_to_wxyz(np.array(got["rotation_xyzw"]))).T @ quat_to_mat(xyzw_to_wxyz(cam.rotation_xyzw))
    assert np.degrees(np.arccos(np.clip((np.trace(r_err) - 1) / 2, -1, 1))) < 0.5


def test_command_to_motion_latency_recovers_an_injected_delay():
    """Cross-correlating commanded and measured motion: the sim arm's own lag, then 48 ms more
    injected (the randomization's action latency), found within 5 ms."""
    from robot_learning.calibrate.latency import sim_probe

    base, late = sim_probe(0.0), sim_probe(0.048)
    assert base.correlation > 0.8 and late.correlation > 0.8
    assert late.latency_s - base.latency_s == pytest.approx(0.048, abs=0.005), (base, late)

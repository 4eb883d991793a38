"""The URDF (robot_learning.description) puts every frame where the sim's MJCF has it: the TCP,
the tactile pads and the cameras, for any joint angles and finger openings, for each robot."""

from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree

import mujoco
import numpy as np
import pytest

from robot_learning.config import load_calibration, load_robot
from robot_learning.description import FT_FRAME, rpy_from_quat_xyzw, urdf
from robot_learning.paths import project_root
from robot_learning.sim.model import FT_SITE, TCP_SITE
from robot_learning.sim.workcell import Workcell
from robot_learning.transforms import OPTICAL_TO_MUJOCO_CAM, quat_mul, xyzw_to_wxyz


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    m = np.empty(9)
    q = np.r_[np.cos(angle / 2), np.sin(angle / 2) * np.asarray(axis, float) / np.linalg.norm(axis)]
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


def _rpy(r: float, p: float, y: float) -> np.ndarray:
    return _rot([0, 0, 1], y) @ _rot([0, 1, 0], p) @ _rot([1, 0, 0], r)


def urdf_frames(text: str, positions: dict[str, float]) -> dict[str, np.ndarray]:
    """Every link's 4x4 pose in the root link, by walking the URDF's joints (a reader of our
    own, so the test does not trust the writer's conventions)."""
    root = ElementTree.fromstring(text)
    joints = {j.find("child").get("link"): j for j in root.findall("joint")}
    poses: dict[str, np.ndarray] = {}

    def pose(link: str) -> np.ndarray:
        if link in poses:
            return poses[link]
        if link not in joints:
            poses[link] = np.eye(4)
            return poses[link]
        j = joints[link]
        o = j.find("origin")
        t = np.eye(4)
        t[:3, :3] = _rpy(*map(float, o.get("rpy").split()))
        t[:3, 3] = list(map(float, o.get("xyz").split()))
        q = positions.get(j.get("name"), 0.0)
        motion = np.eye(4)
        if j.get("type") == "revolute":
            motion[:3, :3] = _rot(list(map(float, j.find("axis").get("xyz").split())), q)
        elif j.get("type") == "prismatic":
            motion[:3, 3] = np.array(list(map(float, j.find("axis").get("xyz").split()))) * q
        poses[link] = pose(j.find("parent").get("link")) @ t @ motion
        return poses[link]

    for child in joints:
        pose(child)
    return poses


def _mj_pose(pos: np.ndarray, mat: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = mat.reshape(3, 3), pos
    return t


@pytest.mark.parametrize("robot_file", ["panda.yaml", "fr3.yaml", "ur5e.yaml"])
def test_urdf_frames_match_the_sim_for_any_joint_angles(robot_file):
    path = project_root() / "hardware" / "robots" / robot_file
    robot, calib = load_robot(path), load_calibration()
    text = urdf(robot, calib)
    cell = Workcell("pick_place", robot_path=str(path))
    m, d = cell.model, cell.data
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(robot.limits.q_lower, robot.limits.q_upper)
        opening = rng.uniform(0.0, robot.gripper.max_opening)
        cell.backend.set_joints(q, opening)
        mujoco.mj_forward(m, d)
        positions = dict(zip(robot.joint_names, q)) | {n: opening / 2 for n in robot.gripper.joint_names}
        frames = urdf_frames(text, positions)
        expected = {robot.ee_frame: _mj_pose(d.site(TCP_SITE).xpos, d.site(TCP_SITE).xmat),
                    FT_FRAME: _mj_pose(d.site(FT_SITE).xpos, d.site(FT_SITE).xmat)}
        for side in ("left", "right"):
            site = d.site(f"{side}_pad_site")
            expected[f"{side}_finger_pad"] = _mj_pose(site.xpos, site.xmat)
        for name in calib.cameras:
            cam = d.cam(name)
            # MuJoCo's camera looks down -z with y up; the optical frame looks down +z with y down
            rot = np.empty(9)
            q_cam = np.empty(4)
            mujoco.mju_mat2Quat(q_cam, cam.xmat)
            back = np.empty(4)
            mujoco.mju_negQuat(back, OPTICAL_TO_MUJOCO_CAM)
            q_opt = quat_mul(q_cam, back)
            mujoco.mju_quat2Mat(rot, q_opt)
            expected[f"{name}_color_optical_frame"] = _mj_pose(cam.xpos, rot)
        for frame, want in expected.items():
            got = frames[frame]
            assert np.allclose(got[:3, 3], want[:3, 3], atol=1e-6), (robot_file, frame)
            assert np.allclose(got[:3, :3], want[:3, :3], atol=1e-6), (robot_file, frame)


def test_rpy_round_trips_the_calibration_quaternions():
    for cam in load_calibration().cameras.values():
        r = _rpy(*rpy_from_quat_xyzw(cam.rotation_xyzw))
        want = np.empty(9)
        mujoco.mju_quat2Mat(want, xyzw_to_wxyz(cam.rotation_xyzw) / np.linalg.norm(cam.rotation_xyzw))
        assert np.allclose(r, want.reshape(3, 3), atol=1e-9)


def test_cli_prints_a_urdf_with_every_frame_the_nodes_stamp(tmp_path):
    r = subprocess.run([sys.executable, "-m", "robot_learning.cli", "urdf", "--robot", "hardware/robots/fr3.yaml"],
                       capture_output=True, text=True, cwd=project_root(), timeout=120)
    assert r.returncode == 0, r.stderr
    links = {x.get("name") for x in ElementTree.fromstring(r.stdout).findall("link")}
    robot = load_robot(project_root() / "hardware" / "robots" / "fr3.yaml")
    assert {robot.base_frame, robot.ee_frame, "left_finger_pad", "right_finger_pad", "front_color_optical_frame",
            "wrist_color_optical_frame"} <= links

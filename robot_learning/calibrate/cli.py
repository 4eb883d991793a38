"""``robot-learning calibrate intrinsics``: a camera's intrinsics from views of the ChArUco board
(``calibration/charuco.yaml``), from an image folder, a live ROS image topic, or the sim's own
camera (a self-check: the truth is known there). The result is camera_calibration's YAML (the
``uvc`` driver's ``camera_info`` parameter and camera_info_manager read it) and a picture of
where the board was seen.

``robot-learning calibrate hand-eye --sim CAMERA``: where a camera sits (on the hand, or fixed
in the cell), the arm moved through a pose set by its controller; written as the camera's entry
of ``calibration/workcell.yaml``. In the sim for now: the same solver takes a real arm's poses
once the arm node drives the pose set (``calibrate.hand_eye``).

``robot-learning calibrate latency --dataset D``: the arm's command-to-motion latency from a
recorded teleoperated episode (commanded TCP twists against the reported TCP poses);
``--sim`` measures the sim arm's, with ``--inject`` seconds of extra latency as a self-check.

``robot-learning calibrate camera-latency --topic T``: a camera's capture-to-stamp latency, the
camera looking at ``robot-learning calibrate clock-display`` on a screen of the machine that
stamps its frames (``calibrate.clock_display``); ``--sim CAMERA`` the sim's, a display in front
of its camera, with ``--inject`` seconds of stamp latency as a self-check. Both merge into
``calibration/latency.yaml``, which the camera node reads to stamp frames at their capture."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from robot_learning.calibrate.board import Board, detect
from robot_learning.calibrate.intrinsics import (
    CalibrationError,
    calibrate_intrinsics,
    coverage_image,
    write_camera_info,
)


def add_parser(sub) -> None:
    ca = sub.add_parser("calibrate", help="calibrate cameras (intrinsics) from views of the ChArUco board")
    kinds = ca.add_subparsers(dest="kind", required=True)
    it = kinds.add_parser("intrinsics", help="a camera's intrinsics and distortion",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = it.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of frames (png/jpg) showing the board")
    src.add_argument("--topic", help="live sensor_msgs/Image topic, e.g. /front/color/image_raw")
    src.add_argument("--sim", metavar="CAMERA", help="the sim workcell's camera (front, wrist): a self-check")
    it.add_argument("--camera", default="", help="camera name for the file (default: from the source)")
    it.add_argument("--views", type=int, default=20, help="topic and sim: frames with the board to collect")
    it.add_argument("--interval", type=float, default=1.0, help="topic: seconds between frames (move the board)")
    it.add_argument("--board", default="calibration/charuco.yaml")
    it.add_argument("--out", default="", help="YAML to write (default: calibration/<camera>_intrinsics.yaml; "
                                              "runs/calibration/ for --sim)")
    it.add_argument("--seed", type=int, default=0, help="sim: the board's poses")
    he = kinds.add_parser("hand-eye", help="where a camera sits: on the hand (wrist) or fixed (front)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    he.add_argument("--sim", metavar="CAMERA", required=True, help="the sim workcell's camera (front, wrist)")
    he.add_argument("--views", type=int, default=15, help="arm poses where the board is seen")
    he.add_argument("--intrinsics", default="", help="the camera's calibration YAML (default: its nominal one)")
    he.add_argument("--board", default="calibration/charuco.yaml")
    he.add_argument("--out", default="", help="YAML to write (default: runs/calibration/<camera>_hand_eye.yaml)")
    he.add_argument("--seed", type=int, default=0, help="the pose set")
    la = kinds.add_parser("latency", help="the arm's command-to-motion latency",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    lsrc = la.add_mutually_exclusive_group(required=True)
    lsrc.add_argument("--dataset", help="zarr dataset with a teleoperated episode")
    lsrc.add_argument("--sim", action="store_true", help="the sim arm, driven by a varied command")
    la.add_argument("--episode", type=int, default=-1, help="dataset episode (default: the last)")
    la.add_argument("--inject", type=float, default=0.0, help="sim: seconds of action latency added")
    la.add_argument("--out", default="", help="YAML to write (default: calibration/latency.yaml; "
                                              "runs/calibration/ for --sim)")
    cl = kinds.add_parser("camera-latency", help="a camera's capture-to-stamp latency, from a clock shown to it",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    csrc = cl.add_mutually_exclusive_group(required=True)
    csrc.add_argument("--topic", help="live sensor_msgs/Image topic of a camera looking at `calibrate clock-display`")
    csrc.add_argument("--sim", metavar="CAMERA", help="the sim's fixed camera (front), a clock display in front of it")
    cl.add_argument("--inject", type=float, default=0.0, help="sim: seconds the frames are stamped late")
    cl.add_argument("--frames", type=int, default=90, help="frames to read the display in")
    cl.add_argument("--display-period", type=float, default=None,
                    help="topic: seconds between the display's redraws (default: a 60 Hz screen's)")
    cl.add_argument("--camera", default="", help="topic: camera name for the file (default: the topic's first part)")
    cl.add_argument("--out", default="", help="YAML to merge into (default: calibration/latency.yaml; "
                                              "runs/calibration/ for --sim)")
    cd = kinds.add_parser("clock-display", help="show the clock that camera-latency reads, full screen",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cd.add_argument("--seconds", type=float, default=120.0, help="how long to show it")


def _image_files(folder: Path) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise CalibrationError(f"{folder} has no png or jpg images")
    return [cv2.imread(str(p))[:, :, ::-1] for p in files]


def _topic_frames(topic: str, board: Board, views: int, interval: float) -> list[np.ndarray]:
    """Frames from a live topic, one per ``interval`` seconds, until ``views`` show the board."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from tqdm import tqdm

    latest: list = [None]
    rclpy.init()
    node = rclpy.create_node("calibrate_intrinsics")
    node.create_subscription(Image, topic, lambda m: latest.__setitem__(0, m), qos_profile_sensor_data)
    frames: list[np.ndarray] = []
    bar = tqdm(total=views, desc=f"views of the board on {topic}", unit="view")
    try:
        end = time.monotonic() + 10.0
        while latest[0] is None:
            rclpy.spin_once(node, timeout_sec=0.1)
            if time.monotonic() > end:
                raise CalibrationError(f"no image on {topic} within 10 s (is the camera node running?)")
        next_t = time.monotonic()
        while len(frames) < views:
            rclpy.spin_once(node, timeout_sec=0.05)
            if time.monotonic() < next_t:
                continue
            next_t += interval
            frame = _image(latest[0])
            if detect(board, frame) is not None:
                frames.append(frame)
                bar.update()
    finally:
        bar.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return frames


def _image(m) -> np.ndarray:
    ch = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(m.encoding)
    if ch is None:
        raise CalibrationError(f"images in {m.encoding}: calibrate from an rgb8, bgr8 or mono8 stream")
    a = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.step)[:, :m.width * ch]
    a = a.reshape(m.height, m.width, ch) if ch == 3 else a.reshape(m.height, m.width)
    return a[:, :, ::-1] if m.encoding == "bgr8" else a


def run(a: argparse.Namespace) -> int:
    return {"hand-eye": _hand_eye, "latency": _latency, "camera-latency": _camera_latency,
            "clock-display": _clock_display}.get(a.kind, _intrinsics)(a)


def _camera_latency(a: argparse.Namespace) -> int:
    from robot_learning.calibrate.camera_latency import measure_topic, sim_check
    from robot_learning.calibrate.latency import LATENCY_FILE, update_latency_file

    try:
        if a.sim:
            res = sim_check(a.sim, a.inject, a.frames)
            name, source = a.sim, f"the sim's {a.sim} camera, {a.inject * 1000:g} ms injected"
        else:
            period = 1.0 / 60.0 if a.display_period is None else a.display_period
            res = measure_topic(a.topic, a.frames, period)
            name, source = a.camera or a.topic.strip("/").split("/")[0], a.topic
    except (ValueError, CalibrationError, TimeoutError) as e:
        print(f"calibrate camera-latency: {e}")
        return 1
    out = update_latency_file(
        a.out or ("runs/calibration/latency.yaml" if a.sim else LATENCY_FILE),
        {"cameras": {name: {"capture_to_stamp_s": round(res.latency_s, 4), "spread_s": round(res.spread_s, 4),
                            "frames": res.frames}}},
        f"`robot-learning calibrate camera-latency` from {source}")
    print(f"calibrate camera-latency: {name} stamps its frames {res.latency_s * 1000:.1f} ms after capture "
          f"(median lateness {res.median_s * 1000:.1f} ms, 5-95% spread {res.spread_s * 1000:.1f} ms, "
          f"{res.frames} frames read, {res.unread} not); wrote {out}")
    return 0


def _clock_display(a: argparse.Namespace) -> int:
    from robot_learning.calibrate.camera_latency import show_clock

    try:
        show_clock(a.seconds)
    except CalibrationError as e:
        print(f"calibrate clock-display: {e}")
        return 1
    return 0


def _latency(a: argparse.Namespace) -> int:
    from robot_learning.calibrate.latency import LATENCY_FILE, from_episode, sim_probe, update_latency_file

    try:
        if a.sim:
            res, source = sim_probe(a.inject), f"sim arm, {a.inject * 1000:g} ms injected"
        else:
            from robot_learning.data.store import Dataset

            ds = Dataset(a.dataset)
            index = ds.indices[-1] if a.episode < 0 else a.episode
            res, source = from_episode(ds.episode(index)), f"{a.dataset} episode {index}"
    except (ValueError, KeyError) as e:
        print(f"calibrate latency: {e}")
        return 1
    values = {"command_to_motion_s": round(res.latency_s, 4), "correlation": round(res.correlation, 3)}
    out = update_latency_file(a.out or ("runs/calibration/latency.yaml" if a.sim else LATENCY_FILE), values,
                              f"`robot-learning calibrate latency` from {source}")
    print(f"calibrate latency: command to motion {res.latency_s * 1000:.1f} ms (correlation {res.correlation:.2f}, "
          f"{source}); wrote {out}")
    if res.correlation < 0.5:
        print("calibrate latency: the motion hardly follows the commands: record a livelier teleoperated episode")
    return 0


def _hand_eye(a: argparse.Namespace) -> int:
    import yaml

    from robot_learning.calibrate.hand_eye import solve_hand_eye
    from robot_learning.calibrate.sim_views import hand_eye_views
    from robot_learning.config import load_calibration
    from robot_learning.devices.uvc import load_camera_info
    from robot_learning.transforms import quat_to_mat, xyzw_to_wxyz

    try:
        board = Board.load(a.board)
        intr = load_camera_info(a.intrinsics) if a.intrinsics else None
        hands, views, eye_in_hand, intr = hand_eye_views(a.sim, a.views, a.seed, board, intr)
        res = solve_hand_eye(hands, views, eye_in_hand, intr)
    except CalibrationError as e:
        print(f"calibrate hand-eye: {e}")
        return 1
    parent = "hand" if eye_in_hand else "world"
    entry = {"cameras": {a.sim: {"parent": parent, "translation": [round(float(x), 5) for x in res.translation],
                                 "rotation_xyzw": [round(float(x), 5) for x in res.rotation_xyzw]}}}
    out = Path(a.out or f"runs/calibration/{a.sim}_hand_eye.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {a.sim} in the {parent} frame: `robot-learning calibrate hand-eye`, {res.views} views; the "
                   f"board's pose agrees across views to {res.residual_mm:.2f} mm and {res.residual_deg:.3f} deg, "
                   f"corners to {res.reprojection_px:.3f} px\n# copy the entry into calibration/workcell.yaml\n"
                   + yaml.safe_dump(entry, sort_keys=False))
    print(f"calibrate hand-eye: {a.sim} in the {parent} frame: translation {entry['cameras'][a.sim]['translation']}, "
          f"rotation_xyzw {entry['cameras'][a.sim]['rotation_xyzw']}; {res.views} views, residual "
          f"{res.residual_mm:.2f} mm / {res.residual_deg:.3f} deg, reprojection {res.reprojection_px:.3f} px")
    cam = load_calibration().cameras[a.sim]
    r_true = quat_to_mat(xyzw_to_wxyz(cam.rotation_xyzw))
    ang = np.degrees(np.arccos(np.clip((np.trace(r_true.T @ res.rotation) - 1) / 2, -1.0, 1.0)))
    off_mm = np.linalg.norm(res.translation - cam.translation) * 1e3
    print(f"calibrate hand-eye: the sim's true mounting is off by {off_mm:.2f} mm and {ang:.3f} deg")
    print(f"calibrate hand-eye: wrote {out}")
    return 0


def _intrinsics(a: argparse.Namespace) -> int:
    import cv2

    try:
        board = Board.load(a.board)
        if a.sim:
            from robot_learning.calibrate.sim_views import board_in_front_views

            frames = [f for f, _, _ in board_in_front_views(a.sim, a.views, a.seed, board)]
            name = a.camera or a.sim
        elif a.images:
            frames = _image_files(Path(a.images))
            name = a.camera or Path(a.images).name
        else:
            frames = _topic_frames(a.topic, board, a.views, a.interval)
            name = a.camera or a.topic.strip("/").split("/")[0]
        res = calibrate_intrinsics(board, frames)
    except CalibrationError as e:
        print(f"calibrate intrinsics: {e}")
        return 1
    out = Path(a.out or (f"runs/calibration/{name}_intrinsics.yaml" if a.sim else
                         f"calibration/{name}_intrinsics.yaml"))
    write_camera_info(out, res, name)
    cov = out.with_name(out.stem + "_coverage.png")
    cv2.imwrite(str(cov), coverage_image(res)[:, :, ::-1])
    i = res.intrinsics
    print(f"calibrate intrinsics: {name}: fx {i.fx:.2f} fy {i.fy:.2f} cx {i.cx:.2f} cy {i.cy:.2f}, distortion "
          f"{' '.join(f'{c:.4f}' for c in i.coeffs)}; reprojection error {res.rms_px:.3f} px over {res.views} "
          f"of {res.frames} frames")
    if a.sim:
        from robot_learning.config import load_calibration
        from robot_learning.devices.camera import Intrinsics

        cam = load_calibration().cameras[a.sim]
        t = Intrinsics.from_fovy(cam.width, cam.height, cam.fovy_deg)
        err = max(abs(i.fx / t.fx - 1), abs(i.fy / t.fy - 1), abs(i.cx / t.cx - 1), abs(i.cy / t.cy - 1))
        print(f"calibrate intrinsics: the sim's true fx {t.fx:.2f} cx {t.cx:.2f} cy {t.cy:.2f}: off by {err:.2%} "
              "at most")
    print(f"calibrate intrinsics: wrote {out} and {cov}")
    return 0

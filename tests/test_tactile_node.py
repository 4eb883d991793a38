"""tactile_node as a process: a serial taxel board on a real pty pair, and a visuotactile gel
played from a video file through OpenCV, both on the sim pads' topics with their content."""

from __future__ import annotations

import os
import subprocess
import time

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import WrenchStamped
from robot_learning_ros.client import GraphClient
from sensor_msgs.msg import Image
from test_tactile_devices import gel_image

from robot_learning.devices.taxel_serial import encode_frame
from robot_learning.launch import die_with_parent, find_executable

pytestmark = pytest.mark.graph


def grid_of(m: Image) -> np.ndarray:
    return np.frombuffer(bytes(m.data), np.float32).reshape(m.height, m.width, 3)


def start(log, *params: str) -> subprocess.Popen:
    return subprocess.Popen([find_executable("robot_learning_ros", "tactile_node"), "--ros-args", *params],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent())


def stop(proc: subprocess.Popen, log) -> None:
    proc.send_signal(2)
    assert proc.wait(30) == 0, log.read_text()[-2000:]


def diag_values(client: GraphClient, sensor: str) -> dict[str, str]:
    for m in reversed(client.msgs["/diagnostics"]):
        for st in m.status:
            if sensor in st.name:
                return {kv.key: kv.value for kv in st.values}
    return {}


def test_serial_board_on_a_pty_reaches_the_pad_topics(tmp_path):
    master, slave = os.openpty()
    client = GraphClient("tactile_serial_probe")
    client.subscribe("/tactile/right_finger/taxels", Image, sensor=True)
    client.subscribe("/tactile/right_finger/wrench", WrenchStamped, sensor=True)
    client.subscribe("/diagnostics", DiagnosticArray)
    proc = start(tmp_path / "node.log", "-p", "sensor:=right_finger", "-p", f"port:={os.ttyname(slave)}")
    try:
        rng = np.random.default_rng(1)
        grids = {}
        deadline = time.monotonic() + 60
        seq = 0
        while len(client.msgs["/tactile/right_finger/taxels"]) < 20 and time.monotonic() < deadline:
            g = rng.uniform(-1, 1, (4, 4, 3)).round(3)
            grids[seq] = g
            frame = bytearray(encode_frame(g, seq))
            if seq % 5 == 4:
                frame[-1] ^= 0xFF   # every fifth frame arrives damaged
            os.write(master, bytes(frame))
            seq += 1
            time.sleep(0.02)
        msgs = list(client.msgs["/tactile/right_finger/taxels"])
        assert len(msgs) >= 20, (tmp_path / "node.log").read_text()[-2000:]
        good = [g for s, g in sorted(grids.items()) if s % 5 != 4]
        for m in msgs:  # each published grid is one the board sent intact, in the pad's frame
            got = grid_of(m)
            assert m.encoding == "32FC3" and m.header.frame_id == "right_finger_pad"
            assert min(np.abs(got - g).max() for g in good) < 5e-4
        w = client.latest("/tactile/right_finger/wrench")
        assert w.header.frame_id == "right_finger_pad"
        client.wait_for("/diagnostics", 2, timeout=10)
        time.sleep(1.2)
        d = diag_values(client, "right_finger")
        assert int(d["bad_frames"]) >= 3 and int(d["lost_frames"]) >= 3, d
    finally:
        stop(proc, tmp_path / "node.log")
        client.close()
        os.close(master)
        os.close(slave)


def test_visuotactile_gel_from_a_video_file_gives_the_shear_it_shows(tmp_path):
    """The first frames show the untouched gel (the reference); then the markers shift 2 px to
    the right and 1 px down: every taxel's shear says so, in newtons (zero on untouched frames),
    and contact stays off."""
    video = tmp_path / "gel.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 15.0, (320, 240))
    assert w.isOpened()
    for k in range(60):
        img = gel_image() if k < 10 else gel_image(lambda x, y: (2.0, 1.0))
        w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    w.release()
    client = GraphClient("tactile_gel_probe")
    client.subscribe("/tactile/left_finger/taxels", Image, sensor=True, depth=200)
    client.subscribe("/tactile/left_finger/contact", Image, sensor=True)
    proc = start(tmp_path / "gel.log", "-p", "driver:=visuotactile", "-p", f"video_device:={video}",
                 "-p", "config:=hardware/tactile/gelsight_mini.yaml")
    try:
        # 80 grids: the file (60 frames at 15 fps) plays more than once; a subscriber that matched
        # late on a busy host may miss the first untouched frames, so each grid is classified
        msgs = client.wait_for("/tactile/left_finger/taxels", 80, timeout=90)
        shears = np.array([grid_of(m)[:, :, :2] for m in msgs[:80]])
        k_shear = 0.05  # newtons per pixel, hardware/tactile/gelsight_mini.yaml
        still = np.all(np.abs(shears) < 0.01, axis=(1, 2, 3))
        moved = np.all(np.abs(shears - np.array([2.0, 1.0]) * k_shear) < 0.015, axis=(1, 2, 3))
        assert still.any() and moved.any(), shears.reshape(len(shears), -1)[:, :2]
        assert np.all(still | moved), shears[~(still | moved)].reshape(-1, 2)[:10]  # nothing in between
        assert client.latest("/tactile/left_finger/contact").encoding == "mono8"
    finally:
        stop(proc, tmp_path / "gel.log")
        client.close()

"""The sim node as a process: clean exit however many stop signals arrive, and cameras on a
machine without a display."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robot_learning.config import load_calibration
from robot_learning.launch import find_executable

VENV = Path(sys.executable).parent.parent


def start_sim(log: Path, *params: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [find_executable("robot_learning_ros", "sim_node"), "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def reap(proc: subprocess.Popen) -> None:
    """Kill the node if it is still running (a test that failed before stopping it)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_for_log(proc: subprocess.Popen, log: Path, text: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"sim node exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, f"no '{text}' in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


@pytest.mark.graph
@pytest.mark.parametrize("first, second, gap", [
    (signal.SIGINT, signal.SIGINT, 0.01),   # a terminal's Ctrl-C, then the launcher's own SIGINT
    (signal.SIGINT, signal.SIGINT, 0.3),    # ... arriving while the camera threads are being joined
    (signal.SIGTERM, signal.SIGTERM, 0.05),
], ids=["sigint-sigint-10ms", "sigint-sigint-300ms", "sigterm-sigterm-50ms"])
def test_a_second_stop_signal_does_not_abort_the_shutdown(tmp_path, first, second, gap):
    """A second signal landed in the camera threads' clean-up: the node then left with render
    threads inside OpenGL and died of SIGABRT/SIGSEGV (exit -6, -11) or of the signal (-2)."""
    log = tmp_path / "sim.log"
    proc = start_sim(log, "cameras:=front,wrist")
    try:
        wait_for_log(proc, log, "workcell 'pick_place' up")
        time.sleep(1.5)  # frames in flight on both render threads
        proc.send_signal(first)
        time.sleep(gap)
        proc.send_signal(second)
        rc = proc.wait(60)
    finally:
        reap(proc)
    out = log.read_text(errors="replace")
    assert rc == 0, f"exit {rc}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.graph
def test_cameras_render_without_a_display(tmp_path):
    """No DISPLAY and no MUJOCO_GL: MuJoCo's default, GLFW, cannot start; the node used to print two
    GLFW warnings and hang, publishing nothing. It now renders with EGL (or OSMesa) by itself,
    or, where neither works, stops at once saying what to set."""
    from robot_learning_ros.client import GraphClient
    from sensor_msgs.msg import Image

    from robot_learning.headless import HEADLESS_GL, headless_gl_works

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    log = tmp_path / "sim.log"
    client = GraphClient("headless_probe")
    client.subscribe("/front/color/image_raw", Image, sensor=True, transform=lambda m: (m.width, m.height))
    proc = start_sim(log, "cameras:=front", "depth:=false", env=env)
    try:
        if any(headless_gl_works(b) for b in HEADLESS_GL):
            frames = client.wait_for("/front/color/image_raw", 3, timeout=120)
            assert frames[-1] == (640, 480)
            assert "rendering with MUJOCO_GL=" in log.read_text()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, log.read_text()[-3000:]
        else:
            assert proc.wait(60) != 0
            assert "set MUJOCO_GL=egl or MUJOCO_GL=osmesa" in log.read_text()
    finally:
        client.close()
        reap(proc)  # a node stuck in GL set-up does not answer SIGINT


@pytest.mark.graph
def test_a_smaller_color_profile_streams_the_same_view_smaller_and_at_its_rate(tmp_path):
    """``color_profile:=`` is how the sim's cameras get cheaper on a machine it cannot keep up
    on (its warning names it): the frames come at the profile's size and rate, and the camera
    info says the same view, with the focal length in pixels halved for half the size. A size
    that would be another view is refused in one sentence."""
    from robot_learning_ros.client import GraphClient
    from sensor_msgs.msg import CameraInfo, Image

    client = GraphClient("profile_probe")
    client.subscribe("/front/color/image_raw", Image, sensor=True,
                     transform=lambda m: (m.width, m.height, m.header.stamp.sec + m.header.stamp.nanosec * 1e-9))
    client.subscribe("/front/color/camera_info", CameraInfo, sensor=True, transform=lambda m: list(m.k))
    log = tmp_path / "sim.log"
    proc = start_sim(log, "cameras:=front", "depth:=false", "rgb_camera.color_profile:=320x240x15")
    try:
        frames = client.wait_for("/front/color/image_raw", 8, timeout=120)
        k = client.wait_for("/front/color/camera_info", 1, timeout=30)[-1]
        assert {f[:2] for f in frames} == {(320, 240)}
        period = float(np.median(np.diff([f[2] for f in frames])))
        assert period == pytest.approx(1 / 15, abs=0.004), period   # sim time, whatever the machine's load
        cal = load_calibration().cameras["front"]
        assert k[0] == pytest.approx(0.5 * 240 / np.tan(np.deg2rad(cal.fovy_deg) / 2))   # the same field of view
        assert k[0] == pytest.approx(0.5 * (0.5 * cal.height / np.tan(np.deg2rad(cal.fovy_deg) / 2)))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        client.close()
        reap(proc)
    bad = start_sim(tmp_path / "bad.log", "cameras:=front", "rgb_camera.color_profile:=424x240x30")
    try:
        assert bad.wait(120) != 0
    finally:
        reap(bad)
    assert "camera size 424x240 is not the 640x480 aspect ratio of 'front'" in (tmp_path / "bad.log").read_text()


@pytest.mark.graph
def test_the_sim_node_runs_the_physics_a_parameter_file_gives(tmp_path):
    """``randomization:=FILE`` (a perturbed "real" sim, or sysid's fit) is how collection and
    deployment through the graph run on other physics; the node used to die on it, declaring
    the parameter twice. It now draws from the file and says what it drew."""
    import json

    from robot_learning_ros.client import GraphClient
    from std_msgs.msg import String

    params = tmp_path / "real.yaml"
    params.write_text("arm:\n  kp_scale: [0.5, 0.5]\nobjects:\n  mass_scale: [2.0, 2.0]\n")
    log = tmp_path / "sim.log"
    client = GraphClient("draw_probe")
    client.subscribe("/sim/randomization", String, latched=True, transform=lambda m: json.loads(m.data))
    proc = start_sim(log, "cameras:=none", f"randomization:={params}")
    try:
        draw = client.wait_for("/sim/randomization", 1, timeout=90)[-1]
        assert draw["kp_scale"] == 0.5 and draw["mass_scale"] == [2.0], draw  # one per movable object
        # the draw is latched while the node is still starting; a stop then is another test's matter
        wait_for_log(proc, log, "workcell 'pick_place' up")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        client.close()
        reap(proc)


class _Exec(Exception):
    """Stands for os.execv, which would replace the test process."""


@pytest.fixture
def no_display(monkeypatch):
    """This process as on a headless machine where MuJoCo took GLFW."""
    import mujoco

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(mujoco, "GLContext", type("GLContext", (), {"__module__": "mujoco.glfw"}))

    def execv(path, argv):
        raise _Exec(path, argv)

    monkeypatch.setattr(os, "execv", execv)


def test_headless_picks_egl_then_osmesa_and_reexecutes(no_display, monkeypatch):
    from robot_learning import headless as runtime

    monkeypatch.setattr(runtime, "headless_gl_works", lambda backend: backend == "osmesa")
    with pytest.raises(_Exec) as e:
        runtime.use_headless_gl(log=lambda msg: None)
    assert os.environ["MUJOCO_GL"] == "osmesa"
    assert e.value.args == (sys.executable, [sys.executable, *sys.orig_argv[1:]])


def test_headless_without_a_backend_stops_with_what_to_set(no_display, monkeypatch):
    from robot_learning import headless as runtime

    monkeypatch.setattr(runtime, "headless_gl_works", lambda backend: False)
    with pytest.raises(SystemExit, match="set MUJOCO_GL=egl or MUJOCO_GL=osmesa"):
        runtime.use_headless_gl()


def test_a_display_or_a_headless_backend_is_left_alone(no_display, monkeypatch):
    from robot_learning import headless as runtime

    monkeypatch.setattr(runtime, "headless_gl_works", lambda backend: pytest.fail("probed"))
    monkeypatch.setenv("DISPLAY", ":0")
    runtime.use_headless_gl()
    monkeypatch.delenv("DISPLAY")
    import mujoco
    monkeypatch.setattr(mujoco, "GLContext", type("GLContext", (), {"__module__": "mujoco.egl"}))
    runtime.use_headless_gl()

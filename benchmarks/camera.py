"""``--only camera``: what camera_node costs over polling librealsense bare (issue 12).

One software RealSense (colour and depth, 640x480) fed with sim renders at 30 Hz, in this
process, read two ways in turn: a bare loop on ``pyrealsense2`` (pipeline, wait for frames,
the pixel arrays), and the camera node (``RealSenseCamera`` in ``CaptureLoop``, publishing
colour, depth and both camera_infos over DDS to a subscriber in another process). The CPU
time of this process over each window, per frame delivered, gives the ratio; the feeding
costs the same in both.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy  # isort: skip  # before pyrealsense2 (see robot_learning.devices.realsense)
import numpy as np

_SUBSCRIBER = """
import signal, sys, time
from rclpy.qos import qos_profile_sensor_data
from robot_learning_ros.client import GraphClient
from sensor_msgs.msg import Image
c = GraphClient("bench_camera_sub")
n = [0, 0]
c.node.create_subscription(Image, "/bench_cam/color/image_raw", lambda m: n.__setitem__(0, n[0] + 1),
                           qos_profile_sensor_data)
c.node.create_subscription(Image, "/bench_cam/aligned_depth_to_color/image_raw",
                           lambda m: n.__setitem__(1, n[1] + 1), qos_profile_sensor_data)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("ready", flush=True)
while not stop:
    time.sleep(0.05)
print(n[0], n[1], flush=True)
c.close()
"""


class _Feeder:
    """Injects the renders round and round at ``rate`` Hz on its own thread."""

    def __init__(self, cam, frames, rate: float = 30.0):
        self.cam, self.frames, self.rate = cam, frames, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        period, nxt = 1.0 / self.rate, time.monotonic()
        while not self._stop.is_set():
            rgb, depth = self.frames[self.sent % len(self.frames)]
            self.cam.inject(self.sent, time.time() * 1e3, rgb, depth)
            self.sent += 1
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> _Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5.0)


def _bare(cam, frames, seconds: float) -> dict:
    import pyrealsense2 as rs

    cfg = rs.config()
    cfg.enable_device(cam.serial)
    cfg.enable_stream(rs.stream.color, 0, 0, rs.format.rgb8, 30)
    cfg.enable_stream(rs.stream.depth, 0, 0, rs.format.z16, 30)
    pipe = rs.pipeline(cam.ctx)
    pipe.start(cfg)
    got, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            ok, fs = pipe.try_wait_for_frames(250)
            if ok:
                c, d = fs.get_color_frame(), fs.get_depth_frame()
                if c:
                    np.asanyarray(c.get_data()).sum(dtype=np.uint64)  # touch the pixels, as a consumer does
                    got[0] += 1
                if d:
                    np.asanyarray(d.get_data()).max()

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    with _Feeder(cam, frames) as feed:
        time.sleep(2.0)  # warm up
        c0, n0, s0 = time.process_time(), got[0], feed.sent
        time.sleep(seconds)
        cpu, n, sent = time.process_time() - c0, got[0] - n0, feed.sent - s0
    stop.set()
    t.join(5.0)
    pipe.stop()
    return {"cpu_s": cpu, "frames": n, "sent": sent}


def _node(cam, frames, seconds: float) -> dict:
    from rclpy.parameter import Parameter
    from robot_learning_ros.camera_node import CameraNode
    from robot_learning_ros.runtime import BackgroundSpin

    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER], stdout=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = CameraNode(rs_context=cam.ctx, context=ctx, parameter_overrides=[
        Parameter("serial_no", value=cam.serial), Parameter("camera_name", value="bench_cam"),
        Parameter("rgb_camera.color_profile", value="0x0x30"), Parameter("depth_module.depth_profile", value="0x0x30"),
        Parameter("align_depth.enable", value=True)])
    spin = BackgroundSpin(node, interrupt_main=False)
    try:
        end = time.monotonic() + 20.0
        while node.color.image_pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        with _Feeder(cam, frames) as feed:
            time.sleep(2.0)
            c0, n0, s0 = time.process_time(), node.loop.counter.frames, feed.sent
            time.sleep(seconds)
            cpu, n, sent = time.process_time() - c0, node.loop.counter.frames - n0, feed.sent - s0
    finally:
        node.close()
        spin.close()
        sub.terminate()
        received = sub.communicate(timeout=20)[0].split()
    return {"cpu_s": cpu, "frames": n, "sent": sent, "received": [int(x) for x in received[:2]]}


def section(quick: bool, workdir: Path) -> list[str]:
    from robot_learning.devices.camera import Intrinsics
    from robot_learning.devices.realsense_software import SoftwareRealSense
    from robot_learning.sim.workcell import Workcell

    seconds = 10.0 if quick else 60.0
    cell = Workcell("pick_place")
    try:
        cell.reset(0)
        cal = cell.calib.cameras["wrist"]
        frames = []
        for k in range(30):
            cell.controller.command_twist(np.array([0.05 * np.cos(k / 5), 0.05 * np.sin(k / 5), 0, 0, 0, 0.2]),
                                          cell.time)
            cell.advance(0.1)
            f = cell.render("wrist", 640, 480)
            frames.append((f.rgb, f.depth_mm))
        intr = Intrinsics.from_fovy(640, 480, cal.fovy_deg)
    finally:
        cell.close()
    print(f"bench: camera node vs bare pyrealsense2, {seconds:.0f} s each ...", flush=True)
    out = {}
    for name, fn in (("bare", _bare), ("node", _node)):
        cam = SoftwareRealSense(f"BENCH-{name}", intr, intr)
        cam.plug()
        try:
            out[name] = fn(cam, frames, seconds)
        finally:
            cam.close()
    b, n = out["bare"], out["node"]
    per_b, per_n = b["cpu_s"] / max(b["frames"], 1), n["cpu_s"] / max(n["frames"], 1)
    return ["## Camera node overhead over bare pyrealsense2\n",
            f"A software RealSense (colour rgb8 and depth z16, 640x480) fed with wrist renders at 30 Hz for "
            f"{seconds:.0f} s, read by a bare `pyrealsense2` loop (pipeline, frames, pixels), then by camera_node "
            "(driver, capture loop, colour + aligned depth + camera_infos over DDS to a subscriber in another "
            "process). CPU of the reading process per frame delivered; the feeding is in both.\n",
            "| reader | frames sent | frames read | CPU (s) | CPU per frame (ms) |", "|---|---|---|---|---|",
            f"| bare pyrealsense2 | {b['sent']} | {b['frames']} | {b['cpu_s']:.2f} | {per_b * 1e3:.2f} |",
            f"| camera_node | {n['sent']} | {n['frames']} | {n['cpu_s']:.2f} | {per_n * 1e3:.2f} |\n",
            f"camera_node costs **{per_n / per_b:.2f}x** the bare loop per frame; the subscriber received "
            f"{n['received'][0]} colour and {n['received'][1]} depth images of the {n['frames']} frames "
            "(counted over the whole run, warm-up included).\n"]

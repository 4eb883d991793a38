"""``calibrate camera-latency``: a camera's capture-to-stamp latency, read off the clock display
(``calibrate.clock_display``) in its frames; ``calibrate clock-display`` shows that display on a
screen. The camera node subtracts the result from its driver's stamps, so the recorder and the
policy server line each frame up with the robot state of the instant it shows."""

from __future__ import annotations

import time

from robot_learning.calibrate.clock_display import CaptureLatency, latency_from_frames, pattern_image, read_display
from robot_learning.calibrate.intrinsics import CalibrationError


def measure_topic(topic: str, frames: int, display_period: float, timeout: float = 30.0) -> CaptureLatency:
    """Read the display in ``frames`` frames of ``topic`` (each frame's stamp against the time it
    shows). The frames are decoded as they come, on this thread; the subscription keeps the
    newest, so a slow decoder skips frames rather than falling behind."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from tqdm import tqdm

    from robot_learning.data.convert import BadSample, image_array

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("calibrate_camera_latency", context=ctx)
    latest: list = [None]
    node.create_subscription(Image, topic, lambda m: latest.__setitem__(0, m), qos_profile_sensor_data)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stamps: list[float] = []
    shown: list[int | None] = []
    bar = tqdm(total=frames, desc=f"reading the clock display on {topic}", unit="frame")
    try:
        end = time.monotonic() + timeout
        while len(stamps) < frames:
            ex.spin_once(timeout_sec=0.05)
            m, latest[0] = latest[0], None
            if m is None:
                if time.monotonic() > end:
                    raise TimeoutError(f"{len(stamps)} frames on {topic} in {timeout:.0f} s, {frames} wanted "
                                       "(is the camera node running?)")
                continue
            try:
                img = image_array(m)
            except BadSample as e:
                raise CalibrationError(f"{topic}: {e}") from None
            stamps.append(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)
            shown.append(read_display(img))
            bar.update()
            end = time.monotonic() + timeout
    finally:
        bar.close()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return latency_from_frames(stamps, shown, display_period)


def sim_check(camera: str, inject: float, frames: int) -> CaptureLatency:
    """The sim graph with a clock display in front of ``camera``, its frames stamped ``inject``
    seconds late: what ``measure_topic`` recovers (the display is redrawn at each capture)."""
    import tempfile
    from pathlib import Path

    from robot_learning.graph import SimGraph

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sim.log"
        with SimGraph(log, "sim.launch.yaml", cameras=camera, depth="false", clock_display=camera,
                      camera_latency=inject):
            try:
                return measure_topic(f"/{camera}/color/image_raw", frames, 0.0, timeout=90.0)
            except TimeoutError as e:
                raise TimeoutError(f"{e}; the sim's log ends:\n{log.read_text()[-1500:]}") from None


def show_clock(seconds: float) -> None:
    """The display, full screen, redrawn as fast as the screen takes it with this machine's
    clock (``time.time()``: the clock camera drivers stamp with), for ``seconds``."""
    import matplotlib.pyplot as plt

    if plt.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        raise CalibrationError("no screen to show the clock on (matplotlib has no interactive backend here): run it "
                               "on the robot PC's display, e.g. with DISPLAY set")
    fig = plt.figure("robot-learning clock display", facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    im = ax.imshow(pattern_image(time.time()), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    try:
        fig.canvas.manager.full_screen_toggle()
    except AttributeError:
        pass
    end = time.monotonic() + seconds
    n, t0 = 0, time.monotonic()
    while time.monotonic() < end and plt.fignum_exists(fig.number):
        im.set_data(pattern_image(time.time()))
        fig.canvas.draw_idle()
        fig.canvas.flush_events()
        n += 1
    rate = n / max(time.monotonic() - t0, 1e-9)
    print(f"calibrate clock-display: redrawn {rate:.0f} times a second: pass --display-period "
          f"{1 / max(rate, 1e-9):.4f} to camera-latency if the screen keeps up with that (else its own period)")
    plt.close(fig)

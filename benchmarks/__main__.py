"""``make bench`` (``python -m benchmarks [--only sim,ingest,policy,image,arm,learner,rl,residual,soak] [--quick]``):
the sim node against raw MuJoCo, the gym env's speed, command-to-state latency through the graph, the
recorder's ingest, policy latency and command jitter, image training and inference by precision,
the SAC learner's update rate, a residual's per-tick cost and batched envs for RL on a diffusion
policy, and on request an hour's soak of the deployed graph (``--only soak``, ``SOAK_MINUTES``)
and the side-by-side against LeRobot (``--only peer``, its own environment: scripts/lerobot_peer_env.sh).
``ARM_CLOCKS=wall`` runs only the wall-clock row of the arm section (the goal's).
Results go to docs/benchmarks.md with the machine and date. Benchmarks live outside the
library: nothing in robot_learning imports them, and they use only its public modules."""

from __future__ import annotations

import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import mujoco
import numpy as np

from robot_learning.graph import SimGraph
from robot_learning.sim.env import WorkcellEnv
from robot_learning.sim.render import AsyncCameras, camera_specs, depth_to_mm
from robot_learning.sim.workcell import Workcell

BENCH_CAMERAS = ("front", "wrist")  # as the sim node publishes by default


def raw_mujoco_rtf(sim_seconds: float) -> float:
    """Bare MuJoCo on one thread: mj_step, and at 30 Hz both cameras rendered as calibrated
    (640x480) with colour and depth read from one pass each (flipped upright, depth in mm:
    what the node publishes)."""
    cell = Workcell("pick_place")
    cell.reset(0)
    m, d = cell.model, cell.data
    specs = camera_specs(cell.calib, list(BENCH_CAMERAS))
    w, h = max(s.width for s in specs), max(s.height for s in specs)
    gl = mujoco.GLContext(w, h)
    gl.make_current()
    ctx = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)
    mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, ctx)
    scene, opt, cam = mujoco.MjvScene(m, maxgeom=10_000), mujoco.MjvOption(), mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
    views = [(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, s.name), mujoco.MjrRect(0, 0, s.width, s.height),
              np.empty((s.height, s.width, 3), np.uint8), np.empty((s.height, s.width), np.float32), s.depth_range)
             for s in specs]
    steps_per_frame = round(1 / 30 / m.opt.timestep)
    n_frames = int(sim_seconds * 30)
    t0 = time.perf_counter()
    for _ in range(n_frames):
        mujoco.mj_step(m, d, nstep=steps_per_frame)
        for cid, rect, rgb, depth, depth_range in views:
            cam.fixedcamid = cid
            mujoco.mjv_updateScene(m, d, opt, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
            mujoco.mjr_render(rect, scene, ctx)
            mujoco.mjr_readPixels(rgb, depth, rect, ctx)
            rgb[::-1].copy()
            depth_to_mm(depth[::-1], m, depth_range)
    wall = time.perf_counter() - t0
    ctx.free()
    gl.free()
    cell.close()
    return n_frames * steps_per_frame * m.opt.timestep / wall


def pipeline_rtf(sim_seconds: float) -> float:
    """The node's own pipeline without ROS: the controller and safety filter every control
    period, physics, and both cameras through ``AsyncCameras`` (a render thread per camera),
    each frame copied once, as into a message. Between raw MuJoCo and the node, it shows what
    the pipeline's layout gains and what ROS itself costs."""
    cell = Workcell("pick_place")
    cell.reset(0)
    specs = camera_specs(cell.calib, list(BENCH_CAMERAS))
    sink = {s.name: (np.empty((s.height, s.width, 3), np.uint8), np.empty((s.height, s.width), np.uint16))
            for s in specs}

    def on_frame(name: str, stamp: float, rgb: np.ndarray, depth_mm: np.ndarray | None) -> None:
        sink[name][0][...] = rgb
        sink[name][1][...] = depth_mm

    cams = AsyncCameras(cell.model, specs, on_frame)
    periods_per_frame = round(1 / 30 / cell.control_dt)
    n_frames = int(sim_seconds * 30)
    t0, s0 = time.perf_counter(), cell.time
    for _ in range(n_frames):
        for _ in range(periods_per_frame):
            cell.step_control()
        cams.capture(cell.data, cell.time)
    rtf = (cell.time - s0) / (time.perf_counter() - t0)
    cams.close()
    cell.close()
    return rtf


class NodeRate:
    """The sim node's simulated seconds per wall second, from its own /sim/diagnostics (1 Hz),
    so that measuring adds no subscriber at the control rate."""

    def __init__(self, client):
        from diagnostic_msgs.msg import DiagnosticArray

        self.reports: list[tuple[float, float]] = []  # (monotonic wall, sim) as the node saw them
        client.node.create_subscription(DiagnosticArray, "/sim/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg) -> None:
        v = {kv.key: kv.value for st in msg.status for kv in st.values}
        if "sim_time" in v:
            self.reports.append((float(v["wall_time"]), float(v["sim_time"])))

    def _wait(self, cond, timeout: float, what: str) -> tuple[float, float]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hit = [r for r in self.reports if cond(r)]
            if hit:
                return hit[-1]
            time.sleep(0.05)
        raise RuntimeError(f"no /sim/diagnostics {what} within {timeout:.0f} s: see the sim node's log")

    def measure(self, wall_seconds: float) -> float:
        """Rate over the next ``wall_seconds`` from now (reports are stamped with CLOCK_MONOTONIC,
        which all processes share, so a report from before a pause is never used)."""
        since = time.monotonic()
        a = self._wait(lambda r: r[0] >= since, 60.0, "after start or resume")
        b = self._wait(lambda r: r[0] >= a[0] + wall_seconds, wall_seconds + 30.0, "to end the window")
        return (b[1] - a[1]) / (b[0] - a[0])


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def env_sps(cameras: tuple[str, ...], steps: int) -> float:
    env = WorkcellEnv("pick_place", cameras=cameras)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(steps):
        a = np.r_[rng.uniform(-0.05, 0.05, 3), np.zeros(3), 0.0]
        env.step(a)
        if i % 100 == 99:
            env.reset(seed=i)
    sps = steps / (time.perf_counter() - t0)
    env.close()
    return sps


def command_latency(client, trials: int) -> np.ndarray:
    """Wall time from a twist published to the first /joint_states that moved."""
    from geometry_msgs.msg import TwistStamped
    from sensor_msgs.msg import JointState

    state = {"q": None, "t": 0.0}
    moved = threading.Event()

    def on_js(msg):
        q = np.array(msg.position[:7])
        if state["q"] is not None and np.max(np.abs(q - state["q"])) > 1e-5:
            state["t"] = time.perf_counter()
            moved.set()

    client.node.create_subscription(JointState, "/joint_states", on_js, 10)
    pub = client.node.create_publisher(TwistStamped, "/arm/command/twist", 10)
    time.sleep(1.0)
    out = []
    sign = 1.0
    for _ in range(trials):
        time.sleep(0.8)  # past the watchdog: the arm is at rest
        moved.clear()
        # Baseline: the most recent state at rest.
        state["q"] = None
        ev = threading.Event()

        def grab(msg, ev=ev):
            if not ev.is_set():
                state["q"] = np.array(msg.position[:7])
                ev.set()

        sub = client.node.create_subscription(JointState, "/joint_states", grab, 10)
        ev.wait(2.0)
        client.node.destroy_subscription(sub)
        m = TwistStamped()
        m.header.frame_id = "panda_link0"
        m.twist.linear.x = 0.05 * sign
        sign = -sign
        t0 = time.perf_counter()
        pub.publish(m)
        if moved.wait(2.0):
            out.append(state["t"] - t0)
    return np.array(out)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, MuJoCo {mujoco.__version__}"


SECTIONS = ("sim", "ingest", "camera", "policy", "image", "peer", "arm", "learner", "rl", "residual", "soak")
ON_REQUEST = ("soak", "peer")  # only with --only: an hour long (SOAK_MINUTES), LeRobot's own 8 GB environment


def _previous_sections(path: Path) -> dict[str, str]:
    """Sections of an earlier run (between ``<!-- section: name -->`` markers), kept when only some are re-run."""
    if not path.exists():
        return {}
    parts = re.split(r"<!-- section: (\w+) -->\n", path.read_text())
    # each kept as written (one newline at its end): the sections are joined with a blank line
    return {parts[i]: parts[i + 1].rstrip("\n") + "\n" for i in range(1, len(parts) - 1, 2)}


def run_bench(out: str, quick: bool = False, only: list[str] | None = None) -> int:
    from robot_learning_ros.client import GraphClient

    todo = only or [s for s in SECTIONS if s not in ON_REQUEST]
    sections = _previous_sections(Path(out))
    tmp = Path(tempfile.mkdtemp())
    stamp = f"{datetime.now():%Y-%m-%d %H:%M}, {machine()}{', --quick' if quick else ''}"
    if "sim" in todo:
        sections["sim"] = f"_Measured {stamp}._\n\n" + "\n".join(sim_section(quick, tmp, GraphClient)) + "\n"
    if "ingest" in todo:
        sections["ingest"] = f"_Measured {stamp}._\n\n" + "\n".join(ingest_section(quick, tmp, GraphClient)) + "\n"
    if "camera" in todo:
        from benchmarks.camera import section as camera_section

        sections["camera"] = f"_Measured {stamp}._\n\n" + "\n".join(camera_section(quick, tmp)) + "\n"
    from benchmarks.policy import arm_section, section

    for name, fn in (("policy", section), ("arm", arm_section)):
        if name in todo:
            client = GraphClient(f"bench_{name}")
            try:
                sections[name] = f"_Measured {stamp}._\n\n" + "\n".join(fn(quick, tmp, client)) + "\n"
            finally:
                client.close()
    if "image" in todo:
        from benchmarks.image_training import section as image_section

        sections["image"] = f"_Measured {stamp}._\n\n" + "\n".join(image_section(quick, tmp)) + "\n"
    if "peer" in todo:
        from benchmarks.peer import section as peer_section

        sections["peer"] = f"_Measured {stamp}._\n\n" + "\n".join(peer_section(quick)) + "\n"
    if "rl" in todo:
        from benchmarks.rl_actor import section as rl_section

        client = GraphClient("bench_rl")
        try:
            sections["rl"] = f"_Measured {stamp}._\n\n" + "\n".join(rl_section(quick, tmp, client)) + "\n"
        finally:
            client.close()
    if "learner" in todo:
        from benchmarks.learner import section as learner_section

        sections["learner"] = f"_Measured {stamp}._\n\n" + "\n".join(learner_section(quick)) + "\n"
    if "residual" in todo:
        from benchmarks.residual import section as residual_section

        sections["residual"] = f"_Measured {stamp}._\n\n" + "\n".join(residual_section(quick, tmp)) + "\n"
    if "soak" in todo:
        from benchmarks.soak import section as soak_section

        client = GraphClient("bench_soak")
        try:
            minutes = 2.0 if quick else float(os.environ.get("SOAK_MINUTES", "60"))
            sections["soak"] = f"_Measured {stamp}._\n\n" + "\n".join(soak_section(minutes, tmp, client)) + "\n"
        finally:
            client.close()
    text = [f"# Benchmarks\n\nWritten by `make bench` (`make bench BENCH_ARGS=\"--only {','.join(SECTIONS)}\"`, "
            "or `python -m benchmarks --help`); "
            f"each section says when and where it was measured.\n"]
    for name in SECTIONS:
        if name in sections:
            text.append(f"<!-- section: {name} -->\n{sections[name]}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(text))
    print("\n".join(text))
    return 0


def sim_section(quick: bool, tmp: Path, GraphClient) -> list[str]:
    secs = 3.0 if quick else 5.0
    rounds = 2 if quick else 8
    # One sim node stays up; each round pauses it (SIGSTOP) while raw MuJoCo and the pipeline
    # run alone, then measures it over the next window. Adjacent windows share the machine's
    # state: a shared machine's speed drifts by 10-20% over minutes, more than the difference
    # being measured, and a node started afresh per pair added its start-up to the drift.
    raws, pipes, nodes = [], [], []
    with SimGraph(tmp / "sim_fast.log", cameras=",".join(BENCH_CAMERAS), real_time_factor=0.0) as graph:
        client = GraphClient("bench_rtf")
        try:
            rate = NodeRate(client)
            rate.measure(1.0)  # running, past start-up
            node_pids = _children(graph.proc.pid)
            for i in range(rounds):
                print(f"bench: raw MuJoCo, the pipeline without ROS, the sim node ({i + 1}/{rounds}) ...", flush=True)
                for pid in node_pids:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    raws.append(raw_mujoco_rtf(secs))
                    pipes.append(pipeline_rtf(secs))
                finally:
                    for pid in node_pids:
                        os.kill(pid, signal.SIGCONT)
                nodes.append(rate.measure(secs))
        finally:
            client.close()
    raws_a, pipes_a, nodes_a = np.array(raws), np.array(pipes), np.array(nodes)
    over = raws_a / nodes_a - 1.0
    ros = pipes_a / nodes_a - 1.0
    print("bench: gym env ...", flush=True)
    sps_plain = env_sps((), 300 if quick else 2000)
    sps_cams = env_sps(("front", "wrist"), 100 if quick else 500)
    print("bench: command-to-joint-state latency ...", flush=True)
    with SimGraph(tmp / "sim_rt.log", cameras="front,wrist", real_time_factor=1.0):
        client = GraphClient("bench_latency")
        lat = command_latency(client, 10 if quick else 30) * 1000
        client.close()

    def spread(x: np.ndarray) -> str:
        return f"{np.percentile(x, 25):.0%} to {np.percentile(x, 75):.0%}"

    return [
        "## Sim node real-time factor (both cameras, RGB + depth, 640x480 at 30 Hz)\n",
        "| what | simulated s per wall s |", "|---|---|",
        f"| raw MuJoCo on one thread: mj_step + one colour-and-depth pass per camera | {np.median(raws_a):.2f} |",
        f"| the node's pipeline without ROS: controller + safety per period, a render thread per camera "
        f"| {np.median(pipes_a):.2f} |",
        f"| sim node at full speed (controller, safety, tactile, all topics published) | {np.median(nodes_a):.2f} |",
        f"\nMedians of {rounds} rounds of {secs:.0f} s windows. One sim node stays up and is paused while "
        "raw MuJoCo and the pipeline run, so each round's three windows are adjacent; the node's rate is "
        "its own /sim/diagnostics, so measuring adds no subscriber.\n",
        f"- **Overhead of the node over raw MuJoCo: {np.median(over):.0%}** (median of the rounds' ratios; "
        f"middle half {spread(over)}; goal: under 20%).",
        f"- ROS itself, the node against the same pipeline without ROS (publishing ~2000 messages per "
        f"simulated second, the executor, tactile and object poses): {np.median(ros):.0%} "
        f"(middle half {spread(ros)}).",
        "- The node renders each camera on its own thread and GL context, raw MuJoCo draws them in "
        "turn on one; the pipeline row shows what that layout gains on this machine.\n",
        "## Gymnasium env (pick_place, 10 Hz control, 25 physics steps per env step)\n",
        "| observation | env steps/s |", "|---|---|",
        f"| state only | {sps_plain:.0f} |",
        f"| + front and wrist RGB 96x96 | {sps_cams:.0f} |",
        "\n## Command to state latency (real time, both cameras on)\n",
        "Wall time from a TwistStamped published by a client process to the first /joint_states "
        "message in which the joints moved.\n",
        "| trials | p50 (ms) | p90 (ms) | max (ms) |", "|---|---|---|---|",
        f"| {lat.size} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 90):.1f} | {lat.max():.1f} |"
        if lat.size else "| 0 | - | - | - |",
    ]


def ingest_section(quick: bool, tmp: Path, GraphClient) -> list[str]:
    from benchmarks.ingest import offline_write, open_and_sample, recorder_ingest

    ingest_s = 20.0 if quick else 300.0
    print(f"bench: recorder ingest, {ingest_s:.0f} s of 2 RGB + 1 depth 640x480@30 Hz, tactile 60 Hz, "
          "joints 500 Hz ...", flush=True)
    client = GraphClient("bench_ingest")
    ing = recorder_ingest(ingest_s, tmp, client)
    print(f"bench: the same, {ingest_s:.0f} s with one core kept busy by another process ...", flush=True)
    busy = recorder_ingest(ingest_s, tmp, client, busy=True)
    client.close()
    print("bench: offline write speed ...", flush=True)
    write_x = offline_write(10.0 if quick else 60.0, tmp)
    print("bench: open and sample ...", flush=True)
    samp = open_and_sample(ing["store"])
    return [
        "## Recorder ingest (recorder node, real DDS, separate publisher process)\n",
        f"Two RGB cameras and one depth camera at 640x480 and 30 Hz (workcell renders), two 4x4 tactile "
        f"grids at 60 Hz, joint states at 500 Hz, recorded for {ing['seconds']:.0f} s.\n",
        "| stream | published | recorded | dropped | published, a core busy | recorded | dropped (goal 0) |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {ing['sent'][k]} | {ing['counts'].get(k, 0)} | {v} | {busy['sent'][k]} | "
          f"{busy['counts'].get(k, 0)} | **{busy['dropped'][k]}** |" for k, v in sorted(ing["dropped"].items())],
        "\n*A core busy*: another process spinning at normal priority the whole time (the publisher's own "
        "counts say what it managed to send).\n",
        f"Recorder CPU: **{ing['cpu']:.0%}** of one core. On disk: **{ing['bytes_per_s'] / 1e6:.1f} MB/s** "
        f"(RGB lz4, depth and the rest zstd, all lossless). Offline write speed of the same mix: "
        f"**{write_x:.1f}x** real time.\n",
        "## Opening and sampling a dataset\n",
        f"The ingest dataset ({samp['steps']} control steps, {ing['counts']['front_color']} frames "
        f"per camera): open and load the step table in {samp['open_s'] * 1000:.0f} ms; a random batch of "
        f"{samp['batch']} (low-dim observation and three 640x480 frames each) in "
        f"{samp['batch_p50_s'] * 1000:.0f} ms p50, {samp['batch_p90_s'] * 1000:.0f} ms p90.",
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="shorter runs (for a smoke check)")
    ap.add_argument("--only", default="", help="comma-separated sections to re-run: " + ", ".join(SECTIONS))
    a = ap.parse_args(argv)
    return run_bench(a.out, quick=a.quick, only=[x for x in a.only.split(",") if x] or None)


if __name__ == "__main__":
    sys.exit(main())

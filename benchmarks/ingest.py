"""Recorder benchmarks: live ingest of a robot's sensor load through DDS, offline write speed,
and opening a dataset and sampling training batches from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from robot_learning.launch import die_with_parent, find_executable
from robot_learning.sim.footage import render_frames

BENCH_RECIPE = {
    "name": "bench_ingest",
    "streams": {
        "joint_states": {"topic": "/joint_states", "type": "JointState"},
        "front_color": {"topic": "/front/color/image_raw", "type": "Image", "encoding": "rgb8"},
        "wrist_color": {"topic": "/wrist/color/image_raw", "type": "Image", "encoding": "rgb8"},
        "front_depth": {"topic": "/front/aligned_depth_to_color/image_raw", "type": "Image", "encoding": "16UC1"},
        "tactile_left": {"topic": "/tactile/left_finger/taxels", "type": "Image", "encoding": "32FC3"},
        "tactile_right": {"topic": "/tactile/right_finger/taxels", "type": "Image", "encoding": "32FC3"},
    },
    "steps": {"rate": 10.0, "observations": ["joint_states.position", "tactile_left.data"],
              "action": [{"array": "joint_states.velocity", "default": [0.0] * 9}]},
}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_service(client, name: str, timeout: float = 60.0):
    from std_srvs.srv import Trigger

    cli = client.node.create_client(Trigger, name)
    if not cli.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"{name} did not come up")
    return cli


def _call(cli, req, timeout: float = 900.0):
    fut = cli.call_async(req)
    end = time.monotonic() + timeout
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.01)
    return fut.result()


def busy_core():
    """Another process keeping one core busy at normal priority (a build, a training run): the
    machine a user records on is rarely idle."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent())


def recorder_ingest(seconds: float, workdir: Path, client, busy: bool = False) -> dict:
    """The recorder node recording bench_publisher's load for ``seconds``: drops, CPU, disk.

    The episode starts before the publisher sends anything and stops after it is done, so
    every message sent should be in the episode: dropped = sent - recorded, per topic.
    ``busy``: with one core kept busy by another process the whole time."""
    from std_srvs.srv import SetBool, Trigger

    recipe = workdir / "bench_recipe.yaml"
    recipe.write_text(yaml.safe_dump(BENCH_RECIPE))
    name = "ingest_busy" if busy else "ingest"
    store = workdir / f"{name}.zarr"
    log = (workdir / f"{name}.log").open("wb")
    hog = busy_core() if busy else None
    rec = subprocess.Popen([find_executable("robot_learning_ros", "recorder_node"), "--ros-args",
                            "-p", f"dataset:={store}", "-p", f"recipe:={recipe}"], stdout=log, stderr=subprocess.STDOUT,
                           preexec_fn=die_with_parent())
    cpu: list[tuple[float, float]] = []
    try:
        start = _wait_service(client, "/recorder/start_episode")
        stop = client.node.create_client(SetBool, "/recorder/stop_episode")
        res = _call(start, Trigger.Request())
        if not res or not res.success:
            raise RuntimeError(f"recorder did not start: {res.message if res else 'no answer'}")
        stats = workdir / "sent.json"
        pub = subprocess.Popen([find_executable("robot_learning_ros", "bench_publisher"), "--ros-args",
                                "-p", f"duration:={float(seconds)}", "-p", f"stats_file:={stats}"],
                               stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
        while pub.poll() is None:
            cpu.append((time.time(), _cpu_seconds(rec.pid)))
            time.sleep(0.5)
        time.sleep(2.0)  # let the recorder take what is still queued
        req = SetBool.Request()
        req.data = True
        meta = json.loads(_call(stop, req).message)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        rec.send_signal(2)
        rec.wait(60)
        log.close()
    info = json.loads(stats.read_text())
    sent, (ta, tb) = info["sent"], info["window"]
    inside = [(t, c) for t, c in cpu if ta <= t <= tb]
    cpu_frac = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) if len(inside) > 1 else float("nan")
    from robot_learning.data.store import Dataset

    ep = Dataset(store).episode(meta["index"])
    counts = ep.meta["stream_counts"]
    by_topic = {s["topic"]: n for n, s in BENCH_RECIPE["streams"].items()}
    dropped = {by_topic[topic]: n - counts.get(by_topic[topic], 0) for topic, n in sent.items()}
    size = sum(f.stat().st_size for f in (store / "episodes" / f"{meta['index']:06d}").rglob("*") if f.is_file())
    return {"seconds": tb - ta, "sent": {by_topic[k]: v for k, v in sent.items()}, "counts": counts,
            "dropped": dropped, "cpu": cpu_frac, "bytes_per_s": size / max(tb - ta, 1e-9), "store": store}


def offline_write(seconds: float, workdir: Path) -> float:
    """Write ``seconds`` of the same sensor mix straight into a store: data seconds per wall second."""
    from robot_learning.data.schema import parse_recipe
    from robot_learning.data.store import DatasetWriter

    front, wrist, depth = render_frames(30)
    recipe = parse_recipe(BENCH_RECIPE)
    w = DatasetWriter(workdir / "offline.zarr", recipe)
    ep = w.start_episode({})
    n = int(seconds * 500)
    t0 = time.perf_counter()
    for k in range(n):
        t = 1000.0 + k / 500
        q = np.sin(np.arange(9) + t)
        ep.add("joint_states", t, t, {"position": q, "velocity": q, "effort": q})
        if k % 25 in (0, 8, 16):
            g = np.zeros((4, 4, 3), np.float32)
            ep.add("tactile_left", t, t, {"data": g})
            ep.add("tactile_right", t, t, {"data": g})
        if k % 50 in (0, 17, 33):
            i = (k // 17) % len(front)
            ep.add("front_color", t, t, {"data": front[i]})
            ep.add("wrist_color", t, t, {"data": wrist[i]})
            ep.add("front_depth", t, t, {"data": depth[i]})
        if k % 250 == 0:
            ep.flush()
    ep.finish(True)
    wall = time.perf_counter() - t0
    w.close()
    return seconds / wall


def open_and_sample(store: Path, batch: int = 64, trials: int = 20) -> dict:
    """Open a dataset, then random training batches: low-dim observations and three camera frames."""
    from robot_learning.data.store import Dataset

    cams = ("front_color", "wrist_color", "front_depth")
    t0 = time.perf_counter()
    ds = Dataset(store)
    eps = list(ds.episodes())
    # what a sampler keeps in memory: the low-dim step table and the frame index of every step
    lowdim = [e.steps["obs"]["joint_states.position"][:] for e in eps]
    frame_idx = [{c: e.steps["index"][c][:] for c in cams} for e in eps]
    frames = [{c: e.streams[c]["data"] for c in cams} for e in eps]
    index = [(i, k) for i, e in enumerate(eps) for k in range(e.n_steps)]
    t_open = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    for _ in range(trials):
        t1 = time.perf_counter()
        out = {c: [] for c in cams}
        obs = []
        for j in rng.integers(0, len(index), batch):
            i, k = index[j]
            obs.append(lowdim[i][k])
            for c in cams:
                out[c].append(frames[i][c][int(frame_idx[i][c][k])])
        times.append(time.perf_counter() - t1)
    return {"open_s": t_open, "episodes": len(eps), "steps": len(index), "batch": batch,
            "batch_p50_s": float(np.median(times)), "batch_p90_s": float(np.percentile(times, 90))}

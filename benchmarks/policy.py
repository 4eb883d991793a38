"""Policy benchmarks for ``make bench``: inference latency by sampler steps and by observation
set, the server's overhead over the bare model call, command jitter at 100 Hz on the live
graph while inference and recording run, and training throughput."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from robot_learning.policies.untrained import save_untrained, untrained_policy

LOWDIM = {"ee_pose.data": 7, "gripper_state.position": 2, "cube_pose.data": 7, "target_pose.data": 7}
TACTILE = {"tactile_left.data": 48, "tactile_right.data": 48}


def _window(runner) -> dict[str, np.ndarray]:
    s, rng = runner.spec, np.random.default_rng(0)
    obs = {f"obs/{k}": rng.uniform(-1, 1, (s.obs_horizon, d)).astype(np.float32)
           for k, d in runner.policy.cfg.obs_dims.items()}
    for k, shape in runner.policy.cfg.image_shapes.items():
        obs[f"image/{k}"] = rng.integers(0, 255, (s.obs_horizon, *shape), dtype=np.uint8)
    return obs


def _times(fn, n: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def inference_latency(device: str, n: int) -> list[tuple[str, str, np.ndarray]]:
    """(observation set, sampler, latencies in ms) of one act() call."""
    from robot_learning.policies.diffusion import DiffusionRunner

    rows = []
    base = DiffusionRunner(untrained_policy(LOWDIM).to(device), device)
    win = _window(base)
    for sampler, steps in (("ddim", 5), ("ddim", 10), ("ddim", 20), ("dpmsolver", 5), ("dpmsolver", 10)):
        base.sampler, base.steps = sampler, steps
        rows.append(("low-dim (23)", f"{sampler} {steps}", _times(lambda: base.act(win), n)))
    sets = {"low-dim + front RGB 96x96": ({**LOWDIM}, {"front_color": [96, 96, 3]}),
            "low-dim + tactile + front & wrist RGB 96x96": ({**LOWDIM, **TACTILE},
                                                            {"front_color": [96, 96, 3], "wrist_color": [96, 96, 3]})}
    for name, (obs, images) in sets.items():
        r = DiffusionRunner(untrained_policy(obs, images).to(device), device)
        w = _window(r)
        rows.append((name, "ddim 10", _times(lambda r=r, w=w: r.act(w), n)))
    return rows


def server_overhead(n: int) -> dict:
    """Bare act() against a whole inference cycle of the server engine (window from the buffers,
    act, checks, scheduling), measured in the same run on the same policy."""
    from robot_learning.policies.diffusion import DiffusionRunner
    from robot_learning.runtime.server import PolicyServerCore, ServerConfig

    runner = DiffusionRunner(untrained_policy(LOWDIM))
    win = _window(runner)
    clock = {"t": 100.0}
    core = PolicyServerCore(runner, ServerConfig(replan_every=1, max_obs_age=np.inf), lambda: clock["t"],
                            log=lambda m: None)
    core.resume()
    rng = np.random.default_rng(0)

    def cycle():
        clock["t"] += 0.1
        for k, d in LOWDIM.items():
            stream, array = k.split(".")
            core.add_sample(stream, clock["t"], {array: rng.uniform(-1, 1, d)})
        assert core.infer_once()

    bare, server = [], []
    cycle()
    for _ in range(n):  # interleaved, so load changes hit both alike
        bare.append(_times(lambda: runner.act(win), 1)[0])
        server.append(_times(cycle, 1)[0])
    b, s = np.median(bare), np.median(server)
    return {"bare_ms": b, "server_ms": s, "overhead": s / b - 1.0}


def _record_while(client, g, times: list, seconds: float, snapshot=lambda: None) -> tuple[list, object, dict]:
    """Waits for the first message in ``times``, then measures for ``seconds`` inside one
    recorder episode; returns (the times, ``snapshot()`` at the end, the saved episode)."""
    from std_srvs.srv import SetBool, Trigger

    t_end = time.monotonic() + 120
    while not times and time.monotonic() < t_end and g.alive():
        time.sleep(0.1)
    res = client.call(Trigger, "/recorder/start_episode", timeout=60.0)
    if res is None or not res.success:
        raise RuntimeError(f"bench: the recorder did not start an episode; see {g.log_path}")
    times.clear()
    time.sleep(seconds)
    got, snap = list(times), snapshot()
    res = client.call(SetBool, "/recorder/stop_episode", timeout=60.0, data=True)
    if res is None:
        raise RuntimeError(f"bench: the recorder did not finish its episode; see {g.log_path}")
    return got, snap, json.loads(res.message)


def graph_jitter(seconds: float, workdir: Path, client) -> dict:
    """Command intervals at 100 Hz seen by a client, while the server infers and the recorder
    records one long episode (no resets or pauses, so every interval is a running one)."""
    from geometry_msgs.msg import TwistStamped

    from robot_learning.graph import SimGraph

    ckpt = save_untrained(workdir / "jitter_ckpt", obs_dims=LOWDIM)
    args = dict(checkpoint=ckpt, cameras="none", control_rate=100.0, record="true", dataset=workdir / "jitter.zarr",
                autostart="true", use_sim_time="false", state_rate=250.0)
    times: list[float] = []
    client.node.create_subscription(TwistStamped, "/policy/command/twist",
                                    lambda m: times.append(time.perf_counter()), 1000)
    with SimGraph(workdir / "jitter.log", "deploy_policy.launch.yaml", **args) as g:
        got, _, saved = _record_while(client, g, times, seconds)
    out = _intervals(got)
    if out["n"] == 0:
        return out
    return {**out, "seconds": seconds, "late_20ms": int((np.diff(got) * 1e3 > 20.0).sum()),
            "recorded_steps": int(saved.get("n_steps", 0))}


def _intervals(times: list[float]) -> dict:
    iv = np.diff(times) * 1e3
    if iv.size == 0:
        return {"n": 0}
    return {"n": int(iv.size + 1), "p50_ms": float(np.percentile(iv, 50)), "p99_ms": float(np.percentile(iv, 99)),
            "max_ms": float(iv.max()), "std_ms": float(iv.std())}


def joint_jitter(seconds: float, workdir: Path, client, sim_time: bool) -> dict:
    """What the joints are sent: the periods of arm_node's writes to the robot's position
    controller, while a pose policy's plans drive the arm and the recorder records. The sim
    stands in for the robot behind ros2_control (``sim:=false sim_hardware:=true``). Two views:
    arm_node's own (the loop's periods, /diagnostics) and a separate client's receive times
    (its spin thread real-time too, so the figure is the wire's, not the client's turn)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float64MultiArray

    from robot_learning.config import load_robot
    from robot_learning.control.kinematics import Kinematics
    from robot_learning.control.realtime import make_realtime
    from robot_learning.control.ros2_control import load_ros2_control
    from robot_learning.graph import SimGraph
    from robot_learning.policies.untrained import untrained_pose_policy
    from robot_learning.transforms import wxyz_to_xyzw

    robot = load_robot()
    rc = load_ros2_control(robot)
    pos, quat = Kinematics(robot).fk(robot.home)
    ckpt = save_untrained(workdir / "joint_jitter_ckpt",
                          untrained_pose_policy(np.r_[pos + [0.03, 0.0, 0.0], wxyz_to_xyzw(quat)], 0.02))
    times: list[float] = []
    diag: dict[str, str] = {}

    def on_diag(m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name.startswith("arm"):
                diag.update({kv.key: kv.value for kv in st.values})

    make_realtime(40, tid=client.thread.native_id)
    sub = client.node.create_subscription(Float64MultiArray, rc.arm.topic,
                                          lambda m: times.append(time.perf_counter()), 1000)
    dsub = client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    clock = "true" if sim_time else "false"
    args = dict(checkpoint=ckpt, cameras="none", record="true", dataset=workdir / f"joint_jitter_{clock}.zarr",
                autostart="true", sim="false", sim_hardware="true", use_sim_time=clock)
    try:
        with SimGraph(workdir / f"joint_jitter_{clock}.log", "deploy_policy.launch.yaml", **args) as g:
            got, loop, saved = _record_while(client, g, times, seconds, lambda: dict(diag))
    finally:
        client.node.destroy_subscription(sub)
        client.node.destroy_subscription(dsub)
    return {**_intervals(got), "seconds": seconds, "rate_hz": rc.rate, "loop": loop,
            "recorded_steps": int(saved.get("n_steps", 0))}


def train_throughput(workdir: Path) -> dict[str, float]:
    """Samples per second of ``train`` (sampler + forward/backward + EMA) on a recorded store."""
    from benchmarks.ingest import offline_write
    from robot_learning.train.diffusion import TrainConfig, train

    offline_write(60.0, workdir)
    out = {}
    for name, kw in (("low-dim, batch 256", dict(obs=["joint_states.position"], batch_size=256, steps=40)),
                     ("2 RGB 96x96 + low-dim, batch 64", dict(obs=["joint_states.position"],
                                                               images=["front_color", "wrist_color"],
                                                               batch_size=64, steps=20))):
        run = train(TrainConfig(dataset=str(workdir / "offline.zarr"), out=str(workdir / f"train_{len(out)}"),
                                eval_every=10_000, eval_episodes=0, only_success=False, warmup_steps=1, **kw),
                    progress=False)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        out[name] = float(np.mean([r["samples_per_s"] for r in rows if "samples_per_s" in r][-1:]))
    return out


def section(quick: bool, workdir: Path, client) -> list[str]:
    import torch

    n = 10 if quick else 50
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = ["## Policy inference latency (one `act()`: observation window to action chunk)\n",
            "Untrained networks of the size that reached 94% in docs/learning.md (U-Net 64/128/256, "
            "horizon 16; the demo trains a half-width one); latency does not "
            f"depend on the weights. {n} calls each, torch threads: {torch.get_num_threads()}.\n",
            "| device | observations | sampler, steps | p50 (ms) | p99 (ms) |", "|---|---|---|---|---|"]
    for dev in devices:
        print(f"bench: inference latency on {dev} ...", flush=True)
        for obs, samp, ms in inference_latency(dev, n):
            rows.append(f"| {dev} | {obs} | {samp} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} |")
    if "cuda" not in devices:
        rows.append("\nNo GPU on this machine; the GPU rows come from a run where one is present.")
    print("bench: server overhead ...", flush=True)
    ov = server_overhead(n)
    rows += ["\n## Policy server overhead over the bare model call\n",
             f"Median of {n} interleaved calls: bare `act()` {ov['bare_ms']:.1f} ms, a full server inference "
             f"cycle (buffers to window, act, NaN/range checks, scheduling) {ov['server_ms']:.1f} ms: overhead "
             f"**{ov['overhead']:.1%}** (goal: under 10%).\n"]
    secs = 30.0 if quick else 600.0
    print(f"bench: command jitter at 100 Hz for {secs:.0f} s with inference and recording ...", flush=True)
    j = graph_jitter(secs, workdir, client)
    rows += ["## Command jitter at 100 Hz (live graph)\n",
             f"deploy_policy.launch.yaml with the sim (real time), mux, policy server at 100 Hz (low-dim "
             f"policy, DDIM 10, replanning every 4 steps) and the recorder recording one episode the "
             f"whole time ({j.get('recorded_steps', 0)} steps); intervals between /policy/command/twist "
             f"messages as received by a separate client process over {j.get('seconds', secs):.0f} s.\n",
             "| messages | p50 (ms) | p99 (ms) | max (ms) | std (ms) | intervals > 20 ms |",
             "|---|---|---|---|---|---|",
             f"| {j['n']} | {j.get('p50_ms', 0):.2f} | {j.get('p99_ms', 0):.2f} | {j.get('max_ms', 0):.1f} | "
             f"{j.get('std_ms', 0):.2f} | {j.get('late_20ms', 0)} |\n"]
    print("bench: training throughput ...", flush=True)
    tp = train_throughput(workdir)
    rows += ["## Training throughput (`robot-learning train diffusion`, CPU)\n", "| batch | samples/s |",
             "|---|---|", *[f"| {k} | {v:.0f} |" for k, v in tp.items()]]
    return rows


def arm_section(quick: bool, workdir: Path, client) -> list[str]:
    """``--only arm``: the joint command jitter of the real-robot path (issue 12's goal)."""
    secs = 30.0 if quick else 600.0
    rows = ["## Joint command jitter at the arm (live graph, `sim:=false`)\n",
            "deploy_policy.launch.yaml with `sim:=false sim_hardware:=true`: the sim behind ros2_control "
            "interfaces at real time, arm_node (its loop thread SCHED_FIFO 50), the policy server sending a "
            "pose policy's chunks as timed plans, the mux, and the recorder recording, on one machine. Goal: "
            "the periods of what arm_node writes to the position controller within 2 ms of nominal at p99, "
            "whatever the inference time. *arm_node*: its own write periods (/diagnostics, the last 5000); "
            "*client*: intervals as a separate process receives the commands (its spin thread real-time "
            "too). On the wall clock the loop is the one a real arm gets; on sim time arm_node steps once "
            "per joint state, so the sim's own pace is in the figure.\n",
            "| clock | rate (Hz) | commands | arm_node p99 dev (ms) | arm_node max dev (ms) | client p50 (ms) "
            "| client p99 (ms) | client max (ms) | recorded steps |",
            "|---|---|---|---|---|---|---|---|---|"]
    clocks = os.environ.get("ARM_CLOCKS", "wall,sim").split(",")  # ARM_CLOCKS=wall: the goal's row only
    for sim_time in [c == "sim" for c in ("wall", "sim") if c in clocks]:
        name = "sim time" if sim_time else "wall"
        print(f"bench: joint command jitter ({name}) for {secs:.0f} s (arm_node, plans, recording) ...", flush=True)
        jj = joint_jitter(secs, workdir, client, sim_time)
        loop = jj.get("loop", {})
        own = ((loop.get("period_jitter_p99_ms", "n/a"), loop.get("period_jitter_max_ms", "n/a")) if not sim_time
               else ("n/a", "n/a"))
        rows.append(f"| {name} | {jj.get('rate_hz', 0):.0f} | {jj['n']} | {own[0]} | {own[1]} | "
                    f"{jj.get('p50_ms', 0):.2f} | {jj.get('p99_ms', 0):.2f} | {jj.get('max_ms', 0):.1f} | "
                    f"{jj.get('recorded_steps', 0)} |")
    return rows + [""]

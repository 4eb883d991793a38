"""The soak for ``make bench`` (``BENCH_ARGS="--only soak"``; ``SOAK_MINUTES``, 60 by default):
the deployed graph for a long while, as a working day has it. The sim with both cameras, the
policy server running a policy, the recorder recording episodes back to back, and the command
mux switching between the policy and an operator every 15 s. It reports what a long run
reveals and a short test cannot: memory growth of every process (goal under 5 %), messages
the recorder lost that a subscriber in the same run received (goal 0), and the period of the
commands the mux sends the arm (p99)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.policy import LOWDIM, _intervals
from robot_learning.policies.untrained import save_untrained

SWITCH_S = 15.0     # the operator takes over, then hands back, this often
EPISODE_S = 300.0   # recorder episodes, back to back


def _stamp(m) -> float:
    return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9


def _processes(root: int) -> dict[int, str]:
    """The graph's processes (pid -> node name) below the launcher."""
    out = {}
    for p in psutil.Process(root).children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        name = next((Path(c).name for c in cmd if Path(c).parent.name == "robot_learning_ros"), None)
        if name:
            out[p.pid] = name
    return out


def _rss(pids: dict[int, str]) -> dict[str, float]:
    out = {}
    for pid, name in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = float("nan")  # it died: the report shows it
    return out


def _operator(client, stop: threading.Event) -> None:
    """Engages every other ``SWITCH_S`` and drives a slow circle while engaged."""
    from geometry_msgs.msg import TwistStamped
    from robot_learning_ros.msgs import twist_msg
    from std_msgs.msg import Bool

    engaged = client.publisher("/teleop/engaged", Bool, latched=True)
    twist = client.publisher("/teleop/twist", TwistStamped)
    on, t_switch = False, time.monotonic() + SWITCH_S
    while not stop.is_set():
        if time.monotonic() >= t_switch:
            on, t_switch = not on, t_switch + SWITCH_S
            engaged.publish(Bool(data=on))
        if on:
            t = time.monotonic()
            twist.publish(twist_msg(np.array([0.03 * np.cos(t), 0.03 * np.sin(t), 0, 0, 0, 0]), 0.0, ""))
        time.sleep(0.02)
    engaged.publish(Bool(data=False))


def soak(minutes: float, workdir: Path, client) -> dict:
    from geometry_msgs.msg import TwistStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger
    from tqdm import tqdm

    from robot_learning.data.store import Dataset
    from robot_learning.graph import SimGraph

    ckpt = save_untrained(workdir / "soak_ckpt", obs_dims=LOWDIM)
    store = workdir / "soak.zarr"
    # on the sim's clock, as deployed in the sim: with both cameras rendered this machine runs the
    # sim below real time, and on the wall clock the policy would find every observation stale
    args = dict(checkpoint=ckpt, cameras="front,wrist", record="true", dataset=store, autostart="true")
    js_stamps: list[float] = []
    cmd_times: list[float] = []
    client.node.create_subscription(JointState, "/joint_states", lambda m: js_stamps.append(_stamp(m)), 1000)
    client.node.create_subscription(TwistStamped, "/arm/command/twist", lambda m: cmd_times.append(_stamp(m)), 1000)
    sources: list[str] = []
    client.node.create_subscription(String, "/control_source", lambda m: sources.append(m.data), 10)
    seconds = minutes * 60.0
    stop = threading.Event()
    memory: list[tuple[float, dict[str, float]]] = []
    saved = []
    with SimGraph(workdir / "soak.log", "deploy_policy.launch.yaml", **args) as g:
        end = time.monotonic() + 120
        while not js_stamps and time.monotonic() < end:
            time.sleep(0.1)
        if not js_stamps:
            raise RuntimeError(f"bench: soak: no /joint_states from the graph; see {g.log_path}")
        time.sleep(10.0)  # past start-up (models loaded, caches warm) before the first measure
        pids = _processes(g.proc.pid)
        op = threading.Thread(target=_operator, args=(client, stop), daemon=True)
        op.start()
        t0 = time.monotonic()
        cmd_times.clear()
        bar = tqdm(total=int(seconds), desc="bench: soak", unit="s")
        try:
            while time.monotonic() - t0 < seconds and g.alive():
                res = client.call(Trigger, "/recorder/start_episode", timeout=60.0)
                if res is None or not res.success:
                    raise RuntimeError(f"bench: soak: the recorder did not start an episode; see {g.log_path}")
                ep_end = min(time.monotonic() + EPISODE_S, t0 + seconds)
                while time.monotonic() < ep_end and g.alive():
                    memory.append((time.monotonic() - t0, _rss(pids)))
                    time.sleep(min(10.0, max(0.0, ep_end - time.monotonic())))
                    bar.n = int(time.monotonic() - t0)
                    bar.refresh()
                res = client.call(SetBool, "/recorder/stop_episode", timeout=120.0, data=False)
                if res is not None:
                    saved.append(json.loads(res.message)["index"])
        finally:
            stop.set()
            bar.close()
        op.join(timeout=5.0)
        alive = g.alive()
        memory.append((time.monotonic() - t0, _rss(pids)))
        wall = time.monotonic() - t0
    sim_s = js_stamps[-1] - js_stamps[0] if len(js_stamps) > 1 else 0.0
    # memory: from the first sample after 5 minutes (or the first) to the last, per process
    warm = next((m for t, m in memory if t >= min(300.0, seconds / 4)), memory[0][1])
    last = memory[-1][1]
    growth = {n: (last[n] - warm[n]) / warm[n] for n in warm}
    # drops: /joint_states the client received inside each episode's span, missing from the dataset
    ds = Dataset(store)
    stamps = np.array(js_stamps)
    lost, recorded, gaps = 0, 0, {}
    for i in saved:
        ep = ds.episode(i)
        t = ep.stream("joint_states")["t"]
        t = t[np.isfinite(t)]
        seen = stamps[(stamps >= t.min()) & (stamps <= t.max())]
        lost += len(np.setdiff1d(np.round(seen, 6), np.round(t, 6)))
        recorded += len(t)
        for name, gp in (ep.meta.get("gaps") or {}).items():
            gaps[name] = gaps.get(name, 0) + int(gp["missing"])
    return {"minutes": minutes, "alive": alive, "rtf": sim_s / wall if wall else 0.0,
            "policy_ran": "policy" in sources, "switches": sum(a != b for a, b in zip(sources, sources[1:])),
            "memory_warm": warm, "memory_last": last, "growth": growth,
            "js_recorded": recorded, "js_lost": lost, "gaps": gaps, "episodes": len(saved),
            "commands": _intervals(cmd_times)}


def section(minutes: float, workdir: Path, client) -> list[str]:
    print(f"bench: soak, {minutes:g} min of the deployed graph (cameras, policy, recorder, mux switching) ...",
          flush=True)
    r = soak(minutes, workdir, client)
    c = r["commands"]
    rows = [f"| {n} | {r['memory_warm'][n]:.0f} | {r['memory_last'][n]:.0f} | {r['growth'][n]:+.1%} |"
            for n in sorted(r["growth"])]
    gaps = ", ".join(f"{k} {v}" for k, v in sorted(r["gaps"].items()) if v) or "none"
    return [
        "## Soak: the deployed graph for a long run\n",
        f"{r['minutes']:g} minutes of `deploy_policy.launch.yaml`: the sim with front and wrist cameras "
        f"(640x480, colour and depth), the policy server running a policy at 50 Hz, the recorder recording "
        f"{r['episodes']} episodes back to back, and an operator taking over and handing back every "
        f"{SWITCH_S:g} s through the command mux ({r['switches']} changes of control"
        f"{'' if r['policy_ran'] else '; the policy never had the arm'}). The sim ran at {r['rtf']:.2f}x real "
        f"time (rendering two cameras); every node was {'still running' if r['alive'] else 'NOT running'} "
        "at the end.\n",
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth |", "|---|---|---|---|", *rows,
        f"\n`/joint_states` messages a subscriber in the same run received inside the recorded episodes: "
        f"**{r['js_lost']}** missing from the {r['js_recorded']} the recorder stored. Gaps the recorder found "
        f"in its own streams (messages missing by their stream's rate): {gaps}.\n",
        f"Commands the mux sent the arm (`/arm/command/twist`, by their stamps on the graph's clock): period "
        f"p50 {c.get('p50_ms', float('nan')):.1f} ms, **p99 {c.get('p99_ms', float('nan')):.1f} ms**, "
        f"max {c.get('max_ms', float('nan')):.1f} ms over {c.get('n', 0)} commands.",
    ]

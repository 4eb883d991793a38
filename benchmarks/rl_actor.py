"""The RL actor's command stream while a learner pushes weights (``--only rl``): HIL-RL through
the graph (``hil_rl.launch.yaml``: the sim at real time, the command mux, ``rl_graph_actor``)
with ``rl_learner`` in its own process publishing new weights after every update, against the
same graph with no learner. What matters on a robot is that loading weights never stalls the
commands the arm gets; the intervals of ``/policy/command/twist`` as a separate process
receives them show it (the actor commands at 50 Hz within each 10 Hz policy step)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from benchmarks.policy import _intervals
from robot_learning.launch import die_with_parent, find_executable


def _learner(run_dir: Path, log) -> subprocess.Popen:
    params = dict(run_dir=str(run_dir), batch_size=64, hidden="256,256", learning_starts=50, publish_every=1,
                  updates_per_transition=1.0, checkpoint_every=100000)
    args = [find_executable("robot_learning_ros", "rl_learner"), "--ros-args"]
    for k, v in params.items():
        args += ["-p", f"{k}:={v}"]
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())


def actor_jitter(seconds: float, workdir: Path, client, with_learner: bool) -> dict:
    from geometry_msgs.msg import TwistStamped
    from std_msgs.msg import String

    from robot_learning.graph import SimGraph

    name = "learner" if with_learner else "alone"
    times: list[float] = []
    versions: list[int] = []
    sub = client.node.create_subscription(TwistStamped, "/policy/command/twist",
                                          lambda m: times.append(time.perf_counter()), 1000)
    acks = client.node.create_subscription(String, "/rl/acks", lambda m: versions.append(json.loads(m.data)["version"]),
                                           10)
    log = (workdir / f"rl_{name}_learner.log").open("w")
    learner = None
    try:
        with SimGraph(workdir / f"rl_{name}.log", "hil_rl.launch.yaml", task="peg_in_hole",
                      outbox=workdir / f"outbox_{name}", report_dir=workdir / f"report_{name}") as g:
            end = time.monotonic() + 120
            while not times and time.monotonic() < end:
                time.sleep(0.1)
            if not times:
                raise RuntimeError(f"bench: the RL actor sent no command; see {g.log_path}")
            if with_learner:
                learner = _learner(workdir / f"run_{name}", log)
                end = time.monotonic() + 120
                while (not versions or versions[-1] < 1) and time.monotonic() < end:
                    time.sleep(0.1)
            times.clear()
            v0 = versions[-1] if versions else 0
            time.sleep(seconds)
            got = list(times)
            pushed = (versions[-1] if versions else 0) - v0
    finally:
        if learner is not None:
            learner.send_signal(2)
            learner.wait(30)
        log.close()
        client.node.destroy_subscription(sub)
        client.node.destroy_subscription(acks)
    return {**_intervals(got), "weights_pushed": pushed, "seconds": seconds}


def plugin_costs(workdir: Path, versions: int = 50) -> dict:
    """In one process: what loading one version of the bench's agent (256x256, peg-in-hole's
    state) costs the actor's stepping thread, with and without keeping it for a restart, and
    one action through the server's SAC plug-in (ms, medians)."""
    import numpy as np

    from robot_learning.rl.learner import ActorPolicy, Learner

    keys = ["ee_pose.data", "peg_pose.data", "hole_pose.data"]
    spec = {"state_keys": keys, "state_dims": [7, 7, 7], "action_low": [-1.0] * 7, "action_high": [1.0] * 7,
            "dt": 0.1, "env": "graph/peg_in_hole"}
    learner = Learner(workdir / "plugin_run", spec, hidden=(256, 256))
    sent = [learner.weights() for _ in range(versions)]
    learner.close()

    def median_ms(calls) -> float:
        times = []
        for call in calls:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))

    out = {}
    for name, keep in (("load_ms", None), ("load_kept_ms", workdir / "plugin_outbox")):
        policy = ActorPolicy(keep=keep)
        policy.restore(spec)         # the actor announces its spec first: kept weights are for it
        policy.KEEP_EVERY_S = 0.0    # every version written (the actor writes one every 2 s at most)
        out[name] = median_ms(lambda p=policy, w=w: p.load(*w) for w in sent)
    obs = {k: np.zeros(7, np.float32) for k in keys}
    out["act_ms"] = median_ms(lambda p=policy: p.act(obs) for _ in range(200))
    return out


def section(quick: bool, workdir: Path, client) -> list[str]:
    secs = 20.0 if quick else 120.0
    rows = []
    for with_learner in (False, True):
        print(f"bench: RL actor commands for {secs:.0f} s, {'a learner pushing weights' if with_learner else 'alone'}"
              " ...", flush=True)
        r = actor_jitter(secs, workdir, client, with_learner)
        rows.append(f"| {'learner pushing weights' if with_learner else 'no learner'} | {r.get('n', 0)} | "
                    f"{r.get('weights_pushed', 0)} | {r.get('p50_ms', float('nan')):.1f} | "
                    f"{r.get('p99_ms', float('nan')):.1f} | {r.get('max_ms', float('nan')):.1f} |")
    c = plugin_costs(workdir)
    return ["## RL actor: command intervals while the learner pushes weights\n",
            "hil_rl.launch.yaml on peg-in-hole (the sim at real time, the mux, rl_graph_actor at 10 policy steps/s "
            "commanding at 50 Hz within each), and rl_learner in its own process publishing the actor's weights "
            "(256x256, about 0.3 MB) after every update, against no learner. Intervals of /policy/command/twist "
            "as a separate process receives them; the gap between two policy steps (observe, act, send the "
            "transition) is in the figures.\n",
            "| actor | commands | weight versions received | p50 (ms) | p99 (ms) | max (ms) |",
            "|---|---|---|---|---|---|", *rows, "",
            f"The actor runs each version through the policy server's SAC plug-in and keeps it in its outbox for "
            f"a restart (at most one version every 2 s). Measured in one process: loading a version takes "
            f"{c['load_ms']:.2f} ms, {c['load_kept_ms']:.2f} ms with writing it, one action {c['act_ms']:.2f} ms; "
            "the p99 with a learner "
            "is the learner's updates competing for the cores.\n"]

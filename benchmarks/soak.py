"""The soak for ``make bench`` (``BENCH_ARGS="--only soak"``; ``SOAK_MINUTES``, 60 by default):
the deployed graph for a long while, as a working day has it. The sim with both cameras, the
policy server running a policy, the recorder recording episodes back to back, and the command
mux switching between the policy and an operator every 15 s. It reports what a long run
reveals and a short test cannot: memory growth of every process (goal under 5 %), messages
the recorder lost that a subscriber in the same run received (goal 0), and the period of the
commands the mux sends the arm (p99).

Memory is compared at the same point of the work: in the five seconds after each episode is
finished, the least each process held (a recorder in the middle of an episode holds that
episode's stamp tables and write buffers, which is working memory, not growth). The whole
curve goes to ``docs/img/soak_memory.png``."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.policy import LOWDIM, _intervals
from robot_learning.policies.untrained import save_untrained

SWITCH_S = 15.0     # the operator takes over, then hands back, this often
EPISODE_S = float(os.environ.get("SOAK_EPISODE_S", "300"))  # recorder episodes, back to back
# streams a subscriber in this process also receives, reliably as the recorder does (their
# publishers offer it), to tell what the recorder lost from what never arrived
COMPARED = ("joint_states", "wrench", "tactile_left")
PLOT = Path("docs/img/soak_memory.png")


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


PRIVATE = " (private)"
# the recorder's glibc heap, blocks in use (mallinfo2, from its /diagnostics): where a leak in
# the recorder would show; its RSS also holds freed heap pages the streaming frames touch again
HEAP = "recorder_node (heap in use)"


def _rss(pids: dict[int, str]) -> dict[str, float]:
    """RSS of each process in MiB, and beside it (``name (private)``) its anonymous memory, the
    RSS less shared and file pages: a leak grows the private part, while the resident pages of
    DDS's shared-memory segments (sized by the transport's configuration, touched as a stalled
    process drains a burst) count in RSS only."""
    out = {}
    for pid, name in pids.items():
        try:
            m = psutil.Process(pid).memory_info()
            out[name], out[name + PRIVATE] = m.rss / 2**20, (m.rss - m.shared) / 2**20
        except psutil.Error:
            out[name] = out[name + PRIVATE] = float("nan")  # it died: the report shows it
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
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from robot_learning_ros.msgs import message_class
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger
    from tqdm import tqdm

    from robot_learning.data.schema import load_recipe
    from robot_learning.data.store import Dataset
    from robot_learning.graph import SimGraph

    ckpt = save_untrained(workdir / "soak_ckpt", obs_dims=LOWDIM)
    store = workdir / "soak.zarr"
    # on the sim's clock, as deployed in the sim: with both cameras rendered this machine runs the
    # sim below real time, and on the wall clock the policy would find every observation stale
    args = dict(checkpoint=ckpt, cameras="front,wrist", record="true", dataset=store, autostart="true")
    recipe = load_recipe("datasets/recipes/workcell.yaml")
    seen: dict[str, list[float]] = {n: [] for n in COMPARED}
    clock: list[tuple[float, float]] = []  # (monotonic, graph clock) now and then: where a loss fell

    def on_msg(m, n: str) -> None:
        seen[n].append(_stamp(m))
        if n == "joint_states" and len(seen[n]) % 100 == 1:
            clock.append((time.monotonic(), seen[n][-1]))

    for n in COMPARED:
        spec = recipe.streams[n]
        qos = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        client.node.create_subscription(message_class(spec.type), spec.topic, lambda m, n=n: on_msg(m, n), qos)
    js_stamps = seen["joint_states"]
    backlog: list[tuple[float, int]] = []
    backlog_mib: list[float] = []
    shed: dict[str, int] = {}

    heap: dict[str, float] = {}  # the recorder's glibc heap, as its last diagnostics said

    def on_diag(m: DiagnosticArray) -> None:
        for st in m.status:
            if st.name == "recorder":
                v = {kv.key: kv.value for kv in st.values}
                backlog.append((time.monotonic(), int(v.get("backlog_max", 0))))
                backlog_mib.append(float(v.get("backlog_mib_max", 0.0)))
                heap.update({k.split("/", 1)[1]: float(x) for k, x in v.items() if k.startswith("heap_mib/")})

    client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 50)
    cmd_times: list[float] = []
    client.node.create_subscription(TwistStamped, "/arm/command/twist", lambda m: cmd_times.append(_stamp(m)), 1000)
    sources: list[str] = []
    client.node.create_subscription(String, "/control_source", lambda m: sources.append(m.data), 10)
    seconds = minutes * 60.0
    stop = threading.Event()
    memory: list[tuple[float, dict[str, float]]] = []
    after_episode: list[tuple[float, dict[str, float]]] = []  # settled after each finish: same phase
    heap_after: list[dict[str, float]] = []  # the recorder's heap then
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
                settled = _settled(pids)
                if "in_use" in heap:
                    settled[HEAP] = heap["in_use"]
                after_episode.append((time.monotonic() - t0, settled))
                heap_after.append(dict(heap))
        finally:
            stop.set()
            bar.close()
        op.join(timeout=5.0)
        alive = g.alive()
        memory.append((time.monotonic() - t0, _rss(pids)))
        wall = time.monotonic() - t0
    sim_s = js_stamps[-1] - js_stamps[0] if len(js_stamps) > 1 else 0.0
    # memory: after the first episode that finished past warm-up (5 minutes, or a quarter of a
    # short run) to after the last, per process; the first episode's end when there is one only
    ends = after_episode or memory[-1:]
    warm = next((m for t, m in ends if t >= min(300.0, seconds / 4)), ends[0][1])
    last = ends[-1][1]
    growth = {n: (last[n] - warm[n]) / warm[n] for n in warm if n in last}
    trend = _trend([(t, m) for t, m in ends if t >= min(300.0, seconds / 4)])
    (workdir / "soak_memory.json").write_text(json.dumps({"memory": memory, "after_episode": after_episode,
                                                                "recorder_heap": heap_after}))
    # drops: messages the client received inside each episode's span, missing from the dataset
    ds = Dataset(store)
    compared = {n: {"recorded": 0, "lost": 0, "client_missed": 0} for n in COMPARED}
    lost_at: dict[str, list[float]] = {n: [] for n in COMPARED}
    gaps: dict[str, int] = {}
    for i in saved:
        ep = ds.episode(i)
        for n in COMPARED:
            t = ep.stream(n).get("t", np.zeros(0))
            t = np.round(t[np.isfinite(t)], 6)
            if len(t) == 0:   # nothing of it recorded (an episode cut short at the end): say so, go on
                compared[n]["empty_episodes"] = compared[n].get("empty_episodes", 0) + 1
                continue
            got = np.array(seen[n])
            got = np.round(got[(got >= t.min()) & (got <= t.max())], 6)
            lost = np.setdiff1d(got, t)
            compared[n]["recorded"] += len(t)
            compared[n]["lost"] += len(lost)
            compared[n]["client_missed"] += len(np.setdiff1d(t, got))
            lost_at[n] += lost.tolist()
        for name, gp in (ep.meta.get("gaps") or {}).items():
            gaps[name] = gaps.get(name, 0) + int(gp["missing"])
        for name, k in (ep.meta.get("shed") or {}).items():
            shed[name] = shed.get(name, 0) + int(k)
    losses = {n: _losses(v, clock, t0) for n, v in lost_at.items() if v}
    _plot(memory, after_episode, backlog, t0, [x for runs in losses.values() for x in runs])
    return {"minutes": minutes, "alive": alive, "rtf": sim_s / wall if wall else 0.0,
            "policy_ran": "policy" in sources, "switches": sum(a != b for a, b in zip(sources, sources[1:])),
            "memory_warm": warm, "memory_last": last, "growth": growth, "trend": trend, "compared": compared,
            "gaps": gaps, "losses": losses, "episodes": len(saved),
            "backlog_max": max((b for _, b in backlog), default=0), "backlog_mib_max": max(backlog_mib, default=0.0),
            "shed": shed, "recorder_heap": heap_after,
            "commands": _intervals(cmd_times)}


def _settled(pids: dict[int, str], seconds: float = 5.0) -> dict[str, float]:
    """Each process's least memory over the few seconds after an episode ends, before the
    next starts: what it cannot give back. One sample caught the recorder in the middle of
    handing the episode's buffers back (a third above the others, gone at the next end)."""
    samples = []
    for _ in range(int(seconds)):
        time.sleep(1.0)
        samples.append(_rss(pids))
    return {n: min(m[n] for m in samples) for n in samples[0]}


def _losses(stamps: list[float], clock: list[tuple[float, float]], t0: float) -> list[tuple[float, float, int]]:
    """Lost messages as runs (a new run after 0.5 s without a loss): where each fell, in minutes
    of the soak, how long it lasted on the graph's clock, and how many it held; to set beside
    the recorder's backlog at that moment."""
    st = np.sort(np.asarray(stamps))
    cuts = np.flatnonzero(np.diff(st) > 0.5) + 1
    mono, graph = (np.array(c) for c in zip(*clock)) if clock else (np.zeros(1), np.zeros(1))
    return [(float(np.interp(r[0], graph, mono) - t0) / 60, float(r[-1] - r[0]), len(r)) for r in np.split(st, cuts)]


def _trend(ends: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Growth over the run by a straight line through the RSS at every episode end past
    warm-up, as a share of the line's start: one episode's end against another swings by a
    third for a process holding write buffers, the line through all of them does not."""
    if len(ends) < 3:
        return {}
    t = np.array([x for x, _ in ends])
    out = {}
    for n in ends[0][1]:
        y = np.array([m.get(n, np.nan) for _, m in ends])
        if np.all(np.isfinite(y)):
            slope, start = np.polyfit(t - t[0], y, 1)
            out[n] = float(slope * (t[-1] - t[0]) / start)
    return out


def _plot(memory, after_episode, backlog, t0: float, losses: list[tuple[float, float, int]]) -> None:
    """RSS of every process over the run (dots: the least in the 5 s after each episode finished), the
    recorder's write backlog and where it lost messages (red), to ``PLOT``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 1))
    for name in sorted(n for n in memory[0][1] if not n.endswith(PRIVATE)):
        line, = ax.plot([t / 60 for t, _ in memory], [m[name] for _, m in memory], label=name)
        ax.plot([t / 60 for t, _ in after_episode], [m[name] for _, m in after_episode], "o",
                color=line.get_color())
    heap = [(t / 60, m[HEAP]) for t, m in after_episode if HEAP in m]
    if heap:
        ax.plot(*zip(*heap), "x", color="black", label="recorder heap in use (glibc)")
    ax.set_ylabel("RSS (MiB)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Soak: memory of the deployed graph (dots: the least in the 5 s after each episode)")
    bx.plot([(t - t0) / 60 for t, _ in backlog], [b for _, b in backlog], color="gray")
    for minute, _, count in losses:
        bx.axvline(minute, color="tab:red", lw=1)
        bx.annotate(f"{count} lost", (minute, 0), color="tab:red", fontsize=8, rotation=90, va="bottom")
    bx.set_ylabel("recorder backlog\n(messages)")
    bx.set_xlabel("minutes")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=90)
    plt.close(fig)


def section(minutes: float, workdir: Path, client) -> list[str]:
    print(f"bench: soak, {minutes:g} min of the deployed graph (cameras, policy, recorder, mux switching) ...",
          flush=True)
    r = soak(minutes, workdir, client)
    c = r["commands"]
    trend = r["trend"]
    rows = [f"| {n} | {r['memory_warm'][n]:.0f} | {r['memory_last'][n]:.0f} | {r['growth'][n]:+.1%} | "
            f"{format(trend[n], '+.1%') if n in trend else 'n/a'} |" for n in sorted(r["growth"])]
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
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth | trend over the run (goal < 5%) |",
        "|---|---|---|---|---|", *rows,
        "\nRSS is compared at the least it reached in the 5 s after each episode was finished, the first "
        "after warm-up against the last, and "
        "by the straight line through every episode's end after warm-up (the trend; the whole curve: "
        f"`{PLOT}`); a process's \"(private)\" row is its RSS less shared and file pages (where a leak "
        "would grow; DDS's shared-memory segments are resident in RSS only as far as bursts have touched "
        f"them, up to their configured size). The recorder's write backlog peaked at {r['backlog_max']} "
        f"messages ({r['backlog_mib_max']:.0f} MiB); camera frames it shed past its bound: "
        f"{', '.join(f'{n} {k}' for n, k in r['shed'].items()) or 'none'}.\n",
        "The recorder's glibc heap at each episode's end (MiB; `mallinfo2`: blocks in use, and freed "
        "blocks the heap holds for reuse, which is fragmentation; the \"heap in use\" row above is the "
        "first, where a leak in the recorder would grow: its RSS also holds those freed pages that the "
        "streaming camera frames have touched again since the episode's trim): " + (", ".join(
            f"{h['in_use']:.0f}/{h['free_held']:.0f}" for h in r["recorder_heap"] if h) or "not reported") + ".\n",
        "Messages a subscriber in the same run received (with the recorder's QoS) inside the recorded "
        "episodes, against what the recorder stored:\n",
        "| stream | stored by the recorder | received by the subscriber, not stored (goal 0) "
        "| stored, not received by the subscriber |", "|---|---|---|---|",
        *[f"| {n} | {c['recorded']} | **{c['lost']}** | {c['client_missed']} |" for n, c in r["compared"].items()],
        *[f"\n{n}: nothing stored in {c['empty_episodes']} episode(s) (cut short as the run ended)"
          for n, c in r["compared"].items() if c.get("empty_episodes")],
        "\nWhere the losses fell: " + ("; ".join(
            f"{n}: " + ", ".join(f"{k} in {d:.1f} s at minute {m:.1f}" for m, d, k in runs)
            for n, runs in r["losses"].items()) or "nowhere") + " (red in the plot's backlog panel).\n",
        f"Gaps the recorder found in its own streams (messages missing by their stream's rate; for "
        f"headerless streams by receive time): {gaps}.\n",
        f"Commands the mux sent the arm (`/arm/command/twist`, by their stamps on the graph's clock): period "
        f"p50 {c.get('p50_ms', float('nan')):.1f} ms, **p99 {c.get('p99_ms', float('nan')):.1f} ms**, "
        f"max {c.get('max_ms', float('nan')):.1f} ms over {c.get('n', 0)} commands.",
    ]

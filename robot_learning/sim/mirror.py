"""The MuJoCo mirror of a recorded episode: the sim started where the robot started, sent the
commands the robot was sent, at their stamps, and compared with what the robot did.

Where the two part says what the sim gets wrong about the robot (friction, masses, servo gains,
latency), which is what system identification then fits. The report gives, per joint, the RMS
tracking difference; the TCP's position difference over time and the first time it exceeds a
threshold; the moving objects' position differences (a cube that slips from a grasp in one
and not the other: mass and friction); and the wrist wrench and tactile differences where
both were recorded.

The commands replayed are the episode's TCP twists and gripper commands (``cmd_twist``,
``cmd_gripper``: what the command mux sent the arm), each held until the next, and dropped
after the controller's command timeout as the arm's watchdog would; a parameter file's
``latency.action_s`` delays them. The start state is the first recorded joint state and gripper
opening; objects with recorded poses start there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_learning.transforms import xyzw_to_wxyz

OBJECT_STREAMS = ("cube_pose", "target_pose", "peg_pose", "hole_pose")


@dataclass
class Divergence:
    times: np.ndarray                       # seconds from the episode's start, where both are compared
    joint_names: list[str]
    joint_rms: np.ndarray                   # rad, per joint
    tcp_error: np.ndarray                   # m, at each time
    threshold: float
    first_parting_s: float | None           # first time the TCP error exceeds ``threshold``
    wrench_rms: float | None = None         # N (force part), where the episode has a wrench stream
    tactile_rms: float | None = None        # N per taxel
    object_error: dict[str, np.ndarray] = field(default_factory=dict)  # m, per moving object with a recorded pose
    series: dict[str, np.ndarray] = field(default_factory=dict)  # for the plots: real and sim q, tcp

    def summary(self) -> dict:
        return {"duration_s": round(float(self.times[-1] - self.times[0]), 3) if len(self.times) else 0.0,
                "joint_rms_rad": {n: round(float(v), 5) for n, v in zip(self.joint_names, self.joint_rms)},
                "tcp_error_m": {"median": round(float(np.median(self.tcp_error)), 5),
                                "max": round(float(self.tcp_error.max()), 5)},
                "threshold_m": self.threshold, "first_parting_s": self.first_parting_s,
                "object_error_m": {k: {"median": round(float(np.median(v)), 5), "max": round(float(v.max()), 5)}
                                   for k, v in self.object_error.items()},
                "wrench_force_rms_n": self.wrench_rms, "tactile_rms_n": self.tactile_rms}


def _interp(t: np.ndarray, tp: np.ndarray, v: np.ndarray) -> np.ndarray:
    v = v.reshape(len(tp), -1)
    return np.stack([np.interp(t, tp, v[:, k]) for k in range(v.shape[1])], axis=1)


def replay(episode, task: str = "", randomization: str | dict | None = None, threshold: float = 0.01,
           seed: int | None = None) -> Divergence:
    """Replay ``episode`` (a ``data.store`` episode recorded from the workcell's topics) in a
    fresh sim of ``task`` (the episode's own by default) and compare."""
    import mujoco  # here, not at the top: the CLI imports this module's parser on machines without MuJoCo

    from robot_learning.sim.workcell import Workcell

    task = task or episode.meta.get("task") or "pick_place"
    js = episode.stream("joint_states")
    ok = np.isfinite(js["t"])
    t_js, q_js = js["t"][ok], js["position"][ok]
    if len(t_js) < 2:
        raise ValueError(f"episode {episode.index} has fewer than two joint states: nothing to replay")
    if why := late_commands(episode):
        raise ValueError(why)
    cell = Workcell(task, randomization=randomization)
    try:
        names = list(episode.streams["joint_states"].attrs.get("names") or cell.robot.joint_names)
        missing = [j for j in cell.robot.joint_names if j not in names]
        if missing:
            raise ValueError(f"episode {episode.index}'s joint states lack {', '.join(missing)}: not this robot's")
        cols = [names.index(j) for j in cell.robot.joint_names]
        cell.reset(seed if seed is not None else episode.meta.get("seed"))
        opening = _opening_at(episode, t_js[0], cell)
        cell.backend.set_joints(q_js[0, cols], opening)
        _place_objects(cell, episode, t_js[0])
        mujoco.mj_forward(cell.model, cell.data)
        cell.controller.sync(cell.backend.read_state(), clear_fault=True)
        cmd = _commands(episode)
        timeout = cell.robot.limits.command_timeout
        lag = cell.draw.action_latency  # a parameter file's command latency (sysid fits it)
        t0, sim0 = t_js[0], cell.time
        out_t, out_q, out_tcp, out_w, out_tac = [], [], [], [], []
        moving = [b for b in cell.task.qadr if f"{b}_pose" in episode.streams]
        out_obj: dict[str, list[np.ndarray]] = {b: [] for b in moving}
        while cell.time - sim0 < t_js[-1] - t0:
            now = t0 + cell.time - sim0 - lag
            for name, (tc, vc) in cmd.items():
                i = np.searchsorted(tc, now, side="right") - 1
                if i >= 0 and now - tc[i] <= timeout and cell.controller.fault is None:
                    if name == "cmd_twist":
                        cell.controller.command_twist(vc[i][:6], cell.time)
                    else:
                        cell.controller.command_gripper(float(vc[i][0]), cell.time)
            cell.step_control()
            out_t.append(t0 + cell.time - sim0)
            st = cell.backend.read_state()
            out_q.append(st.q.copy())
            out_tcp.append(cell.tcp_pose()[0])
            out_w.append(cell.wrist_wrench()[:3])
            grids = cell.tactile_grids()
            out_tac.append(np.concatenate([g.ravel() for g in grids.values()]))
            poses = cell.object_poses()
            for b in moving:
                out_obj[b].append(np.array(poses[b][0], float))
    finally:
        cell.close()
    t = np.array(out_t)
    q_sim, tcp_sim = np.array(out_q), np.array(out_tcp)
    q_real = _interp(t, t_js, q_js[:, cols])
    ee = episode.stream("ee_pose")
    ok = np.isfinite(ee["t"])
    tcp_real = _interp(t, ee["t"][ok], ee["data"][ok][:, :3])
    err = np.linalg.norm(tcp_sim - tcp_real, axis=1)
    parted = np.flatnonzero(err > threshold)
    div = Divergence(t - t0, list(cell.robot.joint_names), np.sqrt(np.mean((q_sim - q_real) ** 2, axis=0)), err,
                     threshold, float(t[parted[0]] - t0) if parted.size else None,
                     series={"q_real": q_real, "q_sim": q_sim, "tcp_real": tcp_real, "tcp_sim": tcp_sim})
    for b, sim_pos in out_obj.items():
        o = _finite(episode, f"{b}_pose")
        if len(o["t"]) > 1:
            div.object_error[b] = np.linalg.norm(np.array(sim_pos) - _interp(t, o["t"], o["data"][:, :3]), axis=1)
    if "wrench" in episode.streams:
        w = episode.stream("wrench")
        ok = np.isfinite(w["t"])
        if ok.sum() > 1:
            real_w = _interp(t, w["t"][ok], w["data"][ok][:, :3])
            div.wrench_rms = float(np.sqrt(np.mean((real_w - np.array(out_w)) ** 2)))
    tac = [episode.stream(n) for n in ("tactile_left", "tactile_right") if n in episode.streams]
    if len(tac) == 2 and all(np.isfinite(s["t"]).sum() > 1 for s in tac):
        real = np.concatenate([_interp(t, s["t"][np.isfinite(s["t"])], s["data"][np.isfinite(s["t"])]) for s in tac],
                              axis=1)
        div.tactile_rms = float(np.sqrt(np.mean((real - np.array(out_tac)) ** 2)))
    return div


def late_commands(episode, tolerance_rad: float = 0.005) -> str | None:
    """Why ``episode`` cannot be replayed, if the arm moved before its first recorded command:
    the commands that moved it are not in the recording (a recorder whose command subscription
    matched late, at a graph's start), so a replay would part at once and measure the gap in
    the recording, not the sim."""
    if "cmd_twist" not in episode.streams or "joint_states" not in episode.streams:
        return None
    js, cmd = _finite(episode, "joint_states"), _finite(episode, "cmd_twist")
    if not len(cmd["t"]) or len(js["t"]) < 2:
        return None
    before = js["position"][js["t"] < cmd["t"][0]]
    moved = float(np.abs(before - js["position"][0]).max()) if len(before) else 0.0
    if moved <= tolerance_rad:
        return None
    gap = cmd["t"][0] - js["t"][0]
    return (f"episode {episode.index}: the arm moved {moved:.3f} rad in the {gap:.2f} s before its "
            f"first recorded command, so the recording lacks the commands that moved it (the recorder matched "
            f"the command topic late?); a replay would measure that gap, not the sim: use other episodes")


def _finite(episode, name: str) -> dict[str, np.ndarray]:
    """A stream's samples up to the last flushed one (rows past it hold NaN stamps)."""
    s = episode.stream(name)
    ok = np.isfinite(s["t"])
    return {k: v[ok] for k, v in s.items()}


def _at(samples: dict[str, np.ndarray], t: float) -> int:
    """The newest sample at or before ``t`` (the first one before any)."""
    return max(0, int(np.searchsorted(samples["t"], t, side="right")) - 1)


def _opening_at(episode, t: float, cell) -> float:
    if "gripper_state" not in episode.streams:
        return cell.robot.gripper.max_opening
    g = _finite(episode, "gripper_state")
    return float(np.sum(g["position"][_at(g, t)]))  # two fingers, half the opening each


def _place_objects(cell, episode, t: float) -> None:
    for stream in OBJECT_STREAMS:
        body = stream.removesuffix("_pose")
        if stream not in episode.streams or body not in cell.task.body_ids:
            continue
        s = _finite(episode, stream)
        if not len(s["t"]):
            continue
        pose = s["data"][_at(s, t)]
        pos, quat = pose[:3], xyzw_to_wxyz(pose[3:7])
        if body in cell.task.mocap:
            cell.data.mocap_pos[cell.task.mocap[body]] = pos
            cell.data.mocap_quat[cell.task.mocap[body]] = quat
        elif body in cell.task.qadr:
            a = cell.task.qadr[body]
            cell.data.qpos[a:a + 3], cell.data.qpos[a + 3:a + 7] = pos, quat


def _commands(episode) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in ("cmd_twist", "cmd_gripper"):
        if name in episode.streams:
            s = episode.stream(name)
            ok = np.isfinite(s["t"])
            out[name] = (s["t"][ok], s["data"][ok].reshape(int(ok.sum()), -1))
    if "cmd_twist" not in out:
        raise ValueError(f"episode {episode.index} has no recorded TCP twist commands (cmd_twist) to replay")
    return out


def plot(div: Divergence, path: str | Path) -> Path:
    """Joint positions (robot and sim), the TCP difference over time and where they part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(div.joint_names)
    fig, axes = plt.subplots(n + 1, 1, figsize=(9, 1.4 * (n + 1) + 1), sharex=True)
    for k, ax in enumerate(axes[:n]):
        ax.plot(div.times, div.series["q_real"][:, k], label="recorded", lw=1.2)
        ax.plot(div.times, div.series["q_sim"][:, k], label="sim", lw=1.0, ls="--")
        ax.set_ylabel(f"{div.joint_names[k]}\n(rad)", fontsize=8)
    axes[0].legend(loc="upper right", fontsize=8)
    ax = axes[-1]
    ax.plot(div.times, div.tcp_error * 1000, color="black", label="TCP")
    for b, e in div.object_error.items():
        ax.plot(div.times, e * 1000, lw=1.0, label=b)
    if div.object_error:
        ax.legend(loc="upper left", fontsize=8)
    ax.axhline(div.threshold * 1000, color="red", ls=":", lw=1)
    if div.first_parting_s is not None:
        ax.axvline(div.first_parting_s, color="red", lw=1)
    ax.set_ylabel("position difference\n(mm)", fontsize=8)
    ax.set_xlabel("seconds from the episode's start")
    fig.suptitle("Mirror: the recorded episode replayed in the sim")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def add_parser(sub) -> None:
    import argparse

    mi = sub.add_parser("mirror", help="replay a recorded episode in the sim and report where they part")
    kinds = mi.add_subparsers(dest="kind", required=True)
    rp = kinds.add_parser("replay", help="the episode's commands, from its start state, in the sim",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rp.add_argument("--dataset", required=True)
    rp.add_argument("--episode", type=int, default=-1, help="default: the last")
    rp.add_argument("--task", default="", help="default: the episode's")
    rp.add_argument("--randomization", default="", help="a sim parameter file to replay with (sysid's, say)")
    rp.add_argument("--threshold", type=float, default=0.01, help="TCP difference (m) that counts as parting")
    rp.add_argument("--out", default="", help="folder for report.json and mirror.png (default: runs/mirror-<time>)")


def run(a) -> int:
    import json
    import time

    from robot_learning.data.store import Dataset

    ds = Dataset(a.dataset)
    if not ds.indices:
        print(f"mirror: {a.dataset} has no episodes")
        return 1
    index = ds.indices[-1] if a.episode < 0 else a.episode
    try:
        div = replay(ds.episode(index), a.task, a.randomization or None, a.threshold)
    except (ValueError, KeyError) as e:
        print(f"mirror: {e}")
        return 1
    out = Path(a.out or f"runs/mirror-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": str(a.dataset), "episode": index, **div.summary()}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    plot(div, out / "mirror.png")
    s = summary
    parting = f"part at {s['first_parting_s']:.2f} s" if s["first_parting_s"] is not None else "never part"
    print(f"mirror: episode {index}: TCP difference median {s['tcp_error_m']['median'] * 1000:.1f} mm, max "
          f"{s['tcp_error_m']['max'] * 1000:.1f} mm; they {parting} (threshold {a.threshold * 1000:g} mm); "
          f"wrote {out / 'report.json'} and {out / 'mirror.png'}")
    return 0


@dataclass
class Contact:
    position: np.ndarray   # world frame, m
    force: np.ndarray      # on ``body2`` by ``body1``, world frame, N
    body1: str
    body2: str


class Follower:
    """The sim posed like a live robot (kinematically: the measured joints set, no physics), so
    its cameras and contacts can be rendered beside the robot's own streams."""

    def __init__(self, task: str = "pick_place", randomization: str | dict | None = None):
        from robot_learning.sim.workcell import Workcell

        self.cell = Workcell(task, randomization=randomization)
        self.cell.reset(0)
        self.names = list(self.cell.robot.joint_names)
        self.updates = 0

    def follow(self, names: list[str], positions, opening: float | None = None,
               objects: dict[str, np.ndarray] | None = None) -> list[str]:
        """Set the joints named in ``names`` (a JointState's), the gripper opening and object
        poses (x y z qx qy qz qw); returns the robot's joints that were missing."""
        index = {n: i for i, n in enumerate(names)}
        missing = [j for j in self.names if j not in index]
        if missing:
            return missing
        c = self.cell
        q = np.array([positions[index[j]] for j in self.names], float)
        c.data.qpos[c.backend.qadr] = q
        c.data.qvel[c.backend.dadr] = 0.0
        if opening is not None:
            c.data.qpos[c.backend.finger_adr:c.backend.finger_adr + 2] = opening / 2.0
        for body, pose in (objects or {}).items():
            if body in c.task.mocap:
                c.data.mocap_pos[c.task.mocap[body]], c.data.mocap_quat[c.task.mocap[body]] = (
                    pose[:3], xyzw_to_wxyz(pose[3:7]))
            elif body in c.task.qadr:
                a = c.task.qadr[body]
                c.data.qpos[a:a + 3], c.data.qpos[a + 3:a + 7] = pose[:3], xyzw_to_wxyz(pose[3:7])
        import mujoco

        mujoco.mj_forward(c.model, c.data)
        self.updates += 1
        return []

    def tcp_position(self) -> np.ndarray:
        return self.cell.tcp_pose()[0]

    def contacts(self) -> list[Contact]:
        """Every contact of the posed sim: where, between which bodies, and the force the first
        body's geom exerts on the second's (world frame, N), from MuJoCo's constraint solver."""
        import mujoco

        m, d = self.cell.model, self.cell.data
        out, f6 = [], np.zeros(6)
        for i in range(d.ncon):
            c = d.contact[i]
            mujoco.mj_contactForce(m, d, i, f6)
            force = c.frame.reshape(3, 3).T @ f6[:3]  # contact frame (normal first) to world
            out.append(Contact(c.pos.copy(), force, *(m.body(m.geom_bodyid[g]).name for g in (c.geom1, c.geom2))))
        return out

    def close(self) -> None:
        self.cell.close()

"""Command-to-motion latency: how long after a velocity command is stamped the arm moves like
it, found by cross-correlating the commanded velocity with the measured one.

Both signals are put on one fine time grid: the command as it was held (each command until the
next), the measurement's velocity from its positions. The lag that best lines the measured
velocity up with the commanded one, over a window of candidate lags, is the latency; a parabola
through the peak and its neighbours refines it below the grid's step. What it measures is
everything between the command's stamp and the motion: transport, the controller's filter and
the servo's tracking, which is what a policy acting on the arm has to live with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LatencyResult:
    latency_s: float
    correlation: float   # normalized, at the peak: near 1 when the motion follows the commands
    samples: int


def held(t_cmd: np.ndarray, v_cmd: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each command held from its stamp until the next (what a controller executes)."""
    i = np.searchsorted(t_cmd, grid, side="right") - 1
    out = v_cmd[np.clip(i, 0, len(v_cmd) - 1)].astype(float)
    out[i < 0] = 0.0
    return out


def command_to_motion_latency(t_cmd: np.ndarray, v_cmd: np.ndarray, t_meas: np.ndarray, x_meas: np.ndarray,
                              max_lag: float = 0.5, step: float = 0.001) -> LatencyResult:
    """Latency of the motion ``x_meas`` (positions at ``t_meas``, [N] or [N, D]) behind the
    commanded velocities ``v_cmd`` (stamped ``t_cmd``, same width). Commands should vary (a
    person's teleoperation, or a random sequence): a constant command has no timing to find."""
    t_cmd, t_meas = np.asarray(t_cmd, float), np.asarray(t_meas, float)
    v_cmd = np.asarray(v_cmd, float).reshape(len(t_cmd), -1)
    x = np.asarray(x_meas, float).reshape(len(t_meas), -1)
    if len(t_cmd) < 10 or len(t_meas) < 10:
        raise ValueError("too few commands or measurements to correlate (10 of each at least)")
    # measured velocity at the midpoints of the measurements, then on the grid
    tm = 0.5 * (t_meas[1:] + t_meas[:-1])
    vm = np.diff(x, axis=0) / np.diff(t_meas)[:, None]
    lo, hi = max(t_cmd[0], tm[0]), min(t_cmd[-1], tm[-1]) - max_lag
    if hi - lo < 10 * max_lag:
        raise ValueError(f"the logs overlap for {max(hi - lo, 0):.2f} s: record at least {10 * max_lag:.1f} s "
                         "of varied commands")
    grid = np.arange(lo, hi, step)
    c = held(t_cmd, v_cmd, grid)
    c -= c.mean(0)
    lags = np.arange(0.0, max_lag, step)
    scores = []
    for lag in lags:
        m = np.stack([np.interp(grid + lag, tm, vm[:, k]) for k in range(vm.shape[1])], axis=1)
        m -= m.mean(0)
        scores.append(float(np.sum(c * m) / (np.linalg.norm(c) * np.linalg.norm(m) + 1e-12)))
    scores = np.array(scores)
    k = int(np.argmax(scores))
    lag = lags[k]
    if 0 < k < len(lags) - 1:  # parabola through the peak and its neighbours
        a, b, d = scores[k - 1], scores[k], scores[k + 1]
        denom = a - 2 * b + d
        if denom < 0:
            lag += 0.5 * (a - d) / denom * step
    return LatencyResult(float(lag), float(scores[k]), len(grid))


def from_episode(episode) -> LatencyResult:
    """The latency in a recorded episode: its TCP twist commands (``cmd_twist``) against the TCP
    positions the arm reported (``ee_pose``), both by their stamps. A teleoperated episode
    (a person's varied motion) is what this needs."""
    cmd, pose = episode.streams["cmd_twist"], episode.streams["ee_pose"]
    t_cmd, t_pose = cmd["t"][:], pose["t"][:]
    ok_c, ok_p = np.isfinite(t_cmd), np.isfinite(t_pose)
    return command_to_motion_latency(t_cmd[ok_c], cmd["data"][:][ok_c, :3], t_pose[ok_p], pose["data"][:][ok_p, :3])


def sim_probe(inject_s: float = 0.0, seconds: float = 12.0, seed: int = 0) -> LatencyResult:
    """The sim arm driven by a varied x-velocity command at 50 Hz for ``seconds`` (``inject_s``
    of action latency injected), its latency measured as on a robot."""
    from robot_learning.sim.env import WorkcellEnv

    rnd = {"latency": {"action_s": [inject_s, inject_s]}} if inject_s > 0 else None
    env = WorkcellEnv("pick_place", control_hz=50.0, randomization=rnd)
    try:
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        x0 = env.cell.tcp_pose()[0][0]
        t_cmd, v_cmd, t_meas, x_meas = [], [], [env.cell.time], [x0]
        v = 0.0
        for _ in range(int(seconds * 50)):
            # a random walk of the velocity, pulled back toward where it started
            v = float(np.clip(0.9 * v + rng.normal(0.0, 0.02) - 0.3 * (x_meas[-1] - x0), -0.08, 0.08))
            t_cmd.append(env.cell.time)
            v_cmd.append(v)
            env.step(np.array([v, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
            t_meas.append(env.cell.time)
            x_meas.append(env.cell.tcp_pose()[0][0])
        return command_to_motion_latency(np.array(t_cmd), np.array(v_cmd), np.array(t_meas), np.array(x_meas),
                                         max_lag=0.3)
    finally:
        env.close()


LATENCY_FILE = "calibration/latency.yaml"


def _latency_file(path: str | Path) -> dict:
    from robot_learning.config import load_yaml
    from robot_learning.paths import resolve

    f = resolve(path)
    return {k: v for k, v in load_yaml(f).items() if k != "_source"} if Path(f).is_file() else {}


def measured_latency(path: str | Path = LATENCY_FILE) -> float:
    """The command-to-motion latency ``calibrate latency`` wrote, or 0 where it has not been measured."""
    return float(_latency_file(path).get("command_to_motion_s", 0.0))


def measured_camera_latency(camera: str, path: str | Path = LATENCY_FILE) -> float:
    """A camera's capture-to-stamp latency ``calibrate camera-latency`` wrote, or 0 where it has
    not been measured (its driver's stamps are then taken as capture times)."""
    cams = _latency_file(path).get("cameras") or {}
    return float((cams.get(camera) or {}).get("capture_to_stamp_s", 0.0))


def update_latency_file(path: str | Path, values: dict, note: str) -> Path:
    """Merge ``values`` into the latency file (the arm's and each camera's entries are measured
    at different times: writing one keeps the others), with ``note`` as its first line."""
    import yaml

    from robot_learning.paths import resolve

    out = Path(resolve(path))
    old = _latency_file(out)
    cams = {**(old.get("cameras") or {}), **(values.get("cameras") or {})}
    merged = {**old, **values, **({"cameras": cams} if cams else {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(f"# {note}\n" + yaml.safe_dump(merged, sort_keys=False))
    tmp.replace(out)
    return out

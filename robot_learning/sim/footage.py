"""Camera footage of the workcell along a scripted pick: real renders (so they compress like
the sim's cameras), for loads that stand in for a robot's sensors (the recorder benchmark's
publisher)."""

from __future__ import annotations

import numpy as np


def render_frames(n: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Front RGB, wrist RGB and front depth along a scripted pick, from the real workcell."""
    from robot_learning.sim.env import WorkcellEnv, expert_obs_from_env
    from robot_learning.sim.expert import ScriptedExpert

    env = WorkcellEnv("pick_place")
    env.reset(seed=0)
    ex = ScriptedExpert("pick_place")
    front, wrist, depth = [], [], []
    for _ in range(n):
        for _ in range(3):
            twist, grip = ex.act(expert_obs_from_env(env, env.cell.time))
            env.step(np.r_[twist, grip])
        cell = env.cell
        f = cell.render("front", depth=True)
        front.append(f.rgb)
        depth.append(f.depth_mm)
        wrist.append(cell.render("wrist").rgb)
    env.close()
    return front, wrist, depth

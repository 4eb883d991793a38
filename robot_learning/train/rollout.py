"""Rollouts of a policy in the gymnasium workcell env, through the policy server's own engine.

Observations are the sim's topic values keyed like the recorded streams
(``sim.topics``), fed to ``PolicyServerCore`` with the env's time; the action due at each
env step is what the server's timer would send. So env success rates measure the policy
as it is deployed (same alignment, chunking and blending), minus the graph's latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from robot_learning.data.schema import Recipe
from robot_learning.runtime.policy import Policy
from robot_learning.runtime.server import PolicyServerCore, ServerConfig
from robot_learning.sim.topics import topic_sample


@dataclass
class RolloutResult:
    seed: int
    success: bool
    steps: int
    frames: list[np.ndarray]


def rollout(policy: Policy, recipe: Recipe, task: str, seeds: list[int], blend: str = "replace",
            replan_every: int = 8, record_video: int = 0, progress: bool = False) -> list[RolloutResult]:
    """One episode per seed; the first ``record_video`` episodes keep front-camera frames."""
    from robot_learning.sim.env import WorkcellEnv

    s = policy.spec
    streams = {name: recipe.streams[name].topic for name in
               sorted({k.split(".", 1)[0] for k in s.obs_keys} | set(s.image_keys))}
    env = WorkcellEnv(task, control_hz=1.0 / s.dt)
    clock = {"t": 0.0}
    core = PolicyServerCore(policy, ServerConfig(control_hz=1.0 / s.dt, blend=blend, replan_every=replan_every,
                                                 max_obs_age=np.inf), lambda: clock["t"], log=lambda m: None)
    results = []
    try:
        for n, seed in enumerate(tqdm(seeds, desc="rollouts", unit="ep", disable=not progress, leave=False)):
            env.reset(seed=seed)
            core.resume()
            frames, gripper, success, step = [], 0.0, False, 0
            for step in range(1, env.cell.task.max_steps + 1):
                t = clock["t"] = step * s.dt
                for name, topic in streams.items():
                    core.add_sample(name, t, topic_sample(env.cell, topic))
                core.infer_once()
                a = core.tick(t)
                if a is None:  # hold: stop moving, keep the gripper where it was told to be
                    a = np.r_[np.zeros(6), gripper]
                gripper = float(a[6])
                if n < record_video:
                    frames.append(env.render())
                _, _, success, truncated, _ = env.step(np.clip(a, env.action_space.low, env.action_space.high))
                if success or truncated:
                    break
            results.append(RolloutResult(seed, bool(success), step, frames))
    finally:
        env.close()
    return results

"""The workcell as DSRL's agent sees it: one step is one chunk of the frozen base, and the
action is the noise the base denoises that chunk from.

It has the interface ``train sac`` drives (``reset``, ``step``, ``spec``, ``low``/``high``,
``dt``, ``render``), so DSRL gets SAC's whole loop (demonstration-free RLPD updates,
evaluation, checkpoints with resume, TensorBoard and curves) unchanged. The reward of a step
is the sum of the env's rewards over the chunk; the episode ends where the env's does, even in
the middle of a chunk.
"""

from __future__ import annotations

import numpy as np

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.rl.base_envs import BaseDrivenEnvs
from robot_learning.rl.replay import ObsSpec


class DsrlAdapter:
    def __init__(self, base_path: str, task: str, keys: list[str], max_steps: int = 0, randomization: str = "",
                 noise_bound: float = 1.5):
        from robot_learning.policies.dsrl import DETERMINISTIC
        from robot_learning.policies.registry import load_policy

        try:
            base = load_policy(base_path)
        except PolicyError as e:
            raise SystemExit(f"train dsrl: --base: {e}") from None
        if not hasattr(base, "chunks"):
            raise SystemExit(f"train dsrl: --base {base_path} is not a diffusion policy")
        if base.sampler not in DETERMINISTIC:
            raise SystemExit(f"train dsrl: the base samples with '{base.sampler}'; DSRL needs "
                             f"{' or '.join(DETERMINISTIC)} (deterministic from the noise)")
        self.base = base
        self.envs = BaseDrivenEnvs(base, task, 1, keys, randomization, max_steps)
        self.env = self.envs.vec.envs[0].unwrapped      # the WorkcellEnv (renders, the expert reads it)
        self.keys, self.task = list(keys), task
        cfg = base.policy.cfg
        self.shape = (cfg.pred_horizon, cfg.action_dim)
        n = int(np.prod(self.shape))
        self.low, self.high = [-float(noise_bound)] * n, [float(noise_bound)] * n
        self.dt = base.spec.dt * base.horizon            # one agent step per chunk
        self.return_range = self.envs.return_range  # the critic's targets are clipped to it
        o, _ = self.reset(0)
        self.spec = ObsSpec(tuple(keys), tuple(int(np.size(o[k])) for k in keys))

    def _mine(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: obs[k][0] for k in self.keys}

    def reset(self, seed: int):
        return self._mine(self.envs.reset(seed)), {}

    def executed(self, a: np.ndarray) -> np.ndarray:
        return a  # the agent's noise, as the base policy will take it

    def step(self, a):
        e = self.envs
        e.replan(np.array([0]), np.asarray(a, np.float32).reshape(1, *self.shape))
        total = 0.0
        for _ in range(e.horizon):
            st = e.step(e.chunk[:, e.k[0]])
            total += float(st.reward[0])
            if st.terminated[0] or st.truncated[0]:
                return (self._mine(st.final), total, bool(st.terminated[0]), bool(st.truncated[0]),
                        {"success": bool(st.success[0])})
        return self._mine(st.obs), total, False, False, {"success": False}

    def render(self):
        return self.env.render()

    def close(self):
        self.envs.close()

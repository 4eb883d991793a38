"""The workcell as DSRL's agent sees it: one step is one chunk of the frozen base, and the
action is the noise the base denoises that chunk from.

It has the interface ``train sac`` drives (``reset``, ``step``, ``spec``, ``low``/``high``,
``dt``, ``render``), so DSRL gets SAC's whole loop (demonstration-free RLPD updates,
evaluation, checkpoints with resume, TensorBoard and curves) unchanged. The reward of a step
is the sum of the env's rewards over the chunk; the episode ends where the env's does, even in
the middle of a chunk. With ``shaping`` it gains shaping x (gamma x progress after the chunk -
progress before it), ``Task.progress`` being minus the distances still to cover: potential-based
at the agent's own step, so the best steering is unchanged and the critic's targets stay within
a known range (the success's [0, 1] widened by shaping x ``PROGRESS_BOUND`` each way).
"""

from __future__ import annotations

import numpy as np

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.rl.base_envs import BaseDrivenEnvs, observed_keys, shaped_return_range, shaping_reward
from robot_learning.rl.replay import ObsSpec


class DsrlAdapter:
    def __init__(self, base_path: str, task: str, keys: list[str], max_steps: int = 0, randomization: str = "",
                 noise_bound: float = 1.5, shaping: float = 0.0, gamma: float = 0.99):
        from robot_learning.policies.dsrl import DETERMINISTIC
        from robot_learning.policies.registry import load_policy
        from robot_learning.sim.tasks import make_task

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
        self.task, self._task, self.shaping, self.gamma = task, make_task(task), float(shaping), float(gamma)
        env_keys = observed_keys(self._task, keys, self.shaping, "train dsrl")
        self.envs = BaseDrivenEnvs(base, task, 1, env_keys, randomization, max_steps)
        self.env = self.envs.vec.envs[0].unwrapped      # the WorkcellEnv (renders, the expert reads it)
        self.keys = list(keys)
        cfg = base.policy.cfg
        self.shape = (cfg.pred_horizon, cfg.action_dim)
        n = int(np.prod(self.shape))
        self.low, self.high = [-float(noise_bound)] * n, [float(noise_bound)] * n
        self.dt = base.spec.dt * base.horizon            # one agent step per chunk
        self.return_range = shaped_return_range(self.shaping)  # the critic's targets are clipped to it
        o, _ = self.reset(0)
        self.spec = ObsSpec(tuple(keys), tuple(int(np.size(o[k])) for k in keys))

    def _mine(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: obs[k][0] for k in self.keys}

    def reset(self, seed: int):
        self._obs = self.envs.reset(seed)
        return self._mine(self._obs), {}

    def _shaped(self, after: dict[str, np.ndarray]) -> float:
        return float(shaping_reward(self._task, self._obs, after, self.shaping, self.gamma)[0])

    def executed(self, a: np.ndarray) -> np.ndarray:
        return a  # the agent's noise, as the base policy will take it

    def step(self, a):
        e = self.envs
        e.replan(np.array([0]), np.asarray(a, np.float32).reshape(1, *self.shape))
        total = 0.0
        for _ in range(e.horizon):
            st = e.step(e.chunk[:, e.k[0]])
            total += float(st.reward[0])
            if st.terminated[0] or st.truncated[0]:  # the ended episode's own last state (st.obs: the next one's)
                total += self._shaped(st.final)
                self._obs = st.obs
                return (self._mine(st.final), total, bool(st.terminated[0]), bool(st.truncated[0]),
                        {"success": bool(st.success[0])})
        total += self._shaped(st.obs)
        self._obs = st.obs
        return self._mine(st.obs), total, False, False, {"success": False}

    def render(self):
        return self.env.render()

    def close(self):
        self.envs.close()

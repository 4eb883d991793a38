"""The workcell as the off-policy residual agent sees it (``train residual-sac``): at each step
the frozen base's action due now, which the agent corrects by at most ``bound``.

The agent's action is ``u`` in [-1, 1] per action dimension; the arm gets ``base + bound * u``
(``bound``: ``scale`` of each action's half-range in the base's data, as ``train residual``).
Its observation is the task's state keys plus ``base_action``, the base's action due now scaled
to [-1, 1] by that same range. It has the interface ``train sac`` drives (``reset``, ``step``,
``spec``, ``low``/``high``, ``dt``, ``render``, ``executed``), so the residual gets SAC's whole
loop (RLPD updates, evaluation, checkpoints with resume, TensorBoard, curves) unchanged.
"""

from __future__ import annotations

import numpy as np

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.rl.base_envs import BaseDrivenEnvs
from robot_learning.rl.replay import ObsSpec

BASE_ACTION = "base_action"


def base_action_range(base) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-range of the base's actions in its data: the agent sees the base's action
    in these units, and its bound is a share of the half-range."""
    lo, hi = (np.asarray(v, np.float64) for v in base.policy.action_bounds())
    return (hi + lo) / 2, np.maximum((hi - lo) / 2, 1e-3)


class ResidualAdapter:
    def __init__(self, base_path: str, task: str, keys: list[str], max_steps: int = 0, randomization: str = "",
                 scale: float = 0.1, noise_scale: float = 1.0):
        from robot_learning.policies.registry import load_policy

        try:
            base = load_policy(base_path, noise_scale=float(noise_scale))
        except PolicyError as e:
            raise SystemExit(f"train residual-sac: --base: {e}") from None
        if not hasattr(base, "chunks"):
            raise SystemExit(f"train residual-sac: --base {base_path} is not a diffusion policy")
        self.base = base
        self.envs = BaseDrivenEnvs(base, task, 1, keys, randomization, max_steps)
        self.env = self.envs.vec.envs[0].unwrapped      # the WorkcellEnv (renders)
        self.keys, self.task = list(keys), task
        self.mid, self.half = base_action_range(base)
        self.bound = float(scale) * self.half
        n = base.spec.action_dim
        self.low, self.high = [-1.0] * n, [1.0] * n
        self.dt = base.spec.dt
        o, _ = self.reset(0)
        self.spec = ObsSpec((*self.keys, BASE_ACTION), tuple(int(np.size(o[k])) for k in (*self.keys, BASE_ACTION)))

    def _mine(self, obs: dict[str, np.ndarray], base_now: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: np.asarray(obs[k][0]) for k in self.keys}
        out[BASE_ACTION] = ((base_now - self.mid) / self.half).astype(np.float32)
        return out

    def reset(self, seed: int):
        obs = self.envs.reset(seed)
        self.base_now = self.envs.base_actions()[0]
        return self._mine(obs, self.base_now), {}

    def executed(self, a: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(a, np.float32), -1.0, 1.0)  # the agent's u; the arm gets base + bound * u

    def step(self, a):
        e = self.envs
        k = int(e.k[0])
        st = e.step((self.base_now + self.bound * self.executed(a))[None])
        if st.terminated[0] or st.truncated[0]:
            # the base's next action in the chunk that was running (the env has moved on to the
            # next episode; at the chunk's end its last action stands in for the next chunk's
            # first): only a bootstrap past a time limit reads it
            nxt = e.chunk[0, min(k + 1, e.horizon - 1)]
            info = {"success": bool(st.success[0])}
            return self._mine(st.final, nxt), float(st.reward[0]), bool(st.terminated[0]), bool(st.truncated[0]), info
        self.base_now = e.base_actions()[0]
        return self._mine(st.obs, self.base_now), float(st.reward[0]), False, False, {"success": False}

    def render(self):
        return self.env.render()

    def close(self):
        self.envs.close()

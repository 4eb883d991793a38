"""Workcell envs driven by a frozen diffusion policy, for RL on top of it (residual, DSRL).

The base runs as it does in the policy server: from a window of its observations it
predicts a chunk and the ``horizon`` actions after the newest observation are executed one
per env step, then it replans. ``n`` envs step together in a gymnasium ``SyncVectorEnv``
(same-step autoreset); at each step the envs whose chunk has run out are inferred together,
one batched call for all of them (on a CPU, 16 windows cost little more than one).
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from robot_learning.runtime.actions import TCP_POSE_KEY, pose_command
from robot_learning.sim.recipe_env import RecipeKeyEnv

# The workcell's reward is 1 at the success that ends an episode and 0 at every other step, so
# every return lies in [0, 1]. An agent learning on a base clips its critic's targets there:
# without it a residual SAC's critic rose to a mean Q of 7-20 on the weak pick_place base, and
# an actor chasing those values moved every action by its whole bound (64% -> 6-16%).
RETURN_RANGE = [0.0, 1.0]


PROGRESS_BOUND = 2.0  # m: |progress| above this would take the hand or the object off the workcell


def shaped_return_range(shaping: float) -> list[float]:
    """The critic's targets' range for a learner whose reward gains potential-based shaping:
    the success's [0, 1] widened by ``shaping`` x ``PROGRESS_BOUND`` each way."""
    lo, hi = RETURN_RANGE
    return [lo - shaping * PROGRESS_BOUND, hi + shaping * PROGRESS_BOUND]


def observed_keys(task, keys: list[str], shaping: float, who: str) -> list[str]:
    """What envs driven for a learner observe: the learner's ``keys``, and with ``shaping`` the
    poses ``task.progress`` reads (the learner still sees only its own keys)."""
    if shaping and not task.progress_keys:
        raise SystemExit(f"{who}: --shaping: task {task.name} has no progress measure to shape with")
    return list(dict.fromkeys([*keys, *(task.progress_keys if shaping else ())]))


def shaping_reward(task, before: dict, after: dict, shaping: float, gamma: float) -> np.ndarray:
    """Potential-based shaping, per env: shaping x (gamma x progress ``after`` - progress ``before``)
    (0 without shaping); the best policy is the one the success reward alone defines."""
    if not shaping:
        return np.zeros(len(next(iter(before.values()))))
    return shaping * (gamma * task.progress(after) - task.progress(before))


def window_input(keys: list[str], windows: list[deque]) -> dict[str, np.ndarray]:
    """A base's input from windows of observations (each a deque of dicts by key):
    ``obs/<key>`` [B, obs_horizon, ...], as the policy server's buffers give it."""
    return {f"obs/{k}": np.stack([np.stack([w[k] for w in win]) for win in windows]).astype(np.float32)
            for k in keys}


@dataclass
class Step:
    obs: dict[str, np.ndarray]       # [n, ...] per key; a finished env's is its next episode's first
    final: dict[str, np.ndarray]     # the same, but a finished env's last observation
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray              # the episode ended in success (finished envs only)


class BaseDrivenEnvs:
    def __init__(self, base, task: str, n: int, agent_keys: list[str], randomization: str = "",
                 max_steps: int = 0):
        spec = base.spec
        if spec.image_keys:
            raise SystemExit(f"the base policy observes cameras ({', '.join(spec.image_keys)}); RL on top of a base "
                             "runs in the env with low-dimensional bases only so far (train one with --images '')")
        self.base, self.n = base, n
        self.keys = list(dict.fromkeys([*spec.obs_keys, *agent_keys]))   # a pose policy observes the TCP
        make = functools.partial(RecipeKeyEnv, task, self.keys, 1.0 / spec.dt, max_steps, randomization)
        self.vec = gym.vector.SyncVectorEnv([make for _ in range(n)],
                                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.horizon = base.horizon
        self.windows = [deque(maxlen=spec.obs_horizon) for _ in range(n)]
        self.chunk = np.zeros((n, self.horizon, spec.action_dim))
        self.k = np.full(n, self.horizon)          # the chunk's next action; horizon: a new chunk is due
        self.low = self.vec.single_action_space.low.astype(np.float64)
        self.high = self.vec.single_action_space.high.astype(np.float64)
        self.dt = spec.dt
        self.return_range = list(RETURN_RANGE)

    def _restart(self, i: int, obs: dict[str, np.ndarray]) -> None:
        """A new episode in env ``i``: its window is the first observation repeated (as the
        server's buffers are before a second one arrives) and a chunk is due."""
        first = {k: np.array(obs[k][i]) for k in self.base.spec.obs_keys}
        self.windows[i].clear()
        self.windows[i].extend([first] * self.windows[i].maxlen)
        self.k[i] = self.horizon

    def commands(self, actions: np.ndarray) -> np.ndarray:
        """What the arm gets for the policy's ``actions`` [n, A]: the actions themselves for a
        twist policy; for a ``tcp_pose`` one, the twist that tracks each pose from the TCP
        pose now, as the policy server's tick does."""
        if self.base.spec.action_kind != "tcp_pose":
            return actions
        tcp = self.obs[TCP_POSE_KEY]
        return np.stack([pose_command(a, p, self.dt) for a, p in zip(actions, tcp)])

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        obs, _ = self.vec.reset(seed=[seed + i for i in range(self.n)])
        self.obs = obs
        for i in range(self.n):
            self._restart(i, obs)
        return obs

    def due(self) -> np.ndarray:
        """Which envs need a new chunk before their next step."""
        return self.k >= self.horizon

    def windows_of(self, envs: np.ndarray) -> dict[str, np.ndarray]:
        """The base's input for ``envs``: ``obs/<key>`` [B, obs_horizon, ...]."""
        return window_input(self.base.spec.obs_keys, [self.windows[i] for i in envs])

    def replan(self, envs: np.ndarray, noise: np.ndarray | None = None) -> None:
        """New chunks for ``envs``, in one batched inference (from ``noise`` [B, pred, A] when given)."""
        if len(envs):
            self.chunk[envs] = self.base.executed(self.base.chunks(self.windows_of(envs), noise))
            self.k[envs] = 0

    def base_actions(self) -> np.ndarray:
        """The base's action due now in every env [n, A] (replanning those whose chunk ran out)."""
        self.replan(np.flatnonzero(self.due()))
        return self.chunk[np.arange(self.n), self.k]

    def step(self, actions: np.ndarray) -> Step:
        """Steps every env with ``actions`` [n, A] (clipped to the arm's bounds); an env whose
        episode ended returns its next episode's first observation (same-step autoreset), and
        its last one in ``final``."""
        obs, reward, term, trunc, info = self.vec.step(np.clip(self.commands(actions), self.low, self.high))
        self.obs = obs
        self.k += 1
        final = {k: np.array(v) for k, v in obs.items()}
        success = np.zeros(self.n, bool)
        if "final_info" in info:  # the finished episodes' own info and last observations
            fin, mask = info["final_info"], np.asarray(info["_final_obs"], bool)
            success = np.asarray(fin.get("success", success), bool) & np.asarray(fin.get("_success", success), bool)
            for i in np.flatnonzero(mask):
                for k in final:
                    final[k][i] = info["final_obs"][i][k]
        for i in range(self.n):
            if term[i] or trunc[i]:
                self._restart(i, obs)
            else:
                self.windows[i].append({k: np.array(obs[k][i]) for k in self.base.spec.obs_keys})
        return Step(obs, final, np.asarray(reward, np.float64), np.asarray(term, bool), np.asarray(trunc, bool),
                    success)

    def close(self) -> None:
        self.vec.close()

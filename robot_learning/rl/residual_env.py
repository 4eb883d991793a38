"""The workcell as the off-policy residual agent sees it (``train residual-sac``): at each step
the frozen base's action due now, which the agent corrects by at most ``bound``.

The agent's action is ``u`` in [-1, 1] per action dimension; the arm gets ``base + bound * u``
(``bound``: ``scale`` of each action's half-range in the base's data, as ``train residual``).
Its observation is the task's state keys plus ``base_action``, the base's action due now scaled
to [-1, 1] by that same range. It has the interface ``train sac`` drives (``reset``, ``step``,
``spec``, ``low``/``high``, ``dt``, ``render``, ``executed``), so the residual gets SAC's whole
loop (RLPD updates, evaluation, checkpoints with resume, TensorBoard, curves) unchanged. With
``shaping`` each step's reward gains shaping x (gamma x progress after - progress before), the
task's potential-based shaping (``base_envs.shaping_reward``), as ``train residual`` and
``train dsrl`` have it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from robot_learning.policies.checkpoint import PolicyError
from robot_learning.rl.base_envs import (
    RETURN_RANGE,
    BaseDrivenEnvs,
    observed_keys,
    shaped_return_range,
    shaping_reward,
    window_input,
)
from robot_learning.rl.replay import ObsSpec
from robot_learning.runtime.actions import TCP_POSE_KEY, pose_command
from robot_learning.sim.tasks import SUCCESS_SETTLE_S

BASE_ACTION = "base_action"


def base_action_range(base) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-range of the base's actions in its data: the agent sees the base's action
    in these units, and its bound is a share of the half-range."""
    lo, hi = (np.asarray(v, np.float64) for v in base.policy.action_bounds())
    return (hi + lo) / 2, np.maximum((hi - lo) / 2, 1e-3)


def load_base(base_path: str, noise_scale: float, who: str):
    """The frozen diffusion policy a residual corrects, sampling from ``noise_scale``; a base
    that is missing, damaged or not a diffusion policy ends ``who`` with one sentence."""
    from robot_learning.policies.registry import load_policy

    try:
        base = load_policy(base_path, noise_scale=float(noise_scale))
    except PolicyError as e:
        raise SystemExit(f"{who}: base: {e}") from None
    if not hasattr(base, "chunks"):
        raise SystemExit(f"{who}: the base {base_path} is not a diffusion policy")
    if base.spec.image_keys:
        raise SystemExit(f"{who}: the base observes cameras ({', '.join(base.spec.image_keys)}); a residual "
                         "runs on low-dimensional bases only so far (train one with --images '')")
    return base


def scaled_base_action(base_now: np.ndarray, mid: np.ndarray, half: np.ndarray) -> np.ndarray:
    """The base's action as the agent sees it: in [-1, 1] over the base's data range."""
    return ((base_now - mid) / half).astype(np.float32)


class ResidualAdapter:
    def __init__(self, base_path: str, task: str, keys: list[str], max_steps: int = 0, randomization: str = "",
                 scale: float = 0.1, noise_scale: float = 1.0, shaping: float = 0.0, gamma: float = 0.99):
        self._correcting(load_base(base_path, noise_scale, "train residual-sac"), task, keys, scale, shaping, gamma)
        env_keys = observed_keys(self._task, self.keys, self.shaping, "train residual-sac")
        self.envs = BaseDrivenEnvs(self.base, task, 1, env_keys, randomization, max_steps)
        self.env = self.envs.vec.envs[0].unwrapped      # the WorkcellEnv (renders)
        self._spec_from_first_episode()

    def _correcting(self, base, task: str, keys: list[str], scale: float, shaping: float, gamma: float) -> None:
        """The agent's spaces on ``base``: ``u`` in [-1, 1] per action, ``bound`` the largest
        correction; the critic's targets are clipped to the task's returns (shaped or not)."""
        from robot_learning.sim.tasks import make_task

        self.base, self.task, self.keys = base, task, list(keys)
        self._task, self.shaping, self.gamma = make_task(task), float(shaping), float(gamma)
        self.mid, self.half = base_action_range(base)
        self.bound = float(scale) * self.half
        n = base.spec.action_dim
        self.low, self.high = [-1.0] * n, [1.0] * n
        self.dt = base.spec.dt
        self.return_range = shaped_return_range(self.shaping)

    def _shaped(self, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> float:
        return float(shaping_reward(self._task, before, after, self.shaping, self.gamma)[0])

    def _spec_from_first_episode(self) -> None:
        o, _ = self.reset(0)
        self.spec = ObsSpec((*self.keys, BASE_ACTION), tuple(int(np.size(o[k])) for k in (*self.keys, BASE_ACTION)))

    def _mine(self, obs: dict[str, np.ndarray], base_now: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: np.asarray(obs[k][0]) for k in self.keys}
        out[BASE_ACTION] = scaled_base_action(base_now, self.mid, self.half)
        return out

    def reset(self, seed: int):
        self._obs = self.envs.reset(seed)
        self.base_now = self.envs.base_actions()[0]
        return self._mine(self._obs, self.base_now), {}

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
            r = float(st.reward[0]) + self._shaped(self._obs, st.final)
            self._obs = st.obs
            return self._mine(st.final, nxt), r, bool(st.terminated[0]), bool(st.truncated[0]), info
        self.base_now = e.base_actions()[0]
        r = float(st.reward[0]) + self._shaped(self._obs, st.obs)
        self._obs = st.obs
        return self._mine(st.obs, self.base_now), r, False, False, {"success": False}

    def render(self):
        return self.env.render()

    def close(self):
        self.envs.close()


class HeldCorrection:
    """The residual's correction while it trains through the server's engine: the agent's ``u``
    for this step, held over the step's ticks (a ``ResidualRunner``'s ``net``), and what the
    runner showed it last (the state and the base's action due), the agent's next observation."""

    def __init__(self, bound: np.ndarray):
        self.bound = bound
        self.u = np.zeros_like(bound)
        self.seen: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, state: np.ndarray, base_action: np.ndarray) -> np.ndarray:
        self.seen = (np.array(state), np.array(base_action))
        return self.bound * self.u


class ServedResidualAdapter(ResidualAdapter):
    """``train residual-sac --served``: the residual learns on the path it deploys on. The
    policy server's engine (``train.rollout.ServedSim``) runs the frozen base as it serves it
    (chunks blended and replanned every 4 steps, each tick's pose tracked as a twist, the task's
    shaping, the command mux's acceleration bound), with ``ResidualRunner`` applying the agent's
    correction at every tick. A residual trained in the plain env (one chunk at a time, one twist
    held a whole step, no mux) learnt to lean on what the deploy path does not do: 68% there,
    8% through the server's engine.

    The agent acts once a policy step; its ``u`` holds over the step's ticks (at deployment the
    actor's mean is evaluated at each tick, on that tick's observation). It observes what the
    runner gave the correction at the step's last tick. An episode ends as the evaluator ends it:
    success first seen is judged again ``settle`` seconds later (``ServedSim.judge``).

    The graph's timing varies, so training draws it (``latency`` per chunk, ``lags`` per
    episode): with one fixed timing the agent learnt to have the peg in at the moment of the
    verdict (98% in the engine, 42% through the graph, its insertions undone by the next chunk a
    few tens of milliseconds later than in training). A ``settle`` longer than the evaluator's
    asks it to keep the peg in rather than to time it."""

    def __init__(self, base_path: str, task: str, keys: list[str], max_steps: int = 0, randomization: str = "",
                 scale: float = 0.1, noise_scale: float = 1.0, shaping: float = 0.0, gamma: float = 0.99,
                 latency: tuple[float, float] = (0.0, 0.0), lags: tuple[float, float] = (0.0, 0.0),
                 settle: float = SUCCESS_SETTLE_S):
        from robot_learning.policies.registry import checkpoint_recipe, read_checkpoint
        from robot_learning.policies.residual import ResidualRunner
        from robot_learning.train.rollout import ServedSim

        self._correcting(load_base(base_path, noise_scale, "train residual-sac"), task, keys, scale, shaping, gamma)
        self.held = HeldCorrection(self.bound)
        runner = ResidualRunner(self.base, self.held, self.keys, self.bound)
        self.sim = ServedSim(runner, checkpoint_recipe(read_checkpoint(base_path)), task, latency=latency,
                             randomization=randomization or None, lags=lags, settle=settle)
        self.env = self.sim.env
        self.max_steps = max_steps or self.sim.cell.task.max_steps
        unseen = [k for k in observed_keys(self._task, [], self.shaping, "train residual-sac")
                  if k.split(".", 1)[0] not in self.sim.streams]
        if unseen:
            raise SystemExit(f"train residual-sac --shaping: the base does not observe {', '.join(unseen)}, "
                             "which the task's progress is measured from; train without --shaping")
        self._spec_from_first_episode()

    def _progress_obs(self) -> dict[str, np.ndarray]:
        """The poses the task's progress reads, as the server has them now (a batch of one)."""
        return {k: np.asarray(self.sim.core.buffers.newest(k)[1])[None] for k in self._task.progress_keys} \
            if self.shaping else {}

    def _observed(self) -> dict[str, np.ndarray]:
        state, base_now = self.held.seen
        out, i = {}, 0
        for k in self.keys:
            n = self.sizes[k]
            out[k] = state[i:i + n].astype(np.float32)
            i += n
        out[BASE_ACTION] = scaled_base_action(base_now, self.mid, self.half)
        return out

    def reset(self, seed: int):
        sim = self.sim
        sim.reset(seed)
        self.held.u[:] = 0.0
        self.held.seen = None
        self.steps = 0
        while self.held.seen is None and sim.fault is None and self.steps < self.max_steps:
            sim.step()   # the base's first chunk, uncorrected: the agent's first look at it
            self.steps += 1
        if self.held.seen is None:
            raise RuntimeError(f"the base made no action in {self.steps} steps of episode {seed}"
                               + (f" ({sim.fault})" if sim.fault else ""))
        self.sizes = {k: int(np.size(sim.core.buffers.newest(k)[1])) for k in self.keys}
        self._before = self._progress_obs()
        return self._observed(), {}

    def step(self, a):
        self.held.u = self.executed(a)
        sim = self.sim
        sim.step()
        self.steps += 1
        # the evaluator's verdict (success judged again 0.5 s after it is first seen) or a
        # protective stop ends the episode: judged at first sight, as the plain env does, the
        # agent never learnt to leave a peg in (78% deployed of 100% in its evaluations, every
        # failure a success undone)
        verdict, fault = sim.judge(), sim.fault
        success = bool(verdict)
        terminated = verdict is not None or fault is not None
        truncated = not terminated and self.steps >= self.max_steps and sim.t_ok is None
        info = {"success": success} | ({"protective_stop": fault} if fault else {})
        after = self._progress_obs()
        reward = float(success) + (self._shaped(self._before, after) if self.shaping else 0.0)
        self._before = after
        return self._observed(), reward, terminated, truncated, info

    def close(self):
        self.sim.close()


class ResidualOnRobot:
    """The frozen base and the residual's bound as the graph's RL actor runs them
    (``rl_graph_actor`` with ``base:=``): one chunk per ``horizon`` steps from a window of the
    base's observations, as ``BaseDrivenEnvs`` runs it in the env, so a transition on the robot
    means what one from ``train residual-sac`` means and the learner's checkpoint deploys as a
    ``residual_sac`` policy. No ROS here: the node hands it observations and sends what it says."""

    def __init__(self, base_path: str, scale: float = 0.1, noise_scale: float = 1.0):
        from robot_learning.policies.registry import base_ref

        self.base = load_base(base_path, noise_scale, "rl_graph_actor")
        spec = self.base.spec
        self.keys, self.dt, self.horizon = list(spec.obs_keys), spec.dt, self.base.horizon
        self.mid, self.half = base_action_range(self.base)
        self.bound = float(scale) * self.half
        self.window: deque = deque(maxlen=spec.obs_horizon)
        self.chunk = np.zeros((self.horizon, spec.action_dim))
        self.k = self.horizon
        self.ref = base_ref(base_path)
        self.noise_scale = float(noise_scale)

    def first(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """A new episode (or the arm moved while the actor held): the window is ``obs``
        repeated and a chunk is planned from it; the base's action due now."""
        self.window.clear()
        self.window.extend([{k: np.asarray(obs[k]) for k in self.keys}] * self.window.maxlen)
        self.k = self.horizon
        return self._due()

    def next(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One step on: ``obs`` joins the window; the base's action due now (a new chunk when
        the last ran out)."""
        self.window.append({k: np.asarray(obs[k]) for k in self.keys})
        self.k += 1
        return self._due()

    def _due(self) -> np.ndarray:
        if self.k >= self.horizon:
            self.chunk = self.base.executed(self.base.chunks(window_input(self.keys, [self.window])))[0]
            self.k = 0
        return np.asarray(self.chunk[self.k], np.float64)

    def agent_obs(self, obs: dict[str, np.ndarray], keys: list[str], base_now: np.ndarray) -> dict[str, np.ndarray]:
        return {k: obs[k] for k in keys} | {BASE_ACTION: scaled_base_action(base_now, self.mid, self.half)}

    def command(self, base_now: np.ndarray, u: np.ndarray, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The arm's ``[twist(6), gripper]`` for the base's action corrected by ``u`` (clipped to
        [-1, 1]); a ``tcp_pose`` base's pose is tracked from the TCP pose now, as in the env."""
        a = base_now + self.bound * np.clip(u, -1.0, 1.0)
        if self.base.spec.action_kind == "tcp_pose":
            return pose_command(a, np.asarray(obs[TCP_POSE_KEY], np.float64), self.dt)
        return a

    def taken_over(self, executed: np.ndarray, base_now: np.ndarray, next_obs: dict[str, np.ndarray]) -> np.ndarray:
        """The operator's command of a step, as the agent's ``u``: how far from the base's action
        it was, in bounds (clipped to [-1, 1]). A ``tcp_pose`` base's action is where the TCP is
        one step later, so the operator's is the pose it reached (as demonstrations are made)."""
        if self.base.spec.action_kind == "tcp_pose":
            pose = np.asarray(next_obs[TCP_POSE_KEY], np.float64).copy()
            if np.dot(pose[3:7], base_now[3:7]) < 0:  # the same rotation, the base's sign
                pose[3:7] = -pose[3:7]
            executed = np.concatenate([pose, np.asarray(executed, np.float64)[6:]])
        return np.clip((executed - base_now) / self.bound, -1.0, 1.0).astype(np.float32)

    def spec_extra(self, keys: list[str]) -> dict:
        """What the learner needs beyond the spec: the agent starts as "no correction", its
        critic's targets are clipped to the task's returns, and its checkpoints name the base
        so the policy server deploys them as ``residual_sac``."""
        return {"zero_correction": True, "return_range": list(RETURN_RANGE),
                "checkpoint": {"policy": "residual_sac", "base": self.ref, "obs_keys": list(keys),
                               "bound": self.bound.tolist(), "base_options": {"noise_scale": self.noise_scale}}}

"""The workcell as a gymnasium env, without ROS: same model, controller and safety code.

Action: TCP twist in the base frame (m/s, rad/s) followed by the gripper closure (0 open
.. 1 closed), applied for one env step (``1 / control_hz``) through the arm controller, so
a policy trained here sends the same command a ``/arm/command/twist`` client sends. The
action space is the arm's limits, narrowed where the task says so (``Task.action_bounds``:
peg_insert's 10 cm/s), and the task shapes each action (``Task.shape_action``).

``randomization`` (``sim/randomization.yaml``): each episode draws its physics, lights,
colours and camera mountings (``sim.randomize``), and here its sensor noise, latencies and
step-period jitter: an action takes effect ``action_s`` after it is sent, an observation is
what the sensors saw ``observation_s`` before the step ended (less than one step), and each
step lasts its period times 1 +- ``period_jitter``. ``info["randomization"]`` at reset logs
the draw.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from robot_learning.sim.randomize import add_noise
from robot_learning.sim.workcell import Workcell


class WorkcellEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "pick_place", control_hz: float = 10.0,
                 cameras: tuple[str, ...] = (), image_size: tuple[int, int] = (96, 96),
                 depth: bool = False, render_mode: str | None = None, randomization: str | dict | None = None):
        self.cell = Workcell(task, randomization=randomization)
        lat = self.cell.randomizer.cfg.get("latency", {}).get("observation_s", [0.0, 0.0])
        if lat[1] >= 1.0 / control_hz:
            raise ValueError(f"randomization: latency.observation_s up to {lat[1]} s is a step ({1 / control_hz} s) "
                             "or more; the env delays observations by less than one step")
        self.control_hz = control_hz
        self.cameras = tuple(cameras)
        self.image_size = image_size  # (height, width)
        self.depth = depth
        self.render_mode = render_mode
        self.action_space = gym.spaces.Box(*self.cell.task.action_bounds(*self.cell.robot.limits.twist_action_bounds()),
                                           dtype=np.float32)
        dof = self.cell.robot.dof
        t = self.cell.tactile
        n_obj = 7 * len(self.cell.task.object_bodies)
        f = gym.spaces.Box(-np.inf, np.inf, dtype=np.float32, shape=(1,))
        spaces: dict[str, gym.Space] = {
            "joint_pos": gym.spaces.Box(-np.inf, np.inf, (dof,), np.float32),
            "joint_vel": gym.spaces.Box(-np.inf, np.inf, (dof,), np.float32),
            "tcp_pose": gym.spaces.Box(-np.inf, np.inf, (7,), np.float32),
            "gripper": f,
            "wrench": gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
            "tactile": gym.spaces.Box(-np.inf, np.inf, (len(t.names), t.rows, t.cols, 3), np.float32),
            "object_state": gym.spaces.Box(-np.inf, np.inf, (n_obj,), np.float32),
        }
        h, w = image_size
        for cam in self.cameras:
            spaces[f"{cam}_rgb"] = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
            if depth:
                spaces[f"{cam}_depth"] = gym.spaces.Box(0, 65535, (h, w), np.uint16)
        self.observation_space = gym.spaces.Dict(spaces)
        self._steps = 0
        self._queue: deque[tuple[float, np.ndarray]] = deque()  # actions sent, not yet in effect
        self._active: np.ndarray | None = None
        self._noise = np.random.default_rng(0)
        self.observe = self._obs  # what step() and reset() return (a wrapper may observe otherwise)

    def _obs(self) -> dict[str, np.ndarray]:
        c = self.cell
        st = c.backend.read_state()
        pos, quat = c.tcp_pose()
        grids = c.tactile_grids()
        obj = np.concatenate([np.r_[p, q] for p, q in c.object_poses().values()])
        obs = {
            "joint_pos": st.q.astype(np.float32),
            "joint_vel": st.qd.astype(np.float32),
            "tcp_pose": np.r_[pos, quat].astype(np.float32),
            "gripper": np.array([st.gripper_opening], np.float32),
            "wrench": c.wrist_wrench().astype(np.float32),
            "tactile": np.stack([grids[n] for n in c.tactile.names]),
            "object_state": obj.astype(np.float32),
        }
        h, w = self.image_size
        for cam in self.cameras:
            fr = c.render(cam, w, h, depth=self.depth)
            obs[f"{cam}_rgb"] = fr.rgb
            if self.depth:
                obs[f"{cam}_depth"] = fr.depth_mm
        sensors = c.draw.sensors
        if sensors:
            n = add_noise(sensors, self._noise, joint_position=obs["joint_pos"], joint_velocity=obs["joint_vel"],
                          wrench=obs["wrench"], tactile=obs["tactile"],
                          **{f"pixels_{cam}": obs[f"{cam}_rgb"] for cam in self.cameras})
            obs.update({k: n[name].astype(np.float32) for k, name in (
                ("joint_pos", "joint_position"), ("joint_vel", "joint_velocity"), ("wrench", "wrench"),
                ("tactile", "tactile"))})
            for cam in self.cameras:
                obs[f"{cam}_rgb"] = n[f"pixels_{cam}"]
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self.cell.reset(episode_seed)
        self._steps = 0
        self._queue.clear()
        self._active = None
        self._noise = np.random.default_rng([episode_seed, 0x0B5])
        return self.observe(), {"seed": episode_seed, "randomization": self.cell.draw.values}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=float)
        c = self.cell
        if action.shape != (7,):
            raise ValueError(f"action must have 7 numbers (twist[6], gripper), got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or Inf: {action.tolist()} (nothing was sent to the arm)")
        a = c.task.shape_action(np.clip(action, self.action_space.low, self.action_space.high), *c.tcp_pose(),
                                1.0 / self.control_hz)
        draw = c.draw
        period = 1.0 / self.control_hz
        if draw.period_jitter > 0:
            period *= 1.0 + self._noise.uniform(-draw.period_jitter, draw.period_jitter)
        t_end = c.time + period
        self._queue.append((c.time + draw.action_latency, a))
        t_obs = t_end - draw.observation_latency  # when the sensors take what this step returns
        obs = None
        while c.time < t_end - 0.5 * c.control_dt:
            while self._queue and self._queue[0][0] <= c.time + 1e-9:  # sent actions whose time has come
                self._active = self._queue.popleft()[1]
            if self._active is not None and c.controller.fault is None:  # a protective stop refuses commands
                c.controller.command_twist(self._active[:6], c.time)
                c.controller.command_gripper(float(self._active[6]), c.time)
            # run to the next event: the step's end, the sensors' moment, the next action taking effect
            events = [t_end] + ([self._queue[0][0]] if self._queue else [])
            if obs is None and draw.observation_latency > 0 and t_obs > c.time + 1e-9:
                events.append(t_obs)
            c.advance(max(min(events) - c.time, c.control_dt))
            if obs is None and draw.observation_latency > 0 and c.time >= t_obs - 0.5 * c.control_dt:
                obs = self.observe()
        self._steps += 1
        success = c.success()
        info = {"success": success}
        if c.controller.fault is not None:
            info["protective_stop"] = c.controller.fault
        # a protective stop is a terminal state, not a time limit: the arm refuses every command
        # until a person resets it, so no reward can follow (a learner must not bootstrap past it)
        terminated = success or c.controller.fault is not None
        truncated = not terminated and self._steps >= c.task.max_steps
        return (obs if obs is not None else self.observe()), float(success), terminated, truncated, info

    def render(self):
        return self.cell.render("front", depth=False).rgb

    def close(self):
        self.cell.close()


def expert_obs_from_env(env: WorkcellEnv, t: float):
    """What the scripted expert needs, read from an env (the ROS side reads the same topics)."""
    from robot_learning.sim.expert import ExpertObs

    c = env.cell
    pos, quat = c.tcp_pose()
    return ExpertObs(t, pos, quat, c.backend.read_state().gripper_opening, c.object_poses())


gym.register("robot_learning/Workcell-v0", entry_point="robot_learning.sim.env:WorkcellEnv")

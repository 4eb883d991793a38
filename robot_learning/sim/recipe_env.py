"""The workcell env observed through a recipe's keys: what a recorded dataset holds.

``ee_pose.data``, ``cube_pose.data``, ``wrench.data``, ... are the values the sim node
publishes on those streams' topics (``sim.topics``), with the randomization's sensor noise,
and camera streams are the frames the camera node publishes shrunk as the recorded ones are.
A policy trained on recorded data, an RL agent trained here and the robot then read the
same numbers under the same names.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from robot_learning.data.schema import Recipe, load_recipe
from robot_learning.paths import project_root
from robot_learning.sim.env import WorkcellEnv

# which sensor's noise (sim.randomize) applies to a key
NOISE_KINDS = {"joint_states.position": "joint_position", "joint_states.velocity": "joint_velocity",
               "wrench.data": "wrench", "tactile_left.data": "tactile", "tactile_right.data": "tactile"}


def workcell_recipe() -> Recipe:
    return load_recipe(project_root() / "datasets" / "recipes" / "workcell.yaml")


def recipe_observation(env: WorkcellEnv, recipe: Recipe, keys: list[str], images: list[str] = (),
                       image_size: tuple[int, int] = (64, 64)) -> dict[str, np.ndarray]:
    """The recipe's ``keys`` (and camera streams ``images``, resized) read from ``env`` now."""
    from robot_learning.data.sampler import resize_frame
    from robot_learning.sim.randomize import add_noise
    from robot_learning.sim.topics import topic_sample

    out = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for k in keys:
        stream, array = k.split(".", 1)
        if stream not in samples:
            samples[stream] = topic_sample(env.cell, recipe.streams[stream].topic)
        out[k] = np.asarray(samples[stream][array], np.float32)
    for cam in images:
        out[cam] = resize_frame(topic_sample(env.cell, recipe.streams[cam].topic)["data"], image_size)
    sensors = env.cell.draw.sensors
    if sensors:  # the randomization's sensor noise, by what each key measures
        noisy = add_noise(sensors, env._noise, **{f"{NOISE_KINDS.get(k, k)}|{k}": v for k, v in out.items()
                                                  if k in NOISE_KINDS or k in images})
        out.update({k.split("|", 1)[1]: (v if v.dtype == np.uint8 else v.astype(np.float32))
                    for k, v in noisy.items()})
    return out


def check_keys(recipe: Recipe, keys: list[str], what: str) -> None:
    for k in keys:
        if k.split(".", 1)[0] not in recipe.streams:
            raise SystemExit(f"{what}: '{k}' is not a stream of the workcell recipe "
                             f"({', '.join(sorted(recipe.streams))})")


class RecipeKeyEnv(gym.Wrapper):
    """A gymnasium env (vectorizable) whose observations are a recipe's keys."""

    def __init__(self, task: str, keys: list[str], control_hz: float = 10.0, max_steps: int = 0,
                 randomization: str | dict | None = None):
        env = WorkcellEnv(task, control_hz=control_hz, randomization=randomization or None)
        super().__init__(env)
        self.recipe = workcell_recipe()
        check_keys(self.recipe, keys, "workcell env")
        self.keys = list(keys)
        env.observe = lambda: recipe_observation(env, self.recipe, self.keys)
        if max_steps:
            env.cell.task.max_steps = max_steps
        first, _ = env.reset(seed=0)
        self.observation_space = gym.spaces.Dict({k: gym.spaces.Box(-np.inf, np.inf, v.shape, np.float32)
                                                  for k, v in first.items()})

"""What the policy server runs: any policy that turns an observation window into a chunk of
timed actions. Diffusion policies are one kind, SAC agents (``train sac``, the RL learner)
another, residual and DSRL policies on top of a diffusion policy two more; each kind's module
registers it (``policies.registry``) and the server runs them all unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class PolicySpec:
    obs_keys: list[str]                     # step-table keys "<stream>.<array>", in input order
    image_keys: list[str]                   # camera streams
    image_size: tuple[int, int] | None      # (H, W) the frames are resized to
    obs_horizon: int
    dt: float                               # seconds between actions of a chunk
    action_dim: int
    action_low: np.ndarray                  # a chunk with any action outside [low, high] is refused
    action_high: np.ndarray
    task: str = ""
    action_kind: str = "twist"              # what an action means (runtime.actions): twist or tcp_pose
    # camera -> (x0, y0, x1, y1): the region of its frames (fractions) resized to image_size
    image_rois: dict = field(default_factory=dict)


class Policy(Protocol):
    spec: PolicySpec

    def reset(self) -> None:
        """A new episode starts (recurrent state, noise generators)."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions [N, action_dim] for the window ``obs`` (``obs/<key>`` and ``image/<stream>``,
        each [obs_horizon, ...], and ``t``: the observation times); row 0 is due at ``t[-1]``.

        A policy may also define ``correct(action, newest) -> action``: the server then calls it
        at every control tick with the action due and the newest value of each ``obs_keys``
        entry (a residual policy's correction, at the control rate)."""


class ReplayPolicy:
    """Plays recorded actions back by time (open loop): what the arm got at step k of an episode
    is sent again at k dt after the start. Checks that the env and the graph agree, and replays
    an episode on the arm."""

    def __init__(self, actions: np.ndarray, dt: float, obs_key: str, t0: float = 0.0, action_kind: str = "twist"):
        self.actions, self.t0 = np.asarray(actions, np.float64), t0
        span = np.ptp(self.actions, axis=0) + 1e-3
        self.spec = PolicySpec([obs_key], [], None, 1, dt, self.actions.shape[1],
                               self.actions.min(0) - span, self.actions.max(0) + span, action_kind=action_kind)

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        k = int(round((float(obs["t"][-1]) - self.t0) / self.spec.dt))
        return self.actions[min(max(k, 0), len(self.actions) - 1):]

"""RLIF's rewards: the operator's takeover is the only reward signal (-1), nothing else counts.

Two choices decide whether it teaches anything:

- *Where* the -1 goes: on the policy's own step just before the takeover (what RLIF labels),
  never on the operator's first corrective action. Put on the correction, it tells the critic
  that what the operator does is what gets punished; those corrections also join the
  demonstrations' buffer, so the actor learned to avoid exactly them (0% success in every
  evaluation). Labelling the step before means holding each transition back one step, which
  is what ``RlifRewards`` does for ``train sac`` and the graph's actor alike.
- A protective stop is the arm's own takeover: -1 too. With 0 there, and an episode that ends,
  stopping the arm would be the best escape from the operator's penalties.

With rewards in [-1, 0] every return is in [-1 / (1 - gamma), 0], and ``q_range`` hands that
to the critic: its targets are clipped to it. Without it the critic's values rose to 1.8 (6.9
in another run) where no return is above 0: the actions the operator kept the policy from
taking were never corrected downward."""

from __future__ import annotations

import numpy as np


def q_range(gamma: float) -> list[float]:
    """The returns RLIF's rewards allow: at worst -1 every step, at best never a takeover."""
    return [-1.0 / (1.0 - gamma), 0.0]


def rewards_before_takeovers(intervention: np.ndarray) -> np.ndarray:
    """RLIF's rewards for one recorded episode's steps at once (its intervention flags): -1 on
    each policy step a takeover followed, 0 elsewhere, as ``RlifRewards`` labels them live."""
    iv = np.asarray(intervention, bool)
    began = np.flatnonzero(iv & ~np.r_[False, iv[:-1]])
    reward = np.zeros(len(iv), np.float32)
    reward[began[began > 0] - 1] = -1.0
    return reward


class RlifRewards:
    """Holds each transition (a dict with a ``reward`` entry) one step, so a takeover's -1
    lands on the step that led to it. ``step`` returns what is ready to store or send;
    ``flush`` at an episode's end returns the held one (an episode's last step is never
    followed by a takeover in the same episode)."""

    def __init__(self) -> None:
        self.held: dict | None = None

    def step(self, transition: dict, began: bool, stopped: bool) -> list[dict]:
        """``began``: the operator took over at this step (so the step before was the policy's);
        ``stopped``: the arm stopped itself at this step."""
        ready = []
        if self.held is not None:
            if began:
                self.held["reward"] = np.float32(-1.0)
            ready.append(self.held)
        transition["reward"] = np.float32(-1.0 if stopped else 0.0)
        self.held = transition
        return ready

    def flush(self) -> list[dict]:
        held, self.held = self.held, None
        return [held] if held is not None else []

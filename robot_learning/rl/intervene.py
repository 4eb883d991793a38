"""A scripted person who watches the policy and takes over when it strays (RLIF's setting).

HIL-SERL learns fast because a person corrects the robot as it learns; in the sim that person
is the workcell's scripted expert, run alongside the policy on the same observations. Each
step it judges the policy's step:
- where the task's goal is one place (peg_insert: the peg fully in the hole), by *progress*,
  as a person watching an insertion does: a step is astray when the peg is not ``min_progress``
  closer to the goal than ``window`` steps before. A policy that takes another path than the
  expert's own (diagonally down rather than above the hole first) is left alone;
- otherwise by *direction* against what the expert would command itself: astray when the
  expert wants to move and the policy goes the other way (the two linear velocities point
  more than ~70 degrees apart), barely moves, or commands the gripper the other way.
``patience`` astray steps in a row and it takes over for ``takeover_steps``, then hands back;
with ``takeover_steps=0`` it keeps the arm until its own plan is done (the peg in the hole), as
a person who has taken over an insertion finishes it: handing back halfway leaves the policy
where it strayed before. Its corrections are the executed actions, flagged as interventions,
so they go to both buffers as HIL-SERL's do, and under RLIF the moment of each takeover is the
(negative) reward.
"""

from __future__ import annotations

import numpy as np

from robot_learning.sim.expert import ExpertObs, ScriptedExpert


class InterveningOperator:
    def __init__(self, task: str, patience: int = 5, takeover_steps: int = 15, min_speed: float = 0.01,
                 agreement: float = 0.35, window: int = 10, min_progress: float = 0.005):
        self.expert = ScriptedExpert(task)
        self.patience, self.takeover_steps = patience, takeover_steps
        self.min_speed, self.agreement = min_speed, agreement
        self.window, self.min_progress = window, min_progress
        self.reset()

    def reset(self) -> None:
        """A new episode: the expert plans afresh from its first observation."""
        self.expert.reset()
        self.astray = 0
        self.left = 0          # steps of the current takeover still to go
        self.distances: list[float] = []  # to the goal, one per step the policy had the arm

    @property
    def intervening(self) -> bool:
        return self.left > 0

    def _astray(self, policy: np.ndarray, expert: np.ndarray) -> bool:
        ve, vp = expert[:3], policy[:3]
        se, sp = float(np.linalg.norm(ve)), float(np.linalg.norm(vp))
        if abs(float(policy[-1]) - float(expert[-1])) > 0.5:
            return True                         # the gripper the wrong way: a dropped or missed peg
        if se < self.min_speed:
            return False                        # the expert would hold here; anything slow is fine
        return sp < 0.25 * se or float(ve @ vp) / (se * sp) < self.agreement

    def step(self, obs: ExpertObs, policy_action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """(the action to execute, whether it is the operator's, whether a takeover starts now)."""
        twist, grip = self.expert.act(obs)
        expert_action = np.r_[twist, grip].astype(np.float32)
        if self.left > 0:
            self.left = 0 if self.expert.done else self.left - 1
            return expert_action, True, False
        d = self.expert.goal_distance(obs)
        if d is not None:  # judged by progress toward the goal
            self.distances.append(d)
            back = self.distances[-self.window - 1] if len(self.distances) > self.window else None
            astray = back is not None and back - d < self.min_progress
        else:
            astray = self._astray(np.asarray(policy_action), expert_action)
        self.astray = self.astray + 1 if astray else 0
        if self.astray >= self.patience:
            self.astray = 0
            self.left = self.takeover_steps - 1 if self.takeover_steps > 0 else np.inf
            self.expert.take_over()
            self.distances.clear()  # handed back later: judged afresh from there
            twist, grip = self.expert.act(obs)  # from where the policy has left the arm
            return np.r_[twist, grip].astype(np.float32), True, True
        return np.asarray(policy_action, np.float32), False, False

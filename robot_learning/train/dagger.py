"""DAgger for the fast half of a slow-fast policy (``train slow-fast --dagger N``).

Cloned from demonstrations alone, the fast policy only ever saw the states the demonstrator
passed through, with the demonstrator's slower plan ahead. In closed loop its own corrections
take the arm elsewhere (the peg a few millimetres off, a contact the expert never made), and
there it has no example. DAgger (Ross et al. 2011) gathers those: roll slow-fast out through
the policy server's engine, and at every control tick ask the scripted expert what it would
command from that very state. Each tick gives one example (the fast policy's observations, the
slow action due, the expert's commanded pose a step on) for the next round of training.

The fast policy acts while the expert only labels (no mixing): its own mistakes are what the
rounds are for.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from robot_learning.runtime.actions import commanded_pose_actions


class ExpertLabelled:
    """The fast policy's correction at a tick, with the expert's label recorded beside it:
    what the expert commands from the sim's state now, in the slow policy's action space (for
    ``tcp_pose``, the pose it asks for one step on)."""

    def __init__(self, fast, sim, task: str, dt: float, poses: bool):
        self.fast, self.sim, self.task, self.dt, self.poses = fast, sim, task, dt, poses
        # from any state the policy reaches, where the expert can say so (``ScriptedExpert.label``);
        # else along the expert's own plan, which may first send the hand back to where it starts
        self.stateless = task == "peg_insert"
        self.expert = None
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def start(self, seed: int) -> None:
        from robot_learning.sim.expert import ScriptedExpert

        self.expert = ScriptedExpert(self.task, np.random.default_rng(seed))

    def __call__(self, state: np.ndarray, slow_action: np.ndarray) -> np.ndarray:
        from robot_learning.sim.env import expert_obs_from_env
        from robot_learning.transforms import wxyz_to_xyzw

        obs = expert_obs_from_env(self.sim.env, self.sim.cell.time)
        twist, grip = self.expert.label(obs) if self.stateless else self.expert.act(obs)
        label = np.r_[twist, grip].astype(np.float32)
        if self.poses:
            pose = np.r_[obs.tcp_pos, wxyz_to_xyzw(obs.tcp_quat)]
            label = commanded_pose_actions(pose[None], label[None], self.dt)[0]
        self.rows.append((np.asarray(state, np.float32), np.asarray(slow_action, np.float32), label))
        return self.fast(state, slow_action)


def expert_examples(slow, fast, keys: list[str], scale, recipe, task: str, seeds: list[int],
                    progress: bool = True, max_steps: int = 0) -> tuple[dict[str, np.ndarray], float]:
    """Slow-fast rolled out on ``seeds`` through the server's engine, every tick labelled by the
    expert: the examples (``train.slow_fast.examples``' layout) and the rollouts' success rate.
    ``max_steps``: policy steps an episode may take (0: the task's limit)."""
    from robot_learning.policies.residual import ResidualRunner
    from robot_learning.train.rollout import ServedSim

    labelled = ExpertLabelled(fast, None, task, slow.spec.dt, slow.spec.action_kind == "tcp_pose")
    sim = ServedSim(ResidualRunner(slow, labelled, keys, scale), recipe, task)
    labelled.sim = sim
    successes = 0
    try:
        for seed in tqdm(seeds, desc="dagger rollouts", unit="ep", disable=not progress, leave=False):
            labelled.start(seed)
            successes += sim.episode(seed, max_steps)[0]
    finally:
        sim.close()
    obs, slow_a, label = (np.stack(c) for c in zip(*labelled.rows))
    return ({"obs": obs, "slow": slow_a, "demo": label.astype(np.float32), "episode": np.full(len(obs), -1)},
            successes / max(len(seeds), 1))

"""rl_actor: steps an environment with the learner's newest policy and sends every transition.

This actor drives a gymnasium env or the workcell env (``env``: ``Pendulum-v1``,
``workcell/peg_in_hole``) in its own process, so the learner can sit in another process or on a
GPU machine (the actor that drives the ROS graph through the command mux is ``rl_graph_actor``).
Each step's transition goes through ``learner_link.LearnerLink`` (on disk until the learner
acknowledges it, resent until then) to ``/rl/transitions``; weights arrive, versioned, on
``/rl/policy_weights``. No acknowledgement for ``learner_timeout`` seconds means
the learner is gone: ``on_learner_lost:=keep`` goes on with the last policy (transitions wait
in the outbox), ``hold`` stops stepping until a learner is back. Before the first weights
arrive it explores with uniform random actions.
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node

from robot_learning.rl.learner import spec_json, transition_arrays
from robot_learning_ros.learner_link import LearnerLink
from robot_learning_ros.runtime import lenient_params, run_until_stopped


class ActorNode(Node):
    def __init__(self):
        super().__init__("rl_actor")
        p = lenient_params(self)
        self.env_name = str(p("env", "Pendulum-v1").value)
        self.on_lost = str(p("on_learner_lost", "keep").value)
        if self.on_lost not in ("keep", "hold"):
            raise ValueError(f"on_learner_lost must be 'keep' or 'hold', not '{self.on_lost}'")
        self.rate = float(p("rate", 0.0).value)          # env steps per second (0: as fast as it goes)
        self.max_steps = int(p("max_steps", 0).value)    # 0: until stopped
        self.seed = int(p("seed", 0).value)
        self.link = LearnerLink(self, str(p("outbox", "runs/actor_outbox").value),
                                float(p("learner_timeout", 3.0).value))

    def run(self, running) -> None:
        from robot_learning.train.sac import SACTrainConfig, make_env

        env = make_env(SACTrainConfig(env=self.env_name))
        link = self.link
        link.announce(spec_json(env.spec, env.low, env.high, env.dt, self.env_name, getattr(env, "action_dims", [])))
        rng = np.random.default_rng(self.seed)
        episode, steps = 0, 0
        obs, _ = env.reset(self.seed * 100_000 + episode)
        grip = env.low[-1]
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        next_t = time.monotonic()
        try:
            while running() and (self.max_steps == 0 or steps < self.max_steps):
                link.sync()
                if link.holding(self.on_lost):
                    time.sleep(0.05)
                    continue
                if link.policy.agent is None:
                    a = rng.uniform(env.low, env.high).astype(np.float32)
                else:
                    a = link.policy.act(obs, gripper_now=grip)
                a = env.executed(a)  # what reaches the arm (the task's shaping): what the learner keeps
                nobs, r, term, trunc, info = env.step(a)
                link.send(transition_arrays(env.spec, obs, a, r, nobs, term, False, grip))
                grip, obs, steps = float(a[-1]), nobs, steps + 1
                if term or trunc:
                    episode += 1
                    obs, _ = env.reset(self.seed * 100_000 + episode)
                    grip = env.low[-1]
                if period:
                    next_t += period
                    time.sleep(max(0.0, next_t - time.monotonic()))
            link.drain()
        finally:
            env.close()
            self.get_logger().info(f"stopped after {steps} steps ({episode} episodes); "
                                   f"{len(link.outbox.pending)} transitions kept for the next run")


def main(args=None) -> None:
    run_until_stopped(ActorNode, args)  # Ctrl-C: finish over DDS first (acks, last transitions)


if __name__ == "__main__":
    main()

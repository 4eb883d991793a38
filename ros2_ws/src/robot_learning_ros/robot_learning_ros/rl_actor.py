"""rl_actor: steps an environment with the learner's newest policy and sends every transition.

This actor drives a gymnasium env or the workcell env (``env``: ``Pendulum-v1``,
``workcell/peg_in_hole``) in its own process, so the learner can sit in another process or on a
GPU machine; the actor that drives the ROS graph through the policy server and the mux is the
next step. Each step's transition goes through ``robot_learning.rl.link.Outbox`` (on disk
until the learner acknowledges it, resent until then) to ``/rl/transitions``; weights arrive,
versioned, on ``/rl/policy_weights``. No acknowledgement for ``learner_timeout`` seconds means
the learner is gone: ``on_learner_lost:=keep`` goes on with the last policy (transitions wait
in the outbox), ``hold`` stops stepping until a learner is back. Before the first weights
arrive it explores with uniform random actions.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from rclpy.node import Node
from std_msgs.msg import String, UInt8MultiArray

from robot_learning.rl.learner import ActorPolicy, spec_json, transition_arrays
from robot_learning.rl.link import Outbox, new_actor_id
from robot_learning_ros.msgs import LATCHED_QOS, STATE_QOS
from robot_learning_ros.runtime import lenient_params, run_until_stopped


class ActorNode(Node):
    def __init__(self):
        super().__init__("rl_actor")
        p = lenient_params(self)
        self.env_name = str(p("env", "Pendulum-v1").value)
        self.outbox_dir = str(p("outbox", "runs/actor_outbox").value)
        self.on_lost = str(p("on_learner_lost", "keep").value)
        if self.on_lost not in ("keep", "hold"):
            raise ValueError(f"on_learner_lost must be 'keep' or 'hold', not '{self.on_lost}'")
        self.learner_timeout = float(p("learner_timeout", 3.0).value)
        self.rate = float(p("rate", 0.0).value)          # env steps per second (0: as fast as it goes)
        self.max_steps = int(p("max_steps", 0).value)    # 0: until stopped
        self.seed = int(p("seed", 0).value)
        self.policy = ActorPolicy()
        self.lock = threading.Lock()
        self.pending_weights: tuple[int, str, bytes] | None = None
        self.pending_acks: dict | None = None
        self.last_ack = -np.inf
        self.learner = ""
        self.pub_spec = self.create_publisher(String, "/rl/actor_spec", LATCHED_QOS)
        self.pub_tr = self.create_publisher(UInt8MultiArray, "/rl/transitions", STATE_QOS)
        self.create_subscription(String, "/rl/acks", self._on_acks, LATCHED_QOS)
        self.create_subscription(UInt8MultiArray, "/rl/policy_weights", self._on_weights, LATCHED_QOS)

    def _on_acks(self, m: String) -> None:
        with self.lock:
            self.pending_acks = json.loads(m.data)
            self.last_ack = time.monotonic()

    def _on_weights(self, m: UInt8MultiArray) -> None:
        head = json.loads(m.layout.dim[0].label)
        with self.lock:
            self.pending_weights = (int(head["version"]), json.dumps(head["config"]), bytes(m.data))

    def _send(self, data: bytes) -> None:
        msg = UInt8MultiArray()
        msg.data = data
        try:
            self.pub_tr.publish(msg)
        except Exception:
            if rclpy.ok():
                raise  # on Ctrl-C the context goes down under the loop: the outbox keeps the rest

    def _sync(self, out: Outbox) -> None:
        """Acks and weights that arrived (taken here, on the stepping thread), and resends."""
        with self.lock:
            acks, self.pending_acks = self.pending_acks, None
            weights, self.pending_weights = self.pending_weights, None
        if acks is not None:
            if acks["learner"] != self.learner:
                self.learner = acks["learner"]
                self.get_logger().info(f"learner {self.learner} is up (version {acks['version']})")
                out.resend_all()  # a new learner: send everything unacknowledged now
            out.ack(acks["stored"])
        if weights is not None and weights[0] != self.policy.version:
            self.policy.load(*weights)
            self.get_logger().info(f"policy version {weights[0]}")
        for data in out.due():
            self._send(data)

    def learner_alive(self) -> bool:
        return time.monotonic() - self.last_ack < self.learner_timeout

    def run(self, running) -> None:
        from robot_learning.train.sac import SACTrainConfig, make_env

        env = make_env(SACTrainConfig(env=self.env_name))
        out = Outbox(self.outbox_dir, new_actor_id(self.get_name()))
        self.pub_spec.publish(String(data=spec_json(env.spec, env.low, env.high, env.dt, self.env_name)))
        log = self.get_logger()
        log.info(f"actor {out.actor} on {self.env_name}: {len(out.pending)} transitions of earlier runs to resend")
        rng = np.random.default_rng(self.seed)
        episode, steps, was_alive = 0, 0, True
        obs, _ = env.reset(self.seed * 100_000 + episode)
        grip = env.low[-1]
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        next_t = time.monotonic()
        try:
            while running() and (self.max_steps == 0 or steps < self.max_steps):
                self._sync(out)
                alive = self.learner_alive()
                if alive != was_alive and self.learner:  # (no learner seen yet: nothing to report)
                    log.warning("learner is back" if alive else
                                f"no learner for {self.learner_timeout:.0f} s: "
                                f"{'holding' if self.on_lost == 'hold' else 'going on with the last policy'}")
                    was_alive = alive
                if not alive and self.on_lost == "hold" and self.learner:
                    time.sleep(0.05)
                    continue
                state = env.spec.flatten(obs)
                if self.policy.agent is None:
                    a = rng.uniform(env.low, env.high).astype(np.float32)
                else:
                    a = self.policy.act(state, gripper_now=grip)
                nobs, r, term, trunc, info = env.step(a)
                _, data = out.push(transition_arrays(state, a, r, env.spec.flatten(nobs), term, False, grip))
                self._send(data)
                grip, obs, steps = float(a[-1]), nobs, steps + 1
                if term or trunc:
                    episode += 1
                    obs, _ = env.reset(self.seed * 100_000 + episode)
                    grip = env.low[-1]
                if period:
                    next_t += period
                    time.sleep(max(0.0, next_t - time.monotonic()))
            # done stepping (or asked to stop): give a live learner a few seconds to store what
            # is still pending; what it does not store stays in the outbox for the next run
            end = time.monotonic() + 5.0
            while rclpy.ok() and out.pending and self.learner_alive() and time.monotonic() < end:
                out.resend_all()  # everything now, not at the resend pace
                self._sync(out)
                time.sleep(0.2)
        finally:
            env.close()
            log.info(f"stopped after {steps} steps ({episode} episodes); {len(out.pending)} transitions "
                     "kept for the next run")


def main(args=None) -> None:
    run_until_stopped(ActorNode, args)  # Ctrl-C: finish over DDS first (acks, last transitions)


if __name__ == "__main__":
    main()

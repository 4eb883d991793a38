"""rl_learner: the off-policy learner of human-in-the-loop RL, in its own process (or machine).

Waits for an actor's spec (``/rl/actor_spec``, latched), then takes every transition on
``/rl/transitions`` exactly once (``robot_learning.rl.link``), trains SAC on them (and on the
demonstrations of ``demos``, half and half), acknowledges what it has stored on ``/rl/acks``
(with its version, a few times a second: the actor's sign that a learner is alive) and
publishes the actor's weights, versioned, on ``/rl/policy_weights`` (latched: a late or
restarted actor gets the newest at once). Everything lives in ``run_dir``; started again on
the same one, it goes on where it stopped. Updates are paced to the data
(``updates_per_transition``), so a fast learner does not overfit the first few transitions.
"""

from __future__ import annotations

import collections
import json
import time
import uuid

import rclpy
import torch  # noqa: F401  (imported before the actor's spec arrives: learning starts at once)
from rclpy.node import Node
from std_msgs.msg import MultiArrayDimension, String, UInt8MultiArray

from robot_learning.rl.learner import Learner
from robot_learning_ros.msgs import LATCHED_QOS, STATE_QOS
from robot_learning_ros.runtime import lenient_params, run_until_stopped


class LearnerNode(Node):
    def __init__(self):
        super().__init__("rl_learner")
        p = lenient_params(self)
        self.run_dir = str(p("run_dir", "runs/learner").value)
        self.demos = str(p("demos", "").value)
        self.batch_size = int(p("batch_size", 256).value)
        self.utd = int(p("utd", 1).value)
        self.hidden = tuple(int(x) for x in str(p("hidden", "256,256").value).split(","))
        self.learning_starts = int(p("learning_starts", 200).value)
        self.ratio = float(p("updates_per_transition", 1.0).value)
        self.publish_every = int(p("publish_every", 50).value)
        self.checkpoint_every = int(p("checkpoint_every", 500).value)
        # the agent's choices as train sac takes them (its defaults), so both can be one learner
        self.sac = {"gamma": float(p("gamma", 0.99).value), "n_critics": int(p("n_critics", 2).value),
                    "target_subsample": int(p("target_subsample", 2).value),
                    "backup_entropy": bool(p("backup_entropy", True).value),
                    "centre_weight": float(p("centre_weight", 0.0).value),
                    "discrete_gripper": bool(p("discrete_gripper", False).value)}
        self.demo_successes_only = bool(p("demo_successes_only", True).value)
        self.demo_drop_idle = bool(p("demo_drop_idle", True).value)
        self.device = str(p("device", "auto").value)
        self.online_datasets = tuple(x.strip() for x in str(p("online_datasets", "").value).split(",") if x.strip())
        self.session = uuid.uuid4().hex[:8]
        self.spec: dict | None = None
        self.queue: collections.deque[bytes] = collections.deque()
        self.create_subscription(String, "/rl/actor_spec", self._on_spec, LATCHED_QOS)
        self.create_subscription(UInt8MultiArray, "/rl/transitions", self._on_transition, STATE_QOS)
        self.pub_acks = self.create_publisher(String, "/rl/acks", LATCHED_QOS)
        self.pub_weights = self.create_publisher(UInt8MultiArray, "/rl/policy_weights", LATCHED_QOS)
        # the heartbeat runs on the executor, apart from the learning loop: a slow fsync or a long
        # update delays what is acknowledged, never the sign of life
        self.acked: dict[str, int] = {}
        self.version = 0
        self.create_timer(0.2, self._heartbeat)

    def _heartbeat(self) -> None:
        self.pub_acks.publish(String(data=json.dumps({"learner": self.session, "stored": self.acked,
                                                      "version": self.version})))

    def _on_spec(self, m: String) -> None:
        self.spec = json.loads(m.data)

    def _on_transition(self, m: UInt8MultiArray) -> None:
        self.queue.append(bytes(m.data))

    def commit(self, learner: Learner) -> None:
        self.acked = learner.acks()  # durable now: what the actors may forget
        self._heartbeat()

    def publish_weights(self, learner: Learner) -> None:
        version, meta, data = learner.weights()
        self.version = version
        msg = UInt8MultiArray()
        msg.layout.dim = [MultiArrayDimension(label=json.dumps({"version": version, "meta": json.loads(meta)}),
                                              size=len(data), stride=len(data))]
        msg.data = data
        self.pub_weights.publish(msg)

    def run(self, running) -> None:
        log = self.get_logger()
        log.info(f"waiting for an actor's spec on /rl/actor_spec (run dir {self.run_dir})")
        while running() and self.spec is None:
            time.sleep(0.1)
        if not running():
            return
        try:
            learner = Learner(self.run_dir, self.spec, self.demos, self.batch_size, self.utd, self.hidden,
                              learning_starts=self.learning_starts, sac=self.sac,
                              demo_successes_only=self.demo_successes_only, demo_drop_idle=self.demo_drop_idle,
                              device=self.device, online_datasets=self.online_datasets)
        except ValueError as e:  # another actor's run dir, demonstrations that do not fit: one sentence
            log.error(str(e))
            raise SystemExit(1) from None
        log.info(f"learning for {self.spec['env']}: {learner.received} transitions from the journal, "
                 f"{learner.from_datasets} from online_datasets, "
                 f"{len(learner.demo) if learner.demo else 0} from demonstrations, version {learner.version}")
        self.publish_weights(learner)
        next_ack, published_at = 0.0, learner.agent.updates
        try:
            while running():
                for _ in range(min(len(self.queue), 500)):  # bounded: acks and updates go on under a flood
                    learner.receive(self.queue.popleft())
                if learner.misfits:
                    log.warning(f"{learner.misfits} transitions were laid out for another actor's spec and not "
                                f"stored (this run learns {self.spec['env']}): an earlier run's outbox, resent; "
                                "give each run its own outbox:=", throttle_duration_sec=30.0)
                now = time.monotonic()
                if now >= next_ack:
                    self.commit(learner)
                    next_ack = now + 0.2
                if learner.ready() and learner.agent.updates < self.ratio * learner.received:
                    learner.update()
                    u = learner.agent.updates
                    if u - published_at >= self.publish_every:
                        self.publish_weights(learner)
                        published_at = u
                    if u % self.checkpoint_every == 0:
                        learner.checkpoint()
                else:
                    time.sleep(0.005)
        finally:
            while self.queue:
                learner.receive(self.queue.popleft())
            learner.checkpoint()
            if rclpy.ok():
                self.commit(learner)
            learner.close()
            log.info(f"stopped: {learner.received} transitions stored, {learner.agent.updates} updates, "
                     f"version {learner.version}")


def main(args=None) -> None:
    run_until_stopped(LearnerNode, args)  # Ctrl-C: finish over DDS first (acks, last transitions)


if __name__ == "__main__":
    main()

"""The actor's side of the learner link over DDS, shared by both actors (an env stepped in the
actor's process, and the ROS graph through the command mux).

Transitions go out on ``/rl/transitions`` through ``robot_learning.rl.link.Outbox`` (on disk
until a learner acknowledges them on ``/rl/acks``, resent until then); weights come back,
versioned, on the latched ``/rl/policy_weights``; the actor's spec (observation keys and sizes,
action bounds) is latched on ``/rl/actor_spec``, so a learner started later, anywhere on the
domain, finds it without a host name. Callbacks only park what arrived; the stepping thread
takes it in ``sync``, so the policy never changes in the middle of a step.
"""

from __future__ import annotations

import json
import threading
import time

import rclpy
from rclpy.node import Node
from std_msgs.msg import String, UInt8MultiArray

from robot_learning.rl.learner import ActorPolicy
from robot_learning.rl.link import Outbox, new_actor_id
from robot_learning_ros.msgs import LATCHED_QOS, STATE_QOS


class LearnerLink:
    def __init__(self, node: Node, outbox_dir: str, learner_timeout: float = 3.0):
        self.node = node
        self.log = node.get_logger()
        self.learner_timeout = learner_timeout
        self.policy = ActorPolicy(keep=outbox_dir, tag=node.get_name())
        self.policy.warm_up()  # before the first step, not when the first weights arrive
        self.outbox = Outbox(outbox_dir, new_actor_id(node.get_name()))
        self.lock = threading.Lock()
        self.pending_weights: tuple[int, str, bytes] | None = None
        self.pending_acks: dict | None = None
        self.last_ack = -float("inf")
        self.learner = ""
        self._was_alive = True
        self.pub_spec = node.create_publisher(String, "/rl/actor_spec", LATCHED_QOS)
        self.pub_tr = node.create_publisher(UInt8MultiArray, "/rl/transitions", STATE_QOS)
        node.create_subscription(String, "/rl/acks", self._on_acks, LATCHED_QOS)
        node.create_subscription(UInt8MultiArray, "/rl/policy_weights", self._on_weights, LATCHED_QOS)

    def _on_acks(self, m: String) -> None:
        with self.lock:
            self.pending_acks = json.loads(m.data)
            self.last_ack = time.monotonic()

    def _on_weights(self, m: UInt8MultiArray) -> None:
        head = json.loads(m.layout.dim[0].label)
        if "meta" not in head:  # a learner of an earlier release: its label says less than the plug-in needs
            self.log.error("weights ignored: their label has no 'meta' (a learner from an older robot-learning?); "
                           "run the same version on both sides", throttle_duration_sec=30.0)
            return
        with self.lock:
            self.pending_weights = (int(head["version"]), json.dumps(head["meta"]), bytes(m.data))

    def announce(self, spec: str) -> None:
        said = self.policy.restore(json.loads(spec))
        if said:
            self.log.info(said)
        self.pub_spec.publish(String(data=spec))
        self.log.info(f"actor {self.outbox.actor}: {len(self.outbox.pending)} transitions of earlier runs to resend")

    def _publish(self, data: bytes) -> None:
        msg = UInt8MultiArray()
        msg.data = data
        try:
            self.pub_tr.publish(msg)
        except Exception:
            if rclpy.ok():
                raise  # on Ctrl-C the context goes down under the loop: the outbox keeps the rest

    def send(self, arrays: dict) -> int:
        """One executed transition: kept on disk, then sent; returns its sequence number."""
        seq, data = self.outbox.push(arrays)
        self._publish(data)
        return seq

    def sync(self, load_weights: bool = True) -> None:
        """Acks and weights that arrived (taken on the stepping thread), and resends.
        ``load_weights`` False leaves new weights waiting (the newest kept) until a later sync."""
        with self.lock:
            acks, self.pending_acks = self.pending_acks, None
            weights = self.pending_weights if load_weights else None
            if load_weights:
                self.pending_weights = None
        if acks is not None:
            if acks["learner"] != self.learner:
                self.learner = acks["learner"]
                self.log.info(f"learner {self.learner} is up (version {acks['version']})")
                self.outbox.resend_all()  # a new learner: send everything unacknowledged now
            self.outbox.ack(acks["stored"])
        if weights is not None and (weights[0] != self.policy.version or self.policy.restored):
            self.policy.load(*weights)
            self.log.info(f"policy version {weights[0]}")
        for data in self.outbox.due():
            self._publish(data)

    def alive(self) -> bool:
        return time.monotonic() - self.last_ack < self.learner_timeout

    def holding(self, on_lost: str) -> bool:
        """Whether to stop stepping now (``on_lost`` 'hold' and a learner seen before is gone);
        says so once each time the learner goes or comes back."""
        alive = self.alive()
        if alive != self._was_alive and self.learner:  # (no learner seen yet: nothing to report)
            self.log.warning("learner is back" if alive else
                             f"no learner for {self.learner_timeout:.0f} s: "
                             f"{'holding' if on_lost == 'hold' else 'going on with the last policy'}")
            self._was_alive = alive
        return not alive and on_lost == "hold" and bool(self.learner)

    def drain(self, seconds: float = 5.0) -> None:
        """Done stepping: give a live learner time to store what is pending, for as long as it
        keeps storing (``seconds`` without progress end it); what it does not store stays in
        the outbox for the next run. Everything goes out once, then again only after a second
        without progress: resending all of it at every check buried a learner on a busy machine
        in duplicates. Whether the learner looks alive does not matter here: an actor stopped
        seconds after it started may not have heard a learner yet that has stored everything,
        and on a loaded machine heartbeats come later than ``learner_timeout``; a learner that
        is really gone costs ``seconds``."""
        self.outbox.resend_all()
        left, progress = len(self.outbox.pending), time.monotonic()
        sent = progress
        while rclpy.ok() and self.outbox.pending:
            time.sleep(0.1)
            self.sync()
            now = time.monotonic()
            if len(self.outbox.pending) < left:
                left, progress = len(self.outbox.pending), now
            elif now - progress > seconds:
                break
            elif now - max(progress, sent) > 1.0:
                self.outbox.resend_all()
                sent = now

"""reward_node: a trained success classifier as a reward on the live graph.

Subscribes to the topics the classifier was trained on (the recipe in its checkpoint says
which) and publishes, at ``rate``: /reward/success_probability (std_msgs/Float64) and
/reward/success (std_msgs/Bool, true once the probability has stayed above the threshold for
``hold`` ticks). The RL actor and the episode runner read /reward/success where the sim's own
success signal does not exist, on a real robot. /reward/reset (std_srvs/Trigger) clears the
streak at the start of an episode.
"""

from __future__ import annotations

import torch
from rclpy.node import Node
from std_msgs.msg import Bool, Float64
from std_srvs.srv import Trigger

from robot_learning.data.convert import BadSample, to_sample
from robot_learning.data.schema import parse_recipe
from robot_learning.paths import resolve
from robot_learning.rl.classifier import LiveReward, load_classifier
from robot_learning_ros.msgs import LATEST_QOS, SENSOR_QOS, STATE_QOS, message_class
from robot_learning_ros.runtime import lenient_params, run_node


class RewardNode(Node):
    def __init__(self):
        super().__init__("reward")
        p = lenient_params(self)
        path = str(p("classifier", "").value)
        if not path:
            raise SystemExit("reward_node: set the 'classifier' parameter to a checkpoint from "
                             "`robot-learning train classifier` (its checkpoint/ directory)")
        torch.set_num_threads(int(p("threads", 1).value))
        model, meta = load_classifier(resolve(path))
        if not isinstance(meta.get("recipe"), dict):
            raise SystemExit(f"reward_node: {path} does not say which topics it was trained on (no recipe)")
        recipe = parse_recipe(meta["recipe"], f"{path}/config.json")
        threshold = float(p("threshold", model.cfg.threshold).value)
        self.reward = LiveReward(model, int(p("hold", 3).value), threshold)
        for name in self.reward.streams:
            spec = recipe.streams[name]
            self.create_subscription(message_class(spec.type), spec.topic,
                                     lambda m, n=name, s=spec: self._on_obs(n, s, m),
                                     SENSOR_QOS if spec.sensor else LATEST_QOS)
        self.pub_p = self.create_publisher(Float64, "/reward/success_probability", STATE_QOS)
        self.pub_success = self.create_publisher(Bool, "/reward/success", STATE_QOS)
        self.create_service(Trigger, "/reward/reset", self._on_reset)
        self.create_timer(1.0 / float(p("rate", 10.0).value), self._tick)
        topics = ", ".join(recipe.streams[n].topic for n in self.reward.streams)
        self.get_logger().info(f"success classifier {path} (threshold {threshold:.2f}, hold "
                               f"{self.reward.hold} ticks) on {topics}")

    def _on_obs(self, name: str, spec, msg) -> None:
        try:
            t, arrays = to_sample(spec, msg, self.get_clock().now().nanoseconds * 1e-9)
        except BadSample as e:
            self.get_logger().warning(f"{spec.topic}: {e}", throttle_duration_sec=5.0)
            return
        self.reward.add(name, t, arrays)

    def _on_reset(self, request, response):
        self.reward.reset()
        response.success, response.message = True, "success streak cleared"
        return response

    def _tick(self) -> None:
        out = self.reward.tick()
        if out is None:
            self.get_logger().info(f"waiting for {', '.join(self.reward.buffers.missing())}",
                                   throttle_duration_sec=5.0)
            return
        p, success = out
        self.pub_p.publish(Float64(data=float(p)))
        self.pub_success.publish(Bool(data=bool(success)))


def main(args=None) -> None:
    run_node(RewardNode, args)


if __name__ == "__main__":
    main()

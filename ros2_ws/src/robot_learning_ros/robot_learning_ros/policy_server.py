"""policy_server: runs a trained policy on the live graph (see robot_learning.runtime.server).

Subscribes to the observation topics the checkpoint was trained on (its recipe says which),
publishes the due action at ``control_rate`` on /policy/command/twist and
/policy/command/gripper (the command mux passes them to the arm unless the operator takes
over). A ``tcp_pose`` policy's chunks go out instead as timed plans, one message per new
chunk on /policy/command/tcp_trajectory (trajectory_msgs/MultiDOFJointTrajectory), which the
arm executes at its own rate, so neither inference time nor this node's timer jitter reaches
the joints (``plans:=false`` streams twists tracked against /arm/ee_pose as before). Once a
second: /policy/diagnostics (diagnostic_msgs/DiagnosticArray: latency of each stage, command
jitter, dropped and refused chunks).

Services (std_srvs/Trigger): /policy/pause, /policy/resume, /policy/load (loads the
``checkpoint`` parameter; setting that parameter loads it too). It starts paused unless
``autostart`` is set: the arm moves only once someone says so.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Transform, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from trajectory_msgs.msg import MultiDOFJointTrajectory, MultiDOFJointTrajectoryPoint

from robot_learning.data.convert import BadSample, to_sample
from robot_learning.paths import resolve
from robot_learning.policies.checkpoint import PolicyError
from robot_learning.policies.registry import checkpoint_recipe, load_policy, read_checkpoint
from robot_learning.runtime.server import HOLD_TWIST_S, PolicyServerCore, ServerConfig
from robot_learning_ros.msgs import COMMAND_QOS, LATEST_QOS, SENSOR_QOS, message_class, to_sec_ns, twist_msg
from robot_learning_ros.runtime import init_ros, lenient_params, spin_main


def _latency(value: float) -> float:
    from robot_learning.calibrate.latency import measured_latency

    return value if value >= 0 else measured_latency()


class PolicyServerNode(Node):
    def __init__(self):
        super().__init__("policy_server")
        p = lenient_params(self)
        self.cfg = ServerConfig(
            control_hz=float(p("control_rate", ServerConfig.control_hz).value),
            blend=str(p("blend", ServerConfig.blend).value),
            ensemble_k=float(p("ensemble_k", ServerConfig.ensemble_k).value),
            crossfade_s=float(p("crossfade_s", ServerConfig.crossfade_s).value),
            interpolate=bool(p("interpolate", ServerConfig.interpolate).value),
            replan_every=int(p("replan_every", ServerConfig.replan_every).value),
            max_obs_age=float(p("max_obs_age", ServerConfig.max_obs_age).value),
            # -1: the arm's latency as `robot-learning calibrate latency` measured it (calibration/latency.yaml)
            actuation_latency=_latency(float(p("actuation_latency", -1.0).value)),
        )
        self.device = str(p("device", "cpu").value)
        # deploy-time sampling settings ("" / 0: the checkpoint's own; a negative noise scale: 1)
        self.sampler = str(p("sampler", "").value)
        self.inference_steps = int(p("inference_steps", 0).value)
        self.noise_scale = float(p("noise_scale", -1.0).value)
        # CPU inference shares the machine with the sensors and the control loop: few threads, and
        # a short GIL switch interval so the timer thread is not kept waiting behind torch's Python
        torch.set_num_threads(int(p("threads", 1).value))
        sys.setswitchinterval(0.001)
        self.base_frame = str(p("base_frame", "panda_link0").value)
        self.autostart = bool(p("autostart", False).value)
        self.core: PolicyServerCore | None = None
        self.t_last_action: float | None = None
        self.subs = []
        self.bad_samples = 0
        self.pub_twist = self.create_publisher(TwistStamped, "/policy/command/twist", COMMAND_QOS)
        self.pub_grip = self.create_publisher(Float64, "/policy/command/gripper", COMMAND_QOS)
        self.plans = bool(p("plans", True).value)
        self.pub_plan = self.create_publisher(MultiDOFJointTrajectory, "/policy/command/tcp_trajectory", COMMAND_QOS)
        self._plan_version = 0
        self.pub_diag = self.create_publisher(DiagnosticArray, "/policy/diagnostics", 10)
        self.create_service(Trigger, "/policy/pause", self._on_pause)
        self.create_service(Trigger, "/policy/resume", self._on_resume)
        self.create_service(Trigger, "/policy/load", self._on_load)
        checkpoint = str(p("checkpoint", "").value)
        if checkpoint:
            self.load(checkpoint)
            if self.autostart:
                self.core.resume()
        else:
            self.get_logger().warning("no checkpoint: set the 'checkpoint' parameter or call /policy/load")
        self.add_on_set_parameters_callback(self._on_params)
        self.create_timer(1.0 / self.cfg.control_hz, self._tick)
        self.create_timer(1.0, self._diagnostics)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def load(self, path: str) -> None:
        """Loads a checkpoint and subscribes to what it observes; raises PolicyError when it can't."""
        path = str(resolve(path))
        meta = read_checkpoint(path)   # once: a residual's or DSRL's base is hashed here, not per use
        policy = load_policy(meta, self.device, sampler=self.sampler, inference_steps=self.inference_steps,
                             noise_scale=self._noise_scale(self.noise_scale))
        if hasattr(policy, "warmup"):
            policy.warmup()
        recipe = checkpoint_recipe(meta)
        if self.core is None:
            self.core = PolicyServerCore(policy, self.cfg, self._now, log=self.get_logger().warning)
            self.core.start()
        else:
            self.core.pause()
            self.core.set_policy(policy)
        for sub in self.subs:
            self.destroy_subscription(sub)
        self.subs = []
        for name in self.core.streams:
            spec = recipe.streams[name]
            qos = SENSOR_QOS if spec.sensor else LATEST_QOS
            self.subs.append(self.create_subscription(message_class(spec.type), spec.topic,
                                                      lambda m, n=name, s=spec: self._on_obs(n, s, m), qos))
        topics = ", ".join(recipe.streams[n].topic for n in self.core.streams)
        timed = getattr(policy, "timed_ms", None)   # auto precision: what warmup() measured
        if timed:
            self.get_logger().info(f"inference in {policy.precision}: a chunk took "
                                   + ", ".join(f"{v} ms in {k}" for k, v in timed.items()))
        self.get_logger().info(f"loaded {path} ({meta.kind}, task '{policy.spec.task}'): observes {topics}; "
                               f"{'running' if not self.core.paused else 'paused: call /policy/resume to start'}")

    def _on_obs(self, name: str, spec, msg) -> None:
        try:
            t, arrays = to_sample(spec, msg, self._now())
        except BadSample as e:
            self.bad_samples += 1
            self.get_logger().warning(f"{spec.topic}: {e}", throttle_duration_sec=5.0)
            return
        self.core.add_sample(name, t, arrays)

    def _tick(self) -> None:
        core = self.core
        if core is None or core.paused:
            return
        now = self._now()
        if now <= 0.0:
            return  # sim time and no /clock yet
        if self.plans and core.plannable:
            self._tick_plan(core, now)
            return
        a = core.tick(now)
        if a is None:
            # starved: a zero twist for a moment (the mux ramps the arm to rest at once, no stale
            # command runs on), then silence, so the mux and the arm's watchdog hold; the gripper stays
            if self.t_last_action is not None and now - self.t_last_action < HOLD_TWIST_S:
                self.pub_twist.publish(twist_msg(np.zeros(6), now, self.base_frame))
            return
        self.t_last_action = now
        self.pub_twist.publish(twist_msg(a[:6], now, self.base_frame))
        if len(a) > 6:
            self.pub_grip.publish(Float64(data=float(a[6])))

    def _tick_plan(self, core: PolicyServerCore, now: float) -> None:
        """A new chunk: the plan it makes with those still running, as one message. Every tick:
        the gripper's due value (a plain stream: it has no motion of its own to time)."""
        plan = core.plan(now, self._plan_version)
        if plan is not None:
            self._plan_version, offsets, actions = plan
            msg = MultiDOFJointTrajectory(joint_names=["tcp"])
            msg.header.stamp.sec, msg.header.stamp.nanosec = to_sec_ns(now)
            msg.header.frame_id = self.base_frame
            for off, a in zip(offsets, actions):
                tf = Transform()
                tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in a[:3])
                tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = (float(v) for v in a[3:7])
                pt = MultiDOFJointTrajectoryPoint(transforms=[tf])
                pt.time_from_start.sec, pt.time_from_start.nanosec = to_sec_ns(float(off))
                msg.points.append(pt)
            self.pub_plan.publish(msg)
        a = core.due_action(now)
        if a is not None and len(a) > 7:
            self.t_last_action = now
            self.pub_grip.publish(Float64(data=float(a[7])))

    def _diagnostics(self) -> None:
        st = DiagnosticStatus(name="policy_server", hardware_id=self.get_name())
        if self.core is None:
            st.level, st.message = DiagnosticStatus.WARN, "no policy loaded"
        else:
            d = self.core.diagnostics()
            d["bad_samples"] = self.bad_samples
            if hasattr(self.core.policy, "sampler"):
                pol = self.core.policy
                noise = f" noise {pol.noise_scale:g}" if pol.noise_scale != 1.0 else ""
                d["sampling"] = f"{pol.sampler} {pol.steps}{noise}"
            if self.core.error is not None or not d["inference_alive"]:
                st.level, st.message = DiagnosticStatus.ERROR, f"inference stopped: {self.core.error}"
            elif d["paused"]:
                st.level, st.message = DiagnosticStatus.OK, "paused"
            elif d["missing_streams"] or d["horizon_s"] <= 0.0:
                st.level, st.message = DiagnosticStatus.WARN, "holding: " + (
                    f"no data on {', '.join(d['missing_streams'])}" if d["missing_streams"] else "no fresh actions")
            else:
                st.level, st.message = DiagnosticStatus.OK, "running"
            for k, v in d.items():
                if isinstance(v, dict):
                    st.values += [KeyValue(key=f"{k}.{kk}", value=f"{vv:.3f}") for kk, vv in v.items()]
                else:
                    st.values.append(KeyValue(key=k, value=str(v)))
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def close(self) -> None:
        """Stops the inference thread before the process goes (never exit under a running torch call)."""
        if self.core is not None:
            self.core.stop()

    def _on_pause(self, req, res):
        if self.core is not None:
            self.core.pause()
        res.success, res.message = self.core is not None, "paused" if self.core else "no policy loaded"
        return res

    def _on_resume(self, req, res):
        if self.core is None:
            res.success, res.message = False, "no policy loaded: set the 'checkpoint' parameter first"
        elif self.core.error is not None:
            res.success, res.message = False, f"inference failed: {self.core.error}"
        else:
            self.core.resume()
            res.success, res.message = True, "running"
        return res

    def _on_load(self, req, res):
        path = str(self.get_parameter("checkpoint").value)
        try:
            self.load(path)
            res.success, res.message = True, f"loaded {path}; paused"
        except (PolicyError, OSError, KeyError, ValueError) as e:
            res.success, res.message = False, str(e)
        return res

    @staticmethod
    def _noise_scale(value: float) -> float | None:
        """The parameter's value as the policy takes it: negative means as trained."""
        return None if value < 0 else value

    def _on_params(self, params) -> SetParametersResult:
        sampling = {"sampler": self.sampler, "inference_steps": self.inference_steps, "noise_scale": self.noise_scale}
        changed = {prm.name: prm.value for prm in params if prm.name in sampling}
        if changed:  # applies to the running policy at its next inference, and to later loads
            sampling.update(changed)
            try:
                sampler, steps, scale = str(sampling["sampler"]), int(sampling["inference_steps"]), float(
                    sampling["noise_scale"])
            except (TypeError, ValueError) as e:
                return SetParametersResult(successful=False, reason=f"sampling parameters: {e}")
            policy = self.core.policy if self.core else None
            if hasattr(policy, "set_sampling"):
                try:
                    policy.set_sampling(sampler, steps, self._noise_scale(scale))
                except (PolicyError, ValueError) as e:
                    return SetParametersResult(successful=False, reason=str(e))
            self.sampler, self.inference_steps, self.noise_scale = sampler, steps, scale
        for prm in params:
            if prm.name == "checkpoint" and prm.value:
                try:
                    self.load(str(prm.value))
                except (PolicyError, OSError, KeyError, ValueError) as e:
                    return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)


def main(args=None) -> None:
    init_ros(args=args)
    node = PolicyServerNode()
    spin_main(node, on_shutdown=node.close)


if __name__ == "__main__":
    main()

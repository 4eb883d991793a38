"""arm_node: the arm controller, safety filter and monitors in front of a real arm.

``backend:=ros2_control``: reads the robot's ``/joint_states`` (joint_state_broadcaster) and
writes each period's safe joint target to the ros2_control controller the robot file names
(forward position/velocity controller or joint_trajectory_controller). It serves the same
command topics, e-stop and services as the sim (``ArmInterface``) and publishes
``/arm/ee_pose`` and ``/gripper/state`` from the measured joints; ``/joint_states`` stays the
broadcaster's. The loop (read -> step -> write) runs on the main thread at the robot file's
``ros2_control.rate`` (with ``use_sim_time``: once per joint state, as the sim steps); before
the first joint state nothing is written, and a stale one trips the monitor: hold and say
why. (The in-process sim backend lives inside ``sim_node``.)

The loop thread runs under SCHED_FIFO at ``thread_priority`` (50, as ros2_control's
controller manager; 0 leaves it ordinary), the executor thread one below it (they share the
GIL), optionally pinned to ``cpu_affinity`` (``robot_learning.control.realtime``), so the
period holds while the machine is busy.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_learning.config import load_calibration, load_robot
from robot_learning.control.backend import ArmState
from robot_learning.control.controller import ArmController
from robot_learning.control.kinematics import Kinematics
from robot_learning.control.loop import PacedLoop
from robot_learning.control.realtime import make_realtime
from robot_learning.control.ros2_control import SILENT_S, CommandOutput, JointStateInput, load_ros2_control
from robot_learning.description import urdf
from robot_learning_ros.arm_interface import ArmInterface
from robot_learning_ros.msgs import COMMAND_QOS, LATEST_QOS, from_stamp, to_sec_ns
from robot_learning_ros.runtime import BackgroundSpin, init_ros, lenient_params, run_then_clean_up

BACKENDS = ("ros2_control",)


class Ros2ControlBackend:
    """ArmBackend over a ros2_control robot's topics (the ``ArmBackend`` protocol)."""

    def __init__(self, node: Node, robot, clock):
        self.node, self.robot = node, robot
        self.cfg = load_ros2_control(robot)
        sim_time = bool(node.get_parameter("use_sim_time").value)
        self.input = JointStateInput(robot, self.cfg, clock, sim_time=sim_time)
        self.output = CommandOutput(robot, self.cfg)
        self.clock = clock
        node.create_subscription(JointState, self.cfg.joint_states, self._on_joint_state, LATEST_QOS)
        arm = self.cfg.arm
        typ = JointTrajectory if arm.interface == "joint_trajectory" else Float64MultiArray
        self.pub_arm = node.create_publisher(typ, arm.topic, COMMAND_QOS)
        self.pub_gripper = (node.create_publisher(Float64MultiArray, self.cfg.gripper.topic, COMMAND_QOS)
                            if self.cfg.gripper else None)
        self._msg_arm = typ()
        if arm.interface == "joint_trajectory":
            self._msg_arm.joint_names = list(arm.joints)
            self._msg_arm.points = [JointTrajectoryPoint()]
            ahead = 2.0 / self.cfg.rate  # due two periods ahead: a late period never runs it dry
            sec, ns = to_sec_ns(ahead)
            self._msg_arm.points[0].time_from_start.sec, self._msg_arm.points[0].time_from_start.nanosec = sec, ns
        self._msg_gripper = Float64MultiArray()
        self._last_opening: float | None = None
        self.on_state = None  # called with the stamp of each arm state, on the executor thread

    def _on_joint_state(self, m: JointState) -> None:
        t = from_stamp(m.header.stamp)
        if self.input.update(list(m.name), m.position, m.velocity, m.effort, t) and self.on_state is not None:
            self.on_state(t)

    def now(self) -> float:
        return self.clock()

    def read_state(self) -> ArmState:
        return self.input.read()

    def write_command(self, q: np.ndarray, gripper_opening: float) -> None:
        values = self.output.arm(q).tolist()  # plain floats: ints serialize to garbage in these wheels
        if self.cfg.arm.interface == "joint_trajectory":
            self._msg_arm.points[0].positions = values
        else:
            self._msg_arm.data = values
        self.pub_arm.publish(self._msg_arm)
        if self.pub_gripper is not None and gripper_opening != self._last_opening:
            self._msg_gripper.data = self.output.gripper(gripper_opening).tolist()
            self.pub_gripper.publish(self._msg_gripper)
            self._last_opening = gripper_opening


class ArmNode(Node):
    def __init__(self):
        super().__init__("arm")
        p = lenient_params(self)
        backend = str(p("backend", "ros2_control").value)
        if backend not in BACKENDS:
            raise ValueError(f"backend '{backend}' is not one of {', '.join(BACKENDS)} "
                             "(the simulated arm runs inside sim_node; start that instead)")
        self.robot = load_robot(p("robot", "hardware/robots/panda.yaml").value)
        self.backend = Ros2ControlBackend(self, self.robot, self.now)
        rate = self.backend.cfg.rate
        self.ctl = ArmController(self.robot, 1.0 / rate, log=lambda msg: self.get_logger().warning(msg))
        calibration = str(p("calibration", "calibration/workcell.yaml").value)
        self.arm = ArmInterface(self, self.ctl, self.now, self._state_for_reset, joint_states=False,
                                description=urdf(self.robot, load_calibration(calibration) if calibration else None))
        self.loop = PacedLoop(rate)
        self.thread_priority = int(p("thread_priority", 50).value)
        self.cpu_affinity = [int(c) for c in p("cpu_affinity", [-1]).value if int(c) >= 0]
        self.scheduling = "not started"
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_due = time.monotonic() + 1.0  # from the loop, on the wall clock: /clock may stop
        self._synced = False
        # /arm/ee_pose and /gripper/state for every joint state, as it arrives (the rate of the
        # robot's state, whatever the loop's timing), with their own kinematics: not thread-safe
        self._kin_pub = Kinematics(self.robot)
        self.backend.on_state = self._publish_measured
        self.get_logger().info(
            f"arm '{self.robot.name}' via ros2_control: {self.backend.cfg.joint_states} in, "
            f"{self.backend.cfg.arm.interface} on {self.backend.cfg.arm.topic} out at {rate:.0f} Hz")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _state_for_reset(self) -> ArmState:
        return self.backend.read_state()

    def tick(self) -> None:
        """One period: read -> step -> write, then the arm's state topics."""
        inp = self.backend.input
        if time.monotonic() >= self._diag_due:
            self._diag_due += 1.0
            self._diagnostics()
        if not inp.has_state():
            self.get_logger().warning(f"waiting for {self.backend.cfg.joint_states}: nothing is sent to the arm "
                                      "until its state is known", throttle_duration_sec=5.0)
            return
        state = self.backend.read_state()
        if not self._synced:
            with self.arm.lock:
                self.ctl.sync(state)
            self._synced = True
            self.get_logger().info("joint state received: holding the measured position")
        # on sim time the joint states are the robot's clock (a backlog of them on a busy host
        # must not read as stale); on a real robot, the node's clock
        now = state.stamp if inp.sim_time and np.isfinite(state.stamp) else self.now()
        q, opening = self.arm.step(state, now)
        self.backend.write_command(q, opening)

    def _publish_measured(self, stamp: float) -> None:
        state = self.backend.input.read()
        self.arm.publish_state(state, self._kin_pub.fk(state.q), stamp)

    def run_on_states(self, running) -> None:
        """The loop on sim time: one period per joint state, as the sim steps. A wall-clock loop
        would command a sim running below real time faster than it moves (and trip the tracking
        monitor); the robot's own clock sets the period, as ros2_control's update loop does."""
        inp = self.backend.input
        seq, last = 0, -np.inf
        period = 1.0 / self.backend.cfg.rate
        while running():
            if inp.wait_newer(seq, timeout=0.05):
                seq = inp.seq
                # at most one period per period of the sim's time: states that queued up on a
                # busy host and arrive in a burst must not become a burst of commands (the sim
                # would take several periods' motion in one step: over the speed limit)
                now = max(self.now(), inp.read().stamp)
                if now >= last + 0.9 * period:
                    last = now
                    self.tick()
            elif inp.has_state() and inp.age() >= SILENT_S:
                self.tick()  # the hardware side went silent: the monitor trips, the arm holds

    def _diagnostics(self) -> None:
        inp = self.backend.input
        st = DiagnosticStatus(name="arm", hardware_id=self.robot.name, level=DiagnosticStatus.OK, message="running")
        fault = self.ctl.fault
        if not inp.has_state():
            st.level, st.message = DiagnosticStatus.WARN, f"no joint state on {self.backend.cfg.joint_states} yet"
        elif fault:
            st.level, st.message = DiagnosticStatus.ERROR, f"protective stop: {fault}"
        jit = self.loop.jitter()
        st.values = [KeyValue(key=k, value=v) for k, v in (
            ("mode", self.ctl.mode.value),
            ("state_age_s", f"{inp.age():.4f}" if inp.has_state() else "inf"),
            ("period_jitter_p99_ms", f"{jit['p99_ms']:.3f}"), ("period_jitter_max_ms", f"{jit['max_ms']:.3f}"),
            ("overruns", str(self.loop.overruns)), ("malformed_joint_states", str(inp.malformed)),
            ("scheduling", self.scheduling))]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp.sec, msg.header.stamp.nanosec = to_sec_ns(self.now())
        self.pub_diag.publish(msg)


def main(args=None) -> None:
    init_ros(args=args)
    node = ArmNode()
    spin = BackgroundSpin(node)
    stop = threading.Event()
    running = lambda: rclpy.ok() and not stop.is_set()  # noqa: E731
    node.scheduling = make_realtime(node.thread_priority, node.cpu_affinity, log=node.get_logger().warning)
    if node.scheduling.startswith("SCHED_FIFO"):
        # the executor thread too, one step below: it shares the GIL with the loop, and an
        # ordinary thread preempted while holding it would hold the loop up (priority inversion)
        make_realtime(max(node.thread_priority - 1, 1), node.cpu_affinity, tid=spin.thread.native_id)
    node.get_logger().info(f"control loop: {node.scheduling}")
    loop = (lambda: node.run_on_states(running)) if node.backend.input.sim_time else (
        lambda: node.loop.run(node.tick, running))

    def clean_up() -> None:
        stop.set()
        spin.close()

    run_then_clean_up(loop, clean_up)  # a publish racing the shutdown of a signalled process is a stop
    if spin.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""sim_node: the MuJoCo workcell behind the real robot's ROS 2 interfaces.

Publishes what the arm, camera and tactile drivers publish (stamped with the simulated
clock, which starts at the wall-clock time of launch and is also published on /clock) and
takes the arm controller's command topics. Sim-only extras live under /sim: object poses
(ground truth), the task's success flag, a reset service, and once a wall second
/sim/diagnostics (diagnostic_msgs/DiagnosticArray): the real-time factor reached, with a
warning when the machine cannot keep up with the one asked for.

With ``hardware:=true`` it stands in for a robot behind ros2_control instead: no controller
of ours inside, ``/joint_states`` as joint_state_broadcaster publishes it, and the command
topic of the controller named in the robot file's ``ros2_control`` section
(``robot_learning.sim.hardware``); the arm node (``backend:=ros2_control``) then drives it
exactly as it would drive a real arm; ``lockstep:=true`` (the default; the launch files pass
``use_sim_time``) waits after each joint state for the arm node's command before stepping on
(``CommandLockstep``). ``camera_namespace:=sim`` moves the renders to
``/sim/<camera>/...``, where camera nodes stream them through librealsense as a real
RealSense's frames (``camera_node``'s ``software_source``) and publish them at the driver's
names.

``randomization:=sim/randomization.yaml`` draws each episode's physics, lights, colours and
camera mountings from its seed (``robot_learning.sim.randomize``) and says what it drew on the
latched ``/sim/randomization`` (std_msgs/String, JSON) at every reset; sensor noise and
latency injection are the gym env's (a node publishes what the simulated sensors measure).

``clock_display:=front`` puts a clock display (``robot_learning.calibrate.clock_display``) in
front of that camera, showing the sim's time at every capture, and ``camera_latency:=0.03``
stamps frames that much after the instant they show: what ``robot-learning calibrate
camera-latency --sim`` measures against the truth.

``rgb_camera.color_profile:=320x240x30`` (realsense-ros's parameter and format; the launch
files' ``color_profile:=``) streams every camera at that size and rate, the same view.
Software rendering takes less CPU for fewer pixels (two cameras at 30 Hz: 0.6 of a core at
640x480, half that at 320x240, measured in docs/learning.md), so these are the smaller cameras
that the warning below asks for on a machine the sim cannot keep up on. The default ``0,0,0``
keeps the calibration's size and the workcell's camera rate.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robot_learning.calibrate.sim_views import SimClockDisplay, clock_display_mjcf
from robot_learning.control.ros2_control import load_ros2_control
from robot_learning.description import FT_FRAME, urdf
from robot_learning.devices.camera import parse_profile
from robot_learning.sim.hardware import CommandLockstep, ControllerRejected, SimControllers
from robot_learning.sim.render import AsyncCameras, camera_specs
from robot_learning.sim.topics import arm_state_arrays
from robot_learning.sim.workcell import Workcell
from robot_learning_ros.arm_interface import ArmInterface
from robot_learning_ros.msgs import (
    COMMAND_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    STATE_QOS,
    camera_info_msg,
    from_stamp,
    image_msg,
    joint_state_msg,
    pose_msg,
    to_sec_ns,
    wrench_msg,
)
from robot_learning_ros.runtime import BackgroundSpin, init_ros, lenient_params, run_then_clean_up

# Paced to real time, the sim makes up a lag up to this long (sleep jitter, a slow step) and lets
# a longer one go: catching up 0.5 s in a burst ran a second of wall time at 1.28x real time, and
# a policy reading the clock would see time rush.
CATCH_UP_S = 0.05


class Rate:
    """Fires every ``1 / hz`` seconds of simulated time."""

    def __init__(self, hz: float):
        self.period = 1.0 / hz if hz > 0 else float("inf")
        self.next = 0.0

    def due(self, t: float) -> bool:
        if t + 1e-9 < self.next:
            return False
        self.next = max(self.next + self.period, t)
        return True


class SimNode(Node):
    def __init__(self):
        super().__init__("sim")
        p = lenient_params(self)
        task = p("task", "pick_place").value
        self.seed = int(p("seed", 0).value)
        self.rtf = float(p("real_time_factor", 1.0).value)
        cams = str(p("cameras", "front,wrist").value)
        self.depth = bool(p("depth", True).value)
        camera_rate = float(p("camera_rate", 0.0).value)
        width, height, fps = parse_profile(str(p("rgb_camera.color_profile", "0,0,0").value))
        tactile_rate = float(p("tactile_rate", 0.0).value)
        # /joint_states, /arm/ee_pose, /gripper/state and /clock: every control step unless set lower
        state_rate = float(p("state_rate", 0.0).value)
        # calibration self-check: a clock display in front of a camera, and frames stamped this
        # many seconds after the instant they show (as a driver that stamps on arrival does)
        clock_display = str(p("clock_display", "none").value).strip()
        clock_display = "" if clock_display == "none" else clock_display
        self.camera_latency = float(p("camera_latency", 0.0).value)
        randomization = str(p("randomization", "none").value).strip()
        self.cell = Workcell(
            task,
            robot_path=p("robot", "hardware/robots/panda.yaml").value,
            calibration_path=p("calibration", "calibration/workcell.yaml").value,
            log=lambda msg: self.get_logger().warning(msg),
            randomization=None if randomization in ("", "none") else randomization,
            extra=clock_display_mjcf() if clock_display else ("", ""),
        )
        cfg = self.cell.cfg
        if width or height:
            self.cell.calib = self.cell.calib.at_size(width, height)
        camera_rate = fps or camera_rate
        # "none" (or empty) turns cameras off; `ros2 launch` refuses an empty name:=value
        self.cameras = [c for c in (s.strip() for s in cams.split(",")) if c and c != "none"]
        for c in self.cameras:
            if c not in self.cell.calib.cameras:
                raise ValueError(f"camera '{c}' is not in {self.cell.calib.source}: "
                                 f"choose from {', '.join(self.cell.calib.cameras)}")
        self.cam_rate = Rate(camera_rate or cfg["camera_rate"])
        self.tac_rate = Rate(tactile_rate or cfg["tactile_rate"])
        self.state_rate = Rate(state_rate or 1.0 / self.cell.control_dt)
        self.episode = 0
        self.cell.reset(self.seed)
        self.clock_display = None
        if clock_display:
            if clock_display not in self.cameras or self.cell.calib.cameras[clock_display].parent != "world":
                raise ValueError(f"clock_display '{clock_display}': name a fixed camera that is on "
                                 f"(cameras: {', '.join(self.cameras) or 'none'})")
            self.clock_display = SimClockDisplay(self.cell)
            self.clock_display.place_in_front_of(clock_display)
        self.origin = time.time()  # sim time 0 is the wall-clock time of launch
        self.hardware = bool(p("hardware", False).value)
        # hardware mode: step in time with the arm node's commands (sim.hardware.CommandLockstep)
        self.lockstep = CommandLockstep() if self.hardware and bool(p("lockstep", True).value) else None
        self.arm = None if self.hardware else ArmInterface(self, self.cell.controller, self.now,
                                                           self.cell.backend.read_state,
                                                           description=urdf(self.cell.robot, self.cell.calib))
        if self.hardware:
            self._hardware_interfaces()

        self.pub_clock = self.create_publisher(Clock, "/clock", 10)
        self.pub_wrench = self.create_publisher(WrenchStamped, "/arm/wrench", STATE_QOS)  # the wrist F/T
        self._msg_wrench = WrenchStamped()
        self.pub_cam = {}
        cam_ns = str(p("camera_namespace", "").value).strip("/")
        cam_ns = f"/{cam_ns}" if cam_ns else ""
        for c in self.cameras:
            self.pub_cam[c] = (
                self.create_publisher(Image, f"{cam_ns}/{c}/color/image_raw", SENSOR_QOS),
                self.create_publisher(CameraInfo, f"{cam_ns}/{c}/color/camera_info", SENSOR_QOS),
                self.create_publisher(Image, f"{cam_ns}/{c}/aligned_depth_to_color/image_raw", SENSOR_QOS)
                if self.depth else None,
            )
        self.async_cams = None
        self._frame_msgs: dict[str, tuple[Image, CameraInfo, Image]] = {}  # the camera-publish thread's
        if self.cameras:  # each camera drawn on its own render thread, overlapping the physics
            self.async_cams = AsyncCameras(self.cell.model, camera_specs(self.cell.calib, self.cameras, self.depth),
                                           self._publish_frame)
        self.pub_taxels = {n: self.create_publisher(Image, f"/tactile/{n}/taxels", STATE_QOS)
                           for n in self.cell.tactile.names}
        self.pub_tac_wrench = {n: self.create_publisher(WrenchStamped, f"/tactile/{n}/wrench", STATE_QOS)
                               for n in self.cell.tactile.names}
        self.pub_obj = {b: self.create_publisher(PoseStamped, f"/sim/objects/{b}/pose", STATE_QOS)
                        for b in self.cell.task.object_bodies}
        self.pub_success = self.create_publisher(Bool, "/sim/task/success", LATCHED_QOS)
        self.pub_draw = self.create_publisher(String, "/sim/randomization", LATCHED_QOS)
        self._publish_draw()
        self.pub_diag = self.create_publisher(DiagnosticArray, "/sim/diagnostics", 10)
        self._diag_last = (0.0, 0.0, 0)  # (wall, sim time, frames) at the last report; set as the loop starts
        self._frames = 0
        # the control loop's messages, refilled in place (see msgs.pose_msg): it publishes ~1900 per sim second
        self._msg_clock = Clock()
        self._msg_taxels = {n: Image() for n in self.cell.tactile.names}
        self._msg_tac_wrench = {n: WrenchStamped() for n in self.cell.tactile.names}
        self._msg_obj = {b: PoseStamped() for b in self.cell.task.object_bodies}
        self.create_service(Trigger, "/sim/reset", self._on_reset)
        self._reset_request = threading.Event()
        self._reset_done = threading.Event()
        self._last_success: bool | None = None
        self.get_logger().info(
            f"workcell '{task}' up: control {1 / self.cell.control_dt:.0f} Hz, cameras {self.cameras or 'off'} "
            f"at {1 / self.cam_rate.period:.0f} Hz, tactile {1 / self.tac_rate.period:.0f} Hz, "
            f"real-time factor {'max' if self.rtf <= 0 else self.rtf}")

    def _hardware_interfaces(self) -> None:
        """What a ros2_control robot offers: the broadcaster's joint states and a controller's topic."""
        cell = self.cell
        rc = load_ros2_control(cell.robot)
        st = cell.backend.read_state()
        self.controllers = SimControllers(cell.robot, rc, st.q, st.gripper_opening)
        self.hw_lock = threading.Lock()
        self.hw_joint_names = cell.robot.joint_names + cell.robot.gripper.joint_names
        self.pub_hw_js = self.create_publisher(JointState, rc.joint_states, STATE_QOS)
        self._msg_hw_js = JointState()
        if rc.arm.interface == "joint_trajectory":
            self.create_subscription(JointTrajectory, rc.arm.topic, self._on_hw_trajectory, COMMAND_QOS)
        else:
            self.create_subscription(Float64MultiArray, rc.arm.topic,
                                     lambda m: self._hw(lambda: self.controllers.command_arm(m.data, self.now()),
                                                        arm=True),
                                     COMMAND_QOS)
        if rc.gripper is not None:
            self.create_subscription(Float64MultiArray, rc.gripper.topic,
                                     lambda m: self._hw(lambda: self.controllers.command_gripper(m.data)),
                                     COMMAND_QOS)
        self.get_logger().info(f"hardware mode: {rc.joint_states} out, {rc.arm.interface} commands on "
                               f"{rc.arm.topic} in; no controller or safety filter of ours runs here")

    def _hw(self, fn, arm: bool = False) -> None:
        with self.hw_lock:
            try:
                fn()
            except ControllerRejected as e:
                self.get_logger().warning(f"controller refused a command: {e}", throttle_duration_sec=1.0)
        if arm and self.lockstep:
            self.lockstep.arrived()  # refused or not, the arm node answered

    def _on_hw_trajectory(self, m: JointTrajectory) -> None:
        try:
            times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points]
            pts = [list(p.positions) for p in m.points]
        except ValueError:
            return
        self._hw(lambda: self.controllers.command_trajectory(list(m.joint_names), times, pts,
                                                             from_stamp(m.header.stamp), self.now()), arm=True)

    def _step_hardware(self) -> None:
        """One control period of the robot itself: its controllers' targets to the servos."""
        with self.hw_lock:
            q, opening = self.controllers.targets(self.now(), self.cell.control_dt)
        self.cell.backend.write_command(q, opening)
        self.cell.physics_step()

    def now(self) -> float:
        return self.origin + self.cell.time

    def _on_reset(self, req, res):
        """Runs on the executor thread; the loop thread does the reset between steps."""
        self._reset_done.clear()
        self._reset_request.set()
        self._reset_done.wait(timeout=10.0)
        res.success = True
        res.message = json.dumps({"episode": self.episode, "seed": self.cell.episode_seed})
        return res

    def _publish_draw(self) -> None:
        self.pub_draw.publish(String(data=json.dumps({"seed": self.cell.episode_seed, **self.cell.draw.values})))

    def loop(self) -> None:
        """Step physics at the control period, publish on the sensors' own rates, pace to rtf."""
        cell = self.cell
        wall0, sim0 = time.monotonic(), cell.time
        self._diag_last = (wall0, sim0, self._frames)
        while rclpy.ok():
            if self._reset_request.is_set():
                self.episode += 1
                with self.hw_lock if self.hardware else self.arm.lock:
                    cell.reset(self.seed + self.episode, keep_arm=self.hardware)
                    if self.hardware:
                        st = cell.backend.read_state()
                        self.controllers.reset(st.q, st.gripper_opening)
                self._last_success = None
                self._publish_draw()
                self._reset_request.clear()
                self._reset_done.set()
            if self.hardware:
                self._step_hardware()
            else:
                cell.step_control(self.arm.step, self.origin)
            mark = self.lockstep.mark() if self.lockstep else 0
            if self._publish(self.now()) and self.lockstep:
                self.lockstep.wait(mark)  # the arm node's answer to this state, before the next step
            wall = time.monotonic()
            if wall - self._diag_last[0] >= 1.0:
                self._diagnostics(wall)
            if self.rtf > 0:
                ahead = (cell.time - sim0) / self.rtf - (wall - wall0)
                if ahead > 0:
                    time.sleep(ahead)
                elif ahead < -CATCH_UP_S:  # behind (a busy machine): go on from here, no burst
                    wall0, sim0 = wall, cell.time

    def _publish(self, t: float) -> bool:
        """The streams due at ``t``; True if a joint state went out."""
        cell = self.cell
        state_due = self.state_rate.due(cell.time)
        if state_due:
            self._msg_clock.clock.sec, self._msg_clock.clock.nanosec = to_sec_ns(t)
            self.pub_clock.publish(self._msg_clock)
            if self.hardware:  # joint_state_broadcaster: every joint, arm and gripper, in one message
                joints, _ = arm_state_arrays(cell.backend.read_state())
                self.pub_hw_js.publish(joint_state_msg(self.hw_joint_names, joints["position"],
                                                       joints["velocity"], joints["effort"], t,
                                                       reuse=self._msg_hw_js))
            else:
                self.arm.publish_state(cell.backend.read_state(), cell.tcp_pose(), t)
        if self.tac_rate.due(cell.time):
            self.pub_wrench.publish(wrench_msg(cell.wrist_wrench(), t, FT_FRAME, reuse=self._msg_wrench))
            grids = cell.tactile_grids()
            for n, g in grids.items():
                self.pub_taxels[n].publish(image_msg(g, "32FC3", t, f"{n}_pad", reuse=self._msg_taxels[n]))
                net = np.concatenate((g.reshape(-1, 3).sum(0), np.zeros(3)))
                self.pub_tac_wrench[n].publish(wrench_msg(net, t, f"{n}_pad",
                                                          reuse=self._msg_tac_wrench[n]))
            for b, (pos, quat) in cell.object_poses().items():
                self.pub_obj[b].publish(pose_msg(pos, quat, t, cell.robot.base_frame,
                                                 reuse=self._msg_obj[b]))
            success = cell.success()
            if success != self._last_success:
                self.pub_success.publish(Bool(data=success))
                self._last_success = success
        if self.async_cams is not None and self.cam_rate.due(cell.time):
            if self.async_cams.error is not None:
                raise RuntimeError(f"camera rendering failed: {self.async_cams.error}")
            if self.clock_display is not None:
                self.clock_display.show(t)
            self.async_cams.capture(cell.data, t + self.camera_latency)
        return state_due

    def _diagnostics(self, wall: float) -> None:
        """Real-time factor and camera frame rate over the last wall second."""
        last, self._diag_last = self._diag_last, (wall, self.cell.time, self._frames)
        rtf = (self.cell.time - last[1]) / (wall - last[0])
        st = DiagnosticStatus(name="sim", hardware_id=self.get_name(), level=DiagnosticStatus.OK, message="running")
        if self.rtf > 0 and rtf < 0.9 * self.rtf:
            st.level = DiagnosticStatus.WARN
            st.message = (f"running at {rtf:.2f}x real time, below the {self.rtf:g}x asked for: this machine "
                          "cannot keep up (fewer cameras, smaller ones with color_profile:=320x240x30, "
                          "or cameras:=none make it faster)")
        st.values = [KeyValue(key=k, value=v) for k, v in (
            ("real_time_factor", f"{rtf:.3f}"),
            ("real_time_factor_target", "max" if self.rtf <= 0 else f"{self.rtf:g}"),
            ("sim_time", f"{self.cell.time:.3f}"), ("wall_time", f"{wall:.3f}"),
            ("camera_frames_per_s", f"{(self._frames - last[2]) / (wall - last[0]):.1f}"))]
        if self.lockstep:  # hardware mode: how often the sim waited for the arm node, and gave up
            st.values += [KeyValue(key="lockstep_waits", value=str(self.lockstep.waits)),
                          KeyValue(key="lockstep_timeouts", value=str(self.lockstep.timeouts))]
        if st.level == DiagnosticStatus.WARN:
            self.get_logger().warning(st.message, throttle_duration_sec=30.0)
        msg = DiagnosticArray(status=[st])
        msg.header.stamp.sec, msg.header.stamp.nanosec = to_sec_ns(self.now())
        self.pub_diag.publish(msg)

    def _publish_frame(self, cam: str, t: float, rgb: np.ndarray, depth_mm: np.ndarray | None) -> None:
        """Runs on the camera-publish thread: the frame shows the world at ``t``, its capture time.

        Each camera's three messages are built once and refilled: a 640x480 frame costs one
        copy into its message, not a fresh megabyte buffer per frame."""
        optical = f"{cam}_color_optical_frame"
        img, info, depth = self.pub_cam[cam]
        if cam not in self._frame_msgs:
            cal = self.cell.calib.cameras[cam]
            self._frame_msgs[cam] = (Image(), camera_info_msg(cal.width, cal.height, cal.fovy_deg, t, optical),
                                     Image())
        img_msg, info_msg, depth_msg = self._frame_msgs[cam]
        self._frames += 1
        img.publish(image_msg(rgb, "rgb8", t, optical, reuse=img_msg))
        info_msg.header.stamp = img_msg.header.stamp
        info.publish(info_msg)
        if depth is not None and depth_mm is not None:
            depth.publish(image_msg(depth_mm, "16UC1", t, optical, reuse=depth_msg))


def main(args=None) -> None:
    """Run the workcell until Ctrl-C or SIGTERM; any further signal cannot interrupt the clean-up
    (camera threads must free their GL contexts before the interpreter exits, or it aborts)."""
    from robot_learning_ros.runtime import stop_on_first_signal, use_headless_gl

    use_headless_gl()  # no display: EGL or OSMesa instead of GLFW, which would hang the cameras
    stop_on_first_signal()
    init_ros(args=args)
    node = SimNode()
    spin = BackgroundSpin(node)

    def clean_up() -> None:
        if node.async_cams is not None:
            node.async_cams.close()
        spin.close()
        node.cell.close()

    run_then_clean_up(node.loop, clean_up)
    if spin.failed:
        raise SystemExit(1)

if __name__ == "__main__":
    main()

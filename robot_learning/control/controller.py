"""The arm controller: every command mode ends in one joint target per control period,
and that target always passes the safety filter before the backend sees it.

Modes: twist (streamed TCP velocity), pose (streamed or one-shot TCP target), joint
trajectory (points with time_from_start), TCP plan (poses with time_from_start: how a
policy's chunk reaches the arm, executed at the arm's own rate), hold. Streaming modes are watched: without a
fresh command within ``command_timeout`` the arm holds. The e-stop latches until
``reset_estop`` is called explicitly. What the joints actually do is watched too
(``monitor.JointMonitor``): a trip holds where the arm is and latches a protective stop until
``reset_protective_stop``.

Trajectory timing follows ros2_control's joint_trajectory_controller: ``start`` (the
message's ``header.stamp``) of zero means now; a start in the future waits, the running
motion carrying on until then; a start in the past drops the points already due and
reaches the next one at its own due time from where the arm is; a trajectory that has
already ended is refused. The target always lies on a segment between the commanded
position the trajectory began from and its points, never beyond them. A TCP plan keeps the
same timing; a new plan starts from where the running one has the TCP now, so replanning
blends without a jump.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robot_learning.config import RobotConfig
from robot_learning.control.backend import ArmState
from robot_learning.control.kinematics import Kinematics, damped_pinv_step
from robot_learning.control.monitor import JointMonitor
from robot_learning.control.safety import CommandRejected, SafetyFilter, require_finite
from robot_learning.transforms import axis_angle_quat, orientation_error, quat_mul, quat_slerp, quat_to_mat

# A Cartesian command this many times over its speed limit is a bug (units, a bad scale, an
# uninitialized value), not a request to move at the limit: refused rather than clipped.
IMPLAUSIBLE_SPEED = 10.0


class Mode(enum.Enum):
    HOLD = "hold"
    TWIST = "twist"
    POSE = "pose"
    TRAJECTORY = "trajectory"
    TCP_PLAN = "tcp_plan"
    ESTOP = "estop"
    PROTECTIVE_STOP = "protective_stop"


@dataclass
class Trajectory:
    start: float           # controller time that ``times`` count from
    times: np.ndarray      # (k,) seconds from start, increasing, first > 0
    points: np.ndarray     # (k, dof) joint positions, or (k, 7) TCP poses [x y z qw qx qy qz]
    t_begin: float = 0.0   # seconds from start at which the arm left ``q0``
    q0: np.ndarray | None = None  # the commanded position (or TCP pose) it began from, set when it begins
    tcp: bool = False      # a TCP plan rather than a joint trajectory


class ArmController:
    """Turns commands into safe joint targets at a fixed control period."""

    POSE_GAIN = 4.0        # 1/s, pose error to TCP velocity
    NULLSPACE_GAIN = 1.0   # 1/s, pulls the redundant joint towards home ...
    NULLSPACE_SPEED = 0.1  # ... at most this fraction of each joint's speed limit
    TWIST_GAIN = 10.0      # 1/s, a twist's reference pose error to TCP velocity
    TWIST_LEAD = (0.005, 0.05)  # m, rad: the reference leads the commanded TCP by at most this

    def __init__(self, robot: RobotConfig, dt: float, log: Callable[[str], None] | None = None):
        self.robot = robot
        self.dt = dt
        self.kin = Kinematics(robot)
        self._log = log or (lambda msg: None)
        self.safety = SafetyFilter(robot.limits, self.kin, dt, log=self._log)
        self.monitor = JointMonitor(robot.limits)
        self.base_frames = {"", robot.base_frame, "world"}
        self.tool_frames = {robot.ee_frame, "tool", "tcp"}
        self.mode = Mode.HOLD
        self.twist = np.zeros(6)
        self.pose_target: tuple[np.ndarray, np.ndarray] | None = None
        self.traj: Trajectory | None = None
        self.pending: Trajectory | None = None  # a trajectory whose start lies in the future
        self.last_command = -np.inf
        self.gripper = 0.0  # 0 open .. 1 closed
        self.estopped = False
        self.fault: str | None = None  # why the protective stop is latched
        self.timed_out = False
        self._q_sent: np.ndarray | None = None  # last joint target sent to the backend
        self._twist_ref: tuple[np.ndarray, np.ndarray] | None = None  # where the twists so far lead the TCP

    # ---- start-up -------------------------------------------------------------------
    def sync(self, state: ArmState, clear_fault: bool = False) -> None:
        """Adopt the measured position as the held one (start-up, e-stop reset, a sim reset;
        ``clear_fault`` only where the arm was put somewhere new, as a sim reset does)."""
        self.safety.reset(state.q, new_start=clear_fault)
        self.monitor.reset()
        self._q_sent = None
        self.traj = self.pending = None
        if clear_fault:
            self.fault = None
        self.hold()

    # ---- commands (each validated, then stored; ``step`` acts on them) --------------
    def _accept(self, now: float) -> None:
        if self.estopped:
            raise CommandRejected("e-stop is latched: call reset_estop before commanding the arm")
        if self.fault:
            raise CommandRejected(f"protective stop is latched ({self.fault}): "
                                  "call reset_protective_stop before commanding the arm")
        self.last_command = now
        self.timed_out = False
        self.pending = None  # the newest command wins over a trajectory still waiting to start

    def refuse(self, now: float, reason: str) -> None:
        """Record and log (rate-limited) a command refused before it reached the controller."""
        self.safety.reject(now, reason)

    def _refuse(self, now: float, err: CommandRejected) -> None:
        self.refuse(now, str(err))
        raise err

    def _check_stamp(self, what: str, stamp: float, now: float) -> None:
        """A streamed command stamped longer ago than ``command_max_age`` is stale: executing it
        would move the arm on information the sender has long replaced. Zero means unstamped.
        (Not the watchdog's 0.25 s: a sender on sim time stamps with the newest /clock it has
        processed, which on a busy host lags the sim by a few tenths of a second.)"""
        age = now - stamp
        if stamp > 0 and age > self.robot.limits.command_max_age:
            raise CommandRejected(
                f"{what}: stamped {age:.3f} s ago, older than {self.robot.limits.command_max_age:.2f} s: "
                "a stale command is not executed (is the sender on this clock? use_sim_time)")

    def command_twist(self, twist: np.ndarray, now: float, frame: str = "", stamp: float = 0.0) -> None:
        """TCP velocity [vx vy vz wx wy wz] in ``frame``: the base frame ('' or its name) or
        the TCP frame (``ee_frame``); any other frame is refused, never guessed."""
        try:
            twist = np.asarray(twist, dtype=float).reshape(6)
            require_finite("twist", twist)
            if frame not in self.base_frames and frame not in self.tool_frames:
                raise CommandRejected(
                    f"twist: unknown frame_id '{frame}': use '{self.robot.base_frame}' (or '') for the "
                    f"base frame or '{self.robot.ee_frame}' for the tool frame")
            lim = self.robot.limits
            for part, limit, unit in ((twist[:3], lim.max_linear_speed, "m/s"),
                                      (twist[3:], lim.max_angular_speed, "rad/s")):
                if np.max(np.abs(part)) > IMPLAUSIBLE_SPEED * limit:
                    raise CommandRejected(
                        f"twist: component of {np.max(np.abs(part)):.3g} {unit} is over {IMPLAUSIBLE_SPEED:g}x "
                        f"the speed limit ({limit:g} {unit}): refused, not clipped (check units and scaling)")
            self._check_stamp("twist", stamp, now)
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        if frame in self.tool_frames:
            rot = quat_to_mat(self.kin.fk(self.safety.q)[1])
            twist = np.concatenate([rot @ twist[:3], rot @ twist[3:]])
        if self.mode != Mode.TWIST:
            self._twist_ref = None
        self.twist = self._clip_speed(twist)
        self.mode = Mode.TWIST

    def command_pose(self, pos: np.ndarray, quat: np.ndarray, now: float, frame: str = "",
                     stamp: float = 0.0) -> None:
        """TCP target (base frame, quaternion w x y z), approached at bounded speed."""
        try:
            if frame not in self.base_frames:
                raise CommandRejected(f"pose: frame_id '{frame}' is not the base frame '{self.robot.base_frame}'")
            pos = np.asarray(pos, dtype=float).reshape(3)
            quat = np.asarray(quat, dtype=float).reshape(4)
            require_finite("pose", pos, quat)
            if not np.isclose(np.linalg.norm(quat), 1.0, atol=0.05):
                raise CommandRejected("pose: orientation is not a unit quaternion")
            if not self.safety.in_workspace(pos):
                raise CommandRejected(f"pose: target {np.round(pos, 3).tolist()} is outside the workspace box")
            self._check_stamp("pose", stamp, now)
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        self.pose_target = (pos, quat / np.linalg.norm(quat))
        self.mode = Mode.POSE

    def check_trajectory(self, joint_names: list[str], times: np.ndarray,
                         points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Times and points (in this arm's joint order) of a trajectory that may run, or
        CommandRejected. Reads only the limits, so a node can run it before taking the lock
        the control loop needs: a long trajectory never stalls the loop."""
        times = np.asarray(times, dtype=float).reshape(-1)
        points = np.asarray(points, dtype=float)
        require_finite("trajectory", times, points)
        if points.ndim != 2 or points.shape[0] != times.size or times.size == 0:
            raise CommandRejected("trajectory: need one time_from_start per point and at least one point")
        if sorted(joint_names) != sorted(self.robot.joint_names) or points.shape[1] != self.robot.dof:
            raise CommandRejected(
                f"trajectory: joint_names must be exactly {self.robot.joint_names}, got {joint_names}")
        order = [joint_names.index(j) for j in self.robot.joint_names]
        points = points[:, order]
        if times[0] <= 0 or np.any(np.diff(times) <= 0):
            raise CommandRejected("trajectory: time_from_start must be positive and increasing")
        why = self.safety.check_joint_targets(points)
        if why:
            raise CommandRejected(f"trajectory {why}")
        return times, points

    def command_trajectory(self, joint_names: list[str], times: np.ndarray, points: np.ndarray,
                           now: float, start: float | None = None, checked: bool = False) -> None:
        """Joint trajectory; points are checked whole before any of it runs (``checked``: the
        caller already ran ``check_trajectory``). ``start``: the message's header.stamp."""
        try:
            if not checked:
                times, points = self.check_trajectory(joint_names, times, points)
            start = now if start is None or start <= 0 else float(start)
            if start + times[-1] <= now:
                raise CommandRejected(
                    f"trajectory: it ended {now - start - times[-1]:.3f} s ago (header.stamp plus the last "
                    "time_from_start lies in the past); stamp it now or with zero")
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        traj = Trajectory(start, times, points)
        if start > now:
            self.pending = traj  # the running motion carries on until the start
        else:
            try:
                self._begin(traj, now)
            except CommandRejected as e:
                self._refuse(now, e)

    def command_tcp_plan(self, times: np.ndarray, positions: np.ndarray, quats: np.ndarray, now: float,
                         start: float | None = None, frame: str = "") -> None:
        """TCP poses (base frame, quaternions w x y z) due at ``start`` + ``times``, with the joint
        trajectory's timing; every pose is checked against the workspace box before any runs."""
        try:
            if frame not in self.base_frames:
                raise CommandRejected(f"tcp plan: frame_id '{frame}' is not the base frame '{self.robot.base_frame}'")
            times = np.asarray(times, dtype=float).reshape(-1)
            pos = np.asarray(positions, dtype=float)
            quat = np.asarray(quats, dtype=float)
            require_finite("tcp plan", times, pos, quat)
            if times.size == 0 or pos.shape != (times.size, 3) or quat.shape != (times.size, 4):
                raise CommandRejected("tcp plan: need one time_from_start, position and orientation per point")
            if times[0] <= 0 or np.any(np.diff(times) <= 0):
                raise CommandRejected("tcp plan: time_from_start must be positive and increasing")
            norms = np.linalg.norm(quat, axis=1)
            if np.any(np.abs(norms - 1.0) > 0.05):
                raise CommandRejected(f"tcp plan point {int(np.argmax(np.abs(norms - 1.0)))}: "
                                      "orientation is not a unit quaternion")
            lim = self.robot.limits
            off = np.any((pos < lim.workspace_min) | (pos > lim.workspace_max), axis=1)
            if off.any():
                i = int(np.argmax(off))
                raise CommandRejected(
                    f"tcp plan point {i}: {np.round(pos[i], 3).tolist()} is outside the workspace box")
            start = now if start is None or start <= 0 else float(start)
            if start + times[-1] <= now:
                raise CommandRejected(
                    f"tcp plan: it ended {now - start - times[-1]:.3f} s ago; stamp it now or with zero")
            self._accept(now)
        except CommandRejected as e:
            self._refuse(now, e)
        plan = Trajectory(start, times, np.hstack([pos, quat / norms[:, None]]), tcp=True)
        if start > now:
            self.pending = plan
        else:
            self._begin(plan, now)

    def _begin(self, traj: Trajectory, now: float) -> None:
        """Start a trajectory from the commanded position: points already due are dropped and the
        next one is reached at its own due time (the last one, if a late start left none).
        CommandRejected (nothing changed) when a joint trajectory's first segment, from where
        the arm is, would take the TCP out of the box: known only now, not when it was sent."""
        elapsed = now - traj.start
        due = traj.times <= elapsed
        if due.all():
            due[-1] = False
        if not traj.tcp:  # a TCP plan moves in straight lines inside the (convex) box
            why = self.safety.check_path_from(self.safety.q, traj.points[~due][0], int(np.argmax(~due)))
            if why:
                self.pending = None
                raise CommandRejected(f"trajectory: {why}")
        traj.times, traj.points = traj.times[~due], traj.points[~due]
        traj.t_begin = min(elapsed, traj.times[0])
        if traj.tcp:
            # from where the running motion has the TCP now: a replan blends in without a jump
            traj.q0 = np.concatenate(self.kin.fk(self.safety.q))
        else:
            traj.q0 = self.safety.q.copy()
        self.traj, self.pending = traj, None
        self.mode = Mode.TCP_PLAN if traj.tcp else Mode.TRAJECTORY

    def command_gripper(self, closure: float, now: float) -> None:
        """0 = fully open, 1 = fully closed."""
        try:
            require_finite("gripper", [closure])
            if self.estopped:
                raise CommandRejected("e-stop is latched: gripper command ignored")
            if self.fault:
                raise CommandRejected(f"protective stop is latched ({self.fault}): gripper command ignored")
        except CommandRejected as e:
            self._refuse(now, e)
        self.gripper = float(np.clip(closure, 0.0, 1.0))

    def estop(self, now: float) -> None:
        if not self.estopped:
            self._log("EMERGENCY STOP latched: holding position until reset")
        self.estopped = True
        self.pending = None
        self.mode = Mode.ESTOP

    def reset_estop(self, state: ArmState) -> None:
        self.estopped = False
        self._log("e-stop reset: holding the current position")
        self.sync(state)

    def reset_protective_stop(self, state: ArmState) -> None:
        """Release a protective stop once someone has looked at why it tripped; CommandRejected
        (still latched) while the arm stands further outside the workspace box than allowed."""
        why = self.safety.release_refusal(state.q) if self.fault else None
        if why:
            raise CommandRejected(why)
        if self.fault:
            self._log(f"protective stop released (it was: {self.fault}); holding the current position")
        self.fault = None
        self.sync(state)

    def hold(self) -> None:
        self._twist_ref = None
        self.mode = Mode.ESTOP if self.estopped else Mode.PROTECTIVE_STOP if self.fault else Mode.HOLD

    def protective_stop(self, why: str, now: float) -> None:
        """A stop from outside the arm's own monitor (a simulator that lost its state): latched
        as the monitor's are, the arm braked from its last command."""
        self._protective_stop(why, None, now)

    def _protective_stop(self, why: str, state: ArmState | None, now: float) -> None:
        """Latch and hold. With a fresh measurement: where the arm is (releasing whatever it was
        pushing against). Without one (stale, NaN): brake the command within the acceleration
        limits; jumping to a position measured long ago would be a motion of its own."""
        self.fault = why
        self._log(f"PROTECTIVE STOP: {why}; holding until reset_protective_stop")
        if state is not None and self.monitor.trustworthy(state, now):
            self.safety.reset(state.q)
        self.traj = self.pending = None
        self.hold()

    # ---- control period ------------------------------------------------------------
    def step(self, state: ArmState | None, now: float) -> tuple[np.ndarray, float]:
        """Joint target and gripper opening (metres) for this period. ``state`` is what the
        backend measured (None only where no backend exists, in unit tests of the commands)."""
        if state is not None and self.fault is None:
            tcp = self.kin.fk(state.q)[0] if np.all(np.isfinite(state.q)) else None
            why = self.monitor.check(state, self._q_sent, now, self.safety.v, tcp, self.safety.allowed_outside)
            if why:
                self._protective_stop(why, state, now)
        if self.mode in (Mode.TWIST, Mode.POSE) and now - self.last_command > self.robot.limits.command_timeout:
            self._log(f"command timeout ({self.robot.limits.command_timeout:.2f} s without a command): holding")
            self.timed_out = True
            self.hold()
        if self.pending is not None and now >= self.pending.start:
            try:
                self._begin(self.pending, now)
            except CommandRejected as e:
                self.refuse(now, str(e))  # the running motion carries on
        if self.mode == Mode.TWIST:
            q_des = self._twist_target(self._tracked_twist())
        elif self.mode == Mode.POSE:
            q_des = self._twist_target(self._pose_twist())
        elif self.mode == Mode.TRAJECTORY:
            q_des = self._trajectory_target(now)
        elif self.mode == Mode.TCP_PLAN:
            q_des = self._tcp_plan_target(now)
        else:
            # Hold: ask for no motion; the filter brakes within the acceleration limits.
            q_des = self.safety.q
        q = self.safety.filter(q_des, now)
        self._q_sent = q
        opening = (1.0 - self.gripper) * self.robot.gripper.max_opening
        return q, opening

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP pose of the last commanded joint position."""
        return self.kin.fk(self.safety.q)

    def _clip_speed(self, twist: np.ndarray) -> np.ndarray:
        lim = self.robot.limits
        v, w = twist[:3], twist[3:]
        nv, nw = np.linalg.norm(v), np.linalg.norm(w)
        if nv > lim.max_linear_speed:
            v = v * lim.max_linear_speed / nv
        if nw > lim.max_angular_speed:
            w = w * lim.max_angular_speed / nw
        return np.concatenate([v, w])

    def _tracked_twist(self) -> np.ndarray:
        """The streamed twist plus a pull towards the pose it has led to so far: a twist integrated
        open loop drifts wherever the joints cannot give what it asks (a joint on its limit, the
        speed limits, a near-singular pose, the nullspace pull leaking through the damping), and
        the drift adds up (a 5 cm rise from awkward poses ended 23 mm sideways, median). The
        reference leads the commanded TCP by at most ``TWIST_LEAD``, so a blocked arm does not
        wind it up into a jump when it is freed."""
        pos, quat = self.kin.fk(self.safety.q)
        if self._twist_ref is None:
            self._twist_ref = (pos, quat)
        ref_pos, ref_quat = self._twist_ref
        ref_pos = ref_pos + self.twist[:3] * self.dt
        angle = float(np.linalg.norm(self.twist[3:])) * self.dt
        if angle > 0.0:
            ref_quat = quat_mul(axis_angle_quat(self.twist[3:], angle), ref_quat)
        lead_m, lead_rad = self.TWIST_LEAD
        off = ref_pos - pos
        if np.linalg.norm(off) > lead_m:
            ref_pos = pos + off * (lead_m / np.linalg.norm(off))
        rot = orientation_error(ref_quat, quat)
        if np.linalg.norm(rot) > lead_rad:
            rot = rot * (lead_rad / np.linalg.norm(rot))
            ref_quat = quat_mul(axis_angle_quat(rot, lead_rad), quat)
        self._twist_ref = (ref_pos, ref_quat)
        return self._clip_speed(self.twist + self.TWIST_GAIN * np.concatenate([ref_pos - pos, rot]))

    def _twist_target(self, twist: np.ndarray) -> np.ndarray:
        q = self.safety.q
        pos, _ = self.kin.fk(q)
        twist = twist.copy()
        lim = self.robot.limits
        nxt = pos + twist[:3] * self.dt
        for ax in range(3):
            above = nxt[ax] > lim.workspace_max[ax] and twist[ax] > 0
            below = nxt[ax] < lim.workspace_min[ax] and twist[ax] < 0
            if above or below:
                twist[ax] = 0.0
                self.safety.reject(self.last_command, f"twist: motion along {'xyz'[ax]} stopped at the workspace box")
        jac = self.kin.jacobian(q)
        cap = self.NULLSPACE_SPEED * lim.qd_max
        v_null = np.minimum(np.maximum(self.NULLSPACE_GAIN * (self.robot.home - q), -cap), cap)
        qd = damped_pinv_step(jac, twist, v_null)
        # a joint on its limit that the solution drives further into it is clamped by the filter,
        # and the motion the other joints were given assumes it moved: solve without it
        for _ in range(2):
            stuck = ((q <= lim.soft_lower + 1e-6) & (qd < 0)) | ((q >= lim.soft_upper - 1e-6) & (qd > 0))
            if not stuck.any():
                break
            jac = jac.copy()
            jac[:, stuck] = 0.0
            v_null = np.where(stuck, 0.0, v_null)
            qd = damped_pinv_step(jac, twist, v_null)
            qd[stuck] = 0.0
        return q + qd * self.dt

    def _pose_twist(self) -> np.ndarray:
        pos, quat = self.kin.fk(self.safety.q)
        tpos, tquat = self.pose_target
        twist = np.concatenate([tpos - pos, orientation_error(tquat, quat)]) * self.POSE_GAIN
        return self._clip_speed(twist)

    def _trajectory_target(self, now: float) -> np.ndarray:
        """Where the trajectory is due now: on the segment between two of its knots (the start
        position and its points), with a smooth start and stop at each; never beyond them."""
        tr = self.traj
        t = now - tr.start
        if t >= tr.times[-1]:
            # done once there and at rest: holding earlier, while still braking, would hold
            # wherever the braking ended, a hair beyond the last point
            if np.max(np.abs(self.safety.q - tr.points[-1])) < 1e-9 and np.max(np.abs(self.safety.v)) < 1e-9:
                self.mode = Mode.HOLD
            return tr.points[-1]
        times = np.concatenate([[tr.t_begin], tr.times])
        pts = np.vstack([tr.q0, tr.points])
        k = min(max(int(np.searchsorted(times, t, side="right")) - 1, 0), len(tr.times) - 1)
        s = min(max((t - times[k]) / (times[k + 1] - times[k]), 0.0), 1.0)
        s = 3 * s**2 - 2 * s**3  # smooth start and stop at each point
        return pts[k] + s * (pts[k + 1] - pts[k])

    def _tcp_plan_target(self, now: float) -> np.ndarray:
        """Track the plan's pose due one period from now (linear in position, slerp in rotation
        between its knots), as a TCP velocity through the same IK and limits as a twist."""
        tr = self.traj
        t = now + self.dt - tr.start
        if t >= tr.times[-1]:
            target = tr.points[-1]
        else:
            times = np.concatenate([[tr.t_begin], tr.times])
            knots = np.vstack([tr.q0, tr.points])
            k = min(max(int(np.searchsorted(times, t, side="right")) - 1, 0), len(tr.times) - 1)
            s = min(max((t - times[k]) / (times[k + 1] - times[k]), 0.0), 1.0)
            target = np.concatenate([knots[k, :3] + s * (knots[k + 1, :3] - knots[k, :3]),
                                     quat_slerp(knots[k, 3:], knots[k + 1, 3:], s)])
        pos, quat = self.kin.fk(self.safety.q)
        twist = self._clip_speed(np.concatenate([target[:3] - pos, orientation_error(target[3:], quat)]) / self.dt)
        if t >= tr.times[-1] and np.linalg.norm(target[:3] - pos) < 1e-4 \
                and np.linalg.norm(orientation_error(target[3:], quat)) < 1e-3 and np.max(np.abs(self.safety.v)) < 1e-3:
            self.mode = Mode.HOLD  # there, and all but at rest (the nullspace pull settles for ever)
        return self._twist_target(twist)

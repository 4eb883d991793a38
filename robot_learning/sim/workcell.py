"""The simulated workcell at run time: physics, the arm controller behind a SimBackend,
sensors (cameras, tactile pads, wrist F/T) and the task.

The ROS sim node and the gymnasium env both drive this one class, so the robot a policy
trains against headless is the robot the ROS graph exposes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np

from robot_learning.config import (
    DEFAULT_CALIBRATION,
    DEFAULT_ROBOT,
    DEFAULT_WORKCELL,
    load_calibration,
    load_robot,
    load_yaml,
)
from robot_learning.control.backend import ArmState
from robot_learning.control.controller import ArmController
from robot_learning.control.loop import control_step
from robot_learning.sim.model import FT_SITE, TCP_SITE, workcell_xml
from robot_learning.sim.randomize import Draw, Randomizer, load_randomization
from robot_learning.sim.tactile import TactilePads
from robot_learning.sim.tasks import make_task

os.environ.setdefault("MUJOCO_GL", "egl")

# MuJoCo's "the simulation is unstable" warnings: it has reset its state to the model's
# defaults (the arm at zero, objects at their origins) by the time the step returns
UNSTABLE = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQACC)
HAND_SETTLE_S = 0.3  # a reset with an object in the hand: the fingers close on it first


class SimBackend:
    """ArmBackend over a MuJoCo model: position servos on the joints, a gripper drive."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, robot,
                 clock: Callable[[], float] | None = None):
        self.model, self.data = model, data
        self._clock = clock or (lambda: float(data.time))
        jid = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in robot.joint_names]
        self.qadr = model.jnt_qposadr[jid]
        self.dadr = model.jnt_dofadr[jid]
        self.act = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"{j}_servo")
                             for j in robot.joint_names])
        self.grip_act = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, "gripper_drive")
        f1 = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, robot.gripper.joint_names[0])
        self.finger_adr = model.jnt_qposadr[f1]

    def now(self) -> float:
        return self._clock()

    def read_state(self) -> ArmState:
        d = self.data
        return ArmState(
            stamp=self._clock(),
            q=d.qpos[self.qadr].copy(),
            qd=d.qvel[self.dadr].copy(),
            effort=d.actuator_force[self.act].copy(),
            gripper_opening=2.0 * float(d.qpos[self.finger_adr]),
            gripper_effort=float(d.actuator_force[self.grip_act]),
        )

    def write_command(self, q: np.ndarray, gripper_opening: float) -> None:
        self.data.ctrl[self.act] = q
        self.data.ctrl[self.grip_act] = gripper_opening / 2.0

    def set_joints(self, q: np.ndarray, gripper_opening: float) -> None:
        """Teleport (reset only): joints at rest at ``q``."""
        self.data.qpos[self.qadr] = q
        self.data.qvel[self.dadr] = 0.0
        self.data.qpos[self.finger_adr:self.finger_adr + 2] = gripper_opening / 2.0
        self.write_command(q, gripper_opening)


@dataclass
class CameraFrame:
    stamp: float
    rgb: np.ndarray            # (H, W, 3) uint8
    depth_mm: np.ndarray | None  # (H, W) uint16, 0 = no data


class Workcell:
    """One simulated workcell: call ``reset`` then ``advance`` or ``step_control``."""

    def __init__(self, task: str = "pick_place", robot_path: str = DEFAULT_ROBOT,
                 calibration_path: str = DEFAULT_CALIBRATION, workcell_path: str = DEFAULT_WORKCELL,
                 log: Callable[[str], None] | None = None, extra: tuple[str, str] = ("", ""),
                 randomization: str | dict | None = None):
        """``extra``: (asset XML, body XML) added to the scene, e.g. a calibration board.
        ``randomization``: a ``sim/randomization.yaml``-style file or dict; each ``reset``
        draws that episode's values (``self.draw``) from its seed."""
        self.robot = load_robot(robot_path)
        self.calib = load_calibration(calibration_path)
        self.cfg = load_yaml(workcell_path)
        self.task = make_task(task)
        self.xml = workcell_xml(self.robot, self.calib, self.cfg, self.task.xml() + extra[1], extra[0])
        self.model = mujoco.MjModel.from_xml_string(self.xml)
        self.data = mujoco.MjData(self.model)
        self.task.bind(self.model)
        self.backend = SimBackend(self.model, self.data, self.robot, clock=lambda: self.time)
        self.physics_dt = float(self.model.opt.timestep)
        self.control_dt = 1.0 / float(self.cfg["control_rate"])
        self.substeps = max(1, round(self.control_dt / self.physics_dt))
        self.control_dt = self.substeps * self.physics_dt
        self.controller = ArmController(self.robot, self.control_dt, log=log)
        tcfg = load_yaml(self.cfg["tactile"])
        self.tactile = TactilePads(self.model, int(tcfg["rows"]), int(tcfg["cols"]), tcfg["pad_size"])
        self.tcp_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, TCP_SITE)
        self.ft_site = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, FT_SITE)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        movable = [i for b, i in self.task.body_ids.items() if b not in self.task.mocap]
        self.randomizer = Randomizer(load_randomization(randomization), self.model, movable, self.backend.dadr,
                                     self.backend.act)
        self.draw = Draw()
        self.episode_seed: int | None = None
        self._t0 = 0.0
        self._kin = None  # kinematics for reach(), built when a task first needs it

    # ---- episodes -----------------------------------------------------------------
    def reset(self, seed: int | None = None, keep_arm: bool = False) -> None:
        """Arm at home, gripper open, task objects randomized from ``seed``. ``keep_arm``: the
        arm and gripper stay where they are (the sim as hardware, whose arm only its driver
        moves: a real cell's reset puts the objects back, it does not teleport the robot)."""
        st = self.backend.read_state() if keep_arm else None
        self._t0 += float(self.data.time)  # keep the clock monotonic across episodes
        mujoco.mj_resetData(self.model, self.data)
        self.episode_seed = seed
        self.draw = self.randomizer.draw(seed)
        self.task.reset(self.model, self.data, np.random.default_rng(seed))
        start = None if st is not None else self.task.hand_start()
        if st is not None:
            self.backend.set_joints(st.q, st.gripper_opening)
        elif start is not None:
            self.backend.set_joints(self.reach(start[0], start[1]), start[2])
        else:
            self.backend.set_joints(self.robot.home, self.robot.gripper.max_opening)
        mujoco.mj_forward(self.model, self.data)
        if start is not None:  # the object in the closed hand
            self.task.hold(self.model, self.data, *self.tcp_pose())
            mujoco.mj_forward(self.model, self.data)
        self.controller.gripper = 0.0 if start is None else 1.0
        self.controller.sync(self.backend.read_state(), clear_fault=True)
        if start is not None:  # the fingers settle on it before the episode starts
            self.advance(HAND_SETTLE_S)

    def reach(self, pos: np.ndarray, yaw: float, iterations: int = 200) -> np.ndarray:
        """Joint positions that put the TCP at ``pos`` pointing down with ``yaw`` (damped least
        squares from home, kept inside the soft joint limits), for resets that start with the
        hand somewhere: a teleport, as the arm's home pose is."""
        from robot_learning.control.kinematics import Kinematics, damped_pinv_step
        from robot_learning.transforms import orientation_error, pointing_down

        if self._kin is None:
            self._kin = Kinematics(self.robot)
        target = pointing_down(yaw)
        lim = self.robot.limits
        q = self.robot.home.astype(float).copy()
        for _ in range(iterations):
            p, quat = self._kin.fk(q)
            err = np.r_[pos - p, orientation_error(target, quat)]
            if np.linalg.norm(err[:3]) < 1e-5 and np.linalg.norm(err[3:]) < 1e-4:
                return q
            q = np.clip(q + damped_pinv_step(self._kin.jacobian(q), err, damping=0.02),
                        lim.soft_lower, lim.soft_upper)
        raise RuntimeError(f"task {self.task.name}: no joint positions put the TCP at {np.round(pos, 3).tolist()} "
                           f"with yaw {yaw:.2f} inside the joint limits (check the task's start ranges)")

    @property
    def time(self) -> float:
        """Simulated seconds since the workcell was built, monotonic across resets."""
        return self._t0 + float(self.data.time)

    def step_control(self, step_fn: Callable[[ArmState, float], tuple[np.ndarray, float]] | None = None,
                     clock_origin: float = 0.0) -> None:
        """One control period: controller -> safety -> servos, then the physics substeps.

        ``step_fn`` replaces ``controller.step`` for callers that guard the controller with a
        lock; ``clock_origin`` shifts the time it sees (the ROS node's stamps are wall-based).
        """
        control_step(self.backend, step_fn or self.controller.step, clock_origin)
        self.physics_step()

    def physics_step(self) -> None:
        """The physics substeps of one control period, servos at whatever targets were written."""
        t = self.time
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        if any(self.data.warning[w].number for w in UNSTABLE):
            self._unstable(t + self.control_dt)

    def _unstable(self, t: float) -> None:
        """MuJoCo lost the state and reset it: say so in one sentence and end the episode as a
        protective stop (env rollouts, training and the graph all end an episode on one), with
        the clock kept monotonic (the reset set MuJoCo's own time back to zero)."""
        w = next(w for w in UNSTABLE if self.data.warning[w].number)
        dof = int(self.data.warning[w].lastinfo)
        body = mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_BODY, int(self.model.dof_bodyid[dof])) \
            if 0 <= dof < self.model.nv else "?"
        for k in UNSTABLE:
            self.data.warning[k].number = 0
        self._t0 = t - float(self.data.time)
        why = (f"the simulation went unstable at {t:.3f} s ({w.name.removeprefix('mjWARN_BAD')} of DOF {dof}, "
               f"body '{body}') and MuJoCo reset its state: this episode is void; if it recurs, the model or "
               f"the parameter file's values are at fault")
        self.controller.protective_stop(why, self.time)  # which logs it

    def advance(self, duration: float) -> None:
        for _ in range(max(1, round(duration / self.control_dt))):
            self.step_control()

    def success(self) -> bool:
        return self.task.success(self.model, self.data, self.backend.read_state().gripper_opening)

    # ---- sensors ------------------------------------------------------------------
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self.tcp_site])
        return self.data.site_xpos[self.tcp_site].copy(), quat

    def wrist_wrench(self) -> np.ndarray:
        """Force (N) and torque (N m) at the wrist sensor, in its own frame."""
        return np.concatenate([self.data.sensor("wrist_force").data, self.data.sensor("wrist_torque").data])

    def tactile_grids(self) -> dict[str, np.ndarray]:
        return self.tactile.read(self.model, self.data)

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.task.object_poses(self.data)

    def render(self, camera: str, width: int | None = None, height: int | None = None,
               depth: bool = True, contacts: bool = False) -> CameraFrame:
        """RGB (and depth in mm, 0 where out of range) from a calibrated camera; ``contacts``:
        MuJoCo draws each contact point and its force (as arrows) into the colour image."""
        cam = self.calib.cameras[camera]
        w, h = width or cam.width, height or cam.height
        r = self._renderers.get((w, h))
        if r is None:
            r = self._renderers[(w, h)] = mujoco.Renderer(self.model, h, w)
        r.disable_depth_rendering()
        opt = None
        if contacts:
            opt = mujoco.MjvOption()
            opt.flags[mujoco.mjtVisFlag.mjVIS_CONTACTPOINT] = opt.flags[mujoco.mjtVisFlag.mjVIS_CONTACTFORCE] = 1
        r.update_scene(self.data, camera, scene_option=opt)
        rgb = r.render().copy()
        depth_mm = None
        if depth:
            r.enable_depth_rendering()
            r.update_scene(self.data, camera)
            d = r.render()
            lo, hi = cam.depth_range
            depth_mm = np.where((d >= lo) & (d <= hi), d * 1000.0, 0).astype(np.uint16)
            r.disable_depth_rendering()
        return CameraFrame(self.time, rgb, depth_mm)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
